"""The series' pure-Python pieces run on each release's own Python files
(0.33.0, 0.34.0: no CPU build of them exists here, so no compiled kernels:
vllm._C is missing and VLLM_TARGET_DEVICE=cpu picks the CPU platform). Each
check runs on the tree with that release's series and on the tree as
released; the released tree must show the known failure. What needs kernels
or engines (the MoE kernel, the collectives through vLLM's groups, the e2e
runs) is tested on 0.32.0 only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from release_trees import release_trees

from vllm_epdp.harness.ranks import run_ranks
from vllm_epdp.patching.series import load_series

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).resolve().parent
UNITS_WORKER = HERE / "units_worker.py"
RUNNER_TESTS = HERE.parent / "model_runner"
ASYNC_WORKER = RUNNER_TESTS / "async_config_worker.py"


def env_for(tree: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(PYTHONPATH=str(tree), VLLM_TARGET_DEVICE="cpu", PYTHONDONTWRITEBYTECODE="1")
    return env


def run_workers(script: Path, trees: dict[str, Path], tmp: Path, *args: str) -> dict[str, dict]:
    """Run script once per tree, side by side (imports take ~20 s each)."""
    procs = {}
    for name, tree in trees.items():
        out = tmp / f"{script.stem}-{name}.json"
        env = dict(env_for(tree), EPDP_RESULT=str(out))
        procs[name] = (
            out,
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=env,
                cwd=tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
    results = {}
    for name, (out, proc) in procs.items():
        log, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, log[-3000:]
        results[name] = json.loads(out.read_text())
        assert results[name].get("vllm_file", str(trees[name])).startswith(str(trees[name]))
    return results


_UNITS: dict[str, dict] = {}


@pytest.fixture
def units(version, trees, tmp_path_factory):
    """The units worker's results on (pristine, patched), once per release."""
    if version not in _UNITS:
        pristine, patched = trees
        tmp = tmp_path_factory.mktemp(f"units-{version}")
        _UNITS[version] = run_workers(UNITS_WORKER, {"pristine": pristine, "patched": patched}, tmp)
    return _UNITS[version]


def missing(result: dict) -> bool:
    return "error" in result and ("ImportError" in result["error"] or "AttributeError" in result["error"])


def test_ep_requires_dp_padding(units):
    assert units["patched"]["ep_requires_dp_padding"] == {
        "ep=False dp=1": False,
        "ep=False dp=2": False,
        "ep=False dp=4": False,
        "ep=True dp=1": False,
        "ep=True dp=2": True,
        "ep=True dp=4": True,
    }
    assert missing(units["pristine"]["ep_requires_dp_padding"])


def test_local_expert_pairs(units):
    """Global ids of other ranks' experts and -1 are dropped; local pairs
    get their local id (rank holds experts 4..7 of 8)."""
    got = units["patched"]["local_expert_pairs"]
    assert got["token_of_row"] == [0, 2, 2]
    assert got["local_ids"] == [1, 2, 3] and got["local_dtype"] == "torch.int32"
    assert got["rows"] == [[0.0, 1.0], [4.0, 5.0], [4.0, 5.0]]
    assert got["weights"] == pytest.approx([0.9, 0.3, 0.7])
    assert missing(units["pristine"]["local_expert_pairs"])


def test_offline_dp_wave_stays_open_while_batch_is_sent(units):
    got = units["patched"]["offline_dp_wave"]
    assert got["engine_after_add"] is True  # no coordinator: the batch is open
    assert got["engine_after_batch_added"] is False
    assert got["coordinated_after_add"] is False  # vllm serve: unchanged
    # one notice per batch, after its requests, before waiting for outputs
    assert got["client_calls"] == ["send", "send", "frontend_batch_added"]
    assert missing(units["pristine"]["offline_dp_wave"])


def test_ray_on_cpu(units):
    """Patch 0015 on the release: the CPU platform names a Ray device, a worker
    asks for its bundle's CPU as num_cpus (Ray rejects "CPU" in resources)
    and has no accelerator ids; the released files name none."""
    got = units["patched"]["ray_on_cpu"]
    assert got == {"device_key": "CPU", "worker_options": {"num_cpus": 1.0, "num_gpus": 0}, "accelerator_ids": []}
    assert missing(units["pristine"]["ray_on_cpu"])


