"""Patch 0003: CpuCommunicator.all_gatherv / reduce_scatterv on real gloo.

Pristine vLLM 0.32.0 raises NotImplementedError for both (upstream #57837);
patched, both return exactly the locally computed result with one collective.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_epdp.harness.ranks import run_ranks

WORKER = str(Path(__file__).parent / "communicator_worker.py")


def test_first_moe_calls_pristine_not_implemented(vllm_pristine, tmp_path):
    run = run_ranks(f"{WORKER}:cpu_first_moe_calls", 2, tmp_path, env=vllm_pristine, timeout_s=180)
    for rc, output in zip(run.returncodes, run.outputs):
        assert rc != 0, run.describe()
        assert "all_gatherv: NotImplementedError" in output, run.describe()
        assert "reduce_scatterv: NotImplementedError" in output, run.describe()


def test_first_moe_calls_patched(vllm_patched, tmp_path):
    run = run_ranks(f"{WORKER}:cpu_first_moe_calls", 2, tmp_path, env=vllm_patched, timeout_s=180)
    assert run.ok, run.describe()


@pytest.mark.parametrize("world_size", [2, 4])
def test_cpu_communicator_matrix_and_vllm_groups(vllm_patched, world_size, tmp_path):
    """Every dtype mix and size pattern (zero-row ranks, non-contiguous
    inputs), directly and through vLLM's own DP/EP GroupCoordinators."""
    run = run_ranks(f"{WORKER}:cpu_all", world_size, tmp_path, env=vllm_patched, timeout_s=300)
    assert run.ok, run.describe()
