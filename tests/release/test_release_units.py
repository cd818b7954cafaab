"""The series' pure-Python pieces run on vLLM 0.33.0's own Python files (no
0.33.0 CPU build exists, so no compiled kernels: vllm._C is missing and
VLLM_TARGET_DEVICE=cpu picks the CPU platform). Each check runs on the tree
with the 0.33.0 series and on the tree as released; the released tree must
show the known failure. What needs kernels or engines (the MoE kernel, the
collectives through vLLM's groups, the e2e runs) is tested on 0.32.0 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_epdp.series import load_series

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).resolve().parent
UNITS_WORKER = HERE / "workers" / "units_worker.py"
ASYNC_WORKER = HERE.parent / "runner" / "workers" / "async_config_worker.py"


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


@pytest.fixture(scope="module")
def units(tree_033, tmp_path_factory):
    pristine, patched = tree_033
    return run_workers(UNITS_WORKER, {"pristine": pristine, "patched": patched}, tmp_path_factory.mktemp("units"))


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
    """Patch 0015 on 0.33.0: the CPU platform names a Ray device, a worker
    asks for its bundle's CPU as num_cpus (Ray rejects "CPU" in resources)
    and has no accelerator ids; released 0.33.0 names none."""
    got = units["patched"]["ray_on_cpu"]
    assert got == {"device_key": "CPU", "worker_options": {"num_cpus": 1.0, "num_gpus": 0}, "accelerator_ids": []}
    assert missing(units["pristine"]["ray_on_cpu"])


def test_async_scheduling_decision(tree_033, tmp_path):
    """Patch 0011 in 0.33.0's VllmConfig, the same worker as on 0.32.0
    (tests/runner/test_async_scheduling.py), CUDA-like decision."""
    pristine, patched = tree_033
    d = run_workers(ASYNC_WORKER, {"pristine": pristine, "patched": patched}, tmp_path, "cuda-like")
    case = d["patched"]["ep_dp2_default"]
    assert case["async_scheduling"] is False
    (info,) = [m for level, m in case["log"] if level == "INFO"]
    assert "expert parallelism" in info and "--async-scheduling" in info
    assert d["patched"]["dense_dp2_default"]["async_scheduling"] is True
    assert d["patched"]["ep_dp1_default"]["async_scheduling"] is True
    explicit = d["patched"]["ep_dp2_explicit"]
    assert explicit["async_scheduling"] is True
    assert any("deadlock" in m for level, m in explicit["log"] if level == "WARNING")
    # As released: async scheduling on under EP + DP, silently.
    assert d["pristine"]["ep_dp2_default"]["async_scheduling"] is True
    assert d["pristine"]["ep_dp2_default"]["log"] == [
        ["INFO", "Disabling NCCL for DP synchronization when using async scheduling."]
    ]
    assert [m for level, m in d["pristine"]["ep_dp2_explicit"]["log"] if level == "WARNING"] == []


def test_packed_core_is_the_tested_one(repo_root):
    """The core 0002 creates is byte for byte the one tests/collectives run on
    gloo (they materialise it from the 0.32.0 patch): what they show holds."""
    core = "vllm/distributed/device_communicators/packed_collectives.py"

    def created(version):
        (p,) = [p for p in load_series(version) if core in p.created_files]
        text = p.path.read_text()
        return text[text.index("diff --git") :]  # the header differs: Tested by, Rebased

    assert created("0.33.0") == created("0.32.0")


def test_v2_dp_sync_pads_under_ep(tree_033, tmp_path):
    """Both runners' DP syncs on 0.33.0's own Python, 2 gloo ranks (the
    worker of tests/runner/test_dp_padding.py): with the series every rank
    runs the DP-wide count under EP; as released, each its own."""
    from vllm_epdp.ranks import run_ranks

    worker = Path(__file__).parents[1] / "runner" / "workers" / "dp_padding_worker.py"

    steps = [[37, 1], [1, 512], [5, 5]]
    for name, tree in zip(("pristine", "patched"), tree_033):
        run = run_ranks(worker, 2, tmp_path / name, env=env_for(tree), timeout_s=240)
        assert run.ok, run.describe()
        for rank, r in enumerate(run.results):
            for runner in ("v1", "v2"):
                want = [[max(c), [max(c)] * 2] for c in steps] if name == "patched" else [[c[rank], c] for c in steps]
                assert r[f"{runner}_ep"] == want, (name, runner)
                assert r[f"{runner}_no_ep"] == [[c[rank], c] for c in steps], (name, runner)