def test_async_scheduling_decision(trees, tmp_path):
    """Patch 0011 in the release's VllmConfig, the same worker as on 0.32.0
    (tests/model_runner/test_async_scheduling.py): off by default under EP +
    DP on XPU, vLLM's default on CUDA."""
    pristine, patched = trees
    (tmp_path / "xpu").mkdir()
    (tmp_path / "cuda").mkdir()
    xpu = run_workers(ASYNC_WORKER, {"pristine": pristine, "patched": patched}, tmp_path / "xpu", "xpu-like")
    case = xpu["patched"]["ep_dp2_default"]
    assert case["async_scheduling"] is False
    (info,) = [m for level, m in case["log"] if level == "INFO"]
    assert "XPU" in info and "expert parallelism" in info and "--async-scheduling" in info
    assert xpu["patched"]["dense_dp2_default"]["async_scheduling"] is True
    assert xpu["patched"]["ep_dp1_default"]["async_scheduling"] is True
    explicit = xpu["patched"]["ep_dp2_explicit"]
    assert explicit["async_scheduling"] is True
    assert any("deadlock" in m for level, m in explicit["log"] if level == "WARNING")
    # As released: async scheduling on under EP + DP, silently.
    nccl_off = ["INFO", "Disabling NCCL for DP synchronization when using async scheduling."]
    assert xpu["pristine"]["ep_dp2_default"]["async_scheduling"] is True
    assert xpu["pristine"]["ep_dp2_default"]["log"] == [nccl_off]
    assert [m for level, m in xpu["pristine"]["ep_dp2_explicit"]["log"] if level == "WARNING"] == []
    # Off the XPU the series keeps the release's default.
    cuda = run_workers(ASYNC_WORKER, {"patched": patched}, tmp_path / "cuda", "cuda-like")["patched"]
    assert cuda["ep_dp2_default"]["async_scheduling"] is True
    assert cuda["ep_dp2_default"]["log"] == [nccl_off]


def test_packed_core_is_the_tested_one(version, repo_root):
    """The core 0002 creates is byte for byte the one tests/collectives run on
    gloo (they materialise it from the 0.32.0 patch): what they show holds."""
    core = "vllm/distributed/device_communicators/packed_collectives.py"

    def created(version):
        (p,) = [p for p in load_series(version) if core in p.created_files]
        text = p.path.read_text()
        return text[text.index("diff --git") :]  # the header differs: Tested by, Rebased

    assert created(version) == created("0.32.0")


def test_v2_dp_sync_pads_under_ep(version, trees, tmp_path):
    """Both DP syncs of the release's own Python, 2 gloo ranks (the worker
    of tests/model_runner/test_dp_padding.py): with the series every rank runs the
    DP-wide count under EP in V2's sync; as released, each its own. V1's
    sync (v1/worker/dp_utils.py) pads too up to 0.33.0; 0.34.0 has no V1
    runner, and the callers left (the non-x86 StandaloneCPUModelRunner,
    set_forward_context's fallback) run their own row count: there the
    series leaves it unpadded (0008's Rebased: paragraph)."""
    steps = [[37, 1], [1, 512], [5, 5]]
    for name, tree in zip(("pristine", "patched"), trees):
        run = run_ranks(RUNNER_TESTS / "dp_padding_worker.py", 2, tmp_path / name, env=env_for(tree), timeout_s=240)
        assert run.ok, run.describe()
        for rank, r in enumerate(run.results):
            padded = [[max(c), [max(c)] * 2] for c in steps]
            unpadded = [[c[rank], c] for c in steps]
            assert r["v2_ep"] == (padded if name == "patched" else unpadded), name
            v1_pads = name == "patched" and version != "0.34.0"
            assert r["v1_ep"] == (padded if v1_pads else unpadded), name
            for runner in ("v1", "v2"):
                assert r[f"{runner}_no_ep"] == unpadded, (name, runner)


def test_v2_dp_sync_pads_with_a_dead_rank(tmp_path_factory, tmp_path):
    """0.34.0's DPSyncState under fault tolerance, 3 gloo ranks, DP rank 2
    dead (its column dropped by copying): with the series, the live ranks
    run the live maximum and DPSyncState says so for every slot, as before
    the failure. As released, each runs its own count. With 0008 as written
    for 0.33.0 (the pad written into num_tokens_across_dp, the live ranks'
    copy), the step runs the maximum but DPSyncState keeps the unpadded
    counts, which DPMetadata.make rejects: the reason 0008 changed."""
    pristine, patched = release_trees("0.34.0", tmp_path_factory)
    as_for_033 = tmp_path / "as-for-0.33.0"
    shutil.copytree(patched / "vllm", as_for_033 / "vllm")
    dp_utils = as_for_033 / "vllm" / "v1" / "worker" / "gpu" / "dp_utils.py"
    text = dp_utils.read_text()
    fixed, as_written = "num_tokens_across_dp_full[:] = num_tokens\n", "num_tokens_across_dp[:] = num_tokens\n"
    assert text.count(fixed) == 1
    dp_utils.write_text(text.replace(fixed, as_written))

    live = (0, 1)
    alive = [[37, 1, 5], [1, 512, 3]]
    dead = [[37, 1, 0], [1, 512, 0]]
    got = {}
    for name, tree in (("pristine", pristine), ("patched", patched), ("as_for_033", as_for_033)):
        run = run_ranks(
            RUNNER_TESTS / "dp_sync_dead_rank_worker.py", 3, tmp_path / name, env=env_for(tree), timeout_s=240
        )
        assert run.ok, run.describe()
        got[name] = {rank: run.results[rank] for rank in live}
    for rank in live:
        assert got["patched"][rank]["alive"] == [[max(c), [max(c)] * 3] for c in alive]
        assert got["patched"][rank]["dead_rank"] == [[max(c), [max(c)] * 3] for c in dead]
        assert got["pristine"][rank]["dead_rank"] == [[c[rank], c] for c in dead]
        assert got["as_for_033"][rank]["alive"] == got["patched"][rank]["alive"]
        assert got["as_for_033"][rank]["dead_rank"] == [[max(c), c] for c in dead]
