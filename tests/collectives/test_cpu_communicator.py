"""Patch 0003: CpuCommunicator.all_gatherv / reduce_scatterv on real gloo.

Pristine vLLM 0.32.0 raises NotImplementedError for both (upstream #57837);
patched, both return exactly the locally computed result with one collective.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gloo_ranks import assert_all_ok, describe, run_ranks

RANK_COMM = str(Path(__file__).parent / "rank_comm.py")


def test_first_moe_calls_pristine_not_implemented(vllm_pristine):
    results = run_ranks(f"{RANK_COMM}:cpu_first_moe_calls", 2, env=vllm_pristine, timeout_s=180)
    for r in results:
        assert not r.ok, describe(results)
        assert "all_gatherv: NotImplementedError" in r.stdout, describe(results)
        assert "reduce_scatterv: NotImplementedError" in r.stdout, describe(results)


def test_first_moe_calls_patched(vllm_patched):
    assert_all_ok(run_ranks(f"{RANK_COMM}:cpu_first_moe_calls", 2, env=vllm_patched, timeout_s=180))


@pytest.mark.parametrize("world_size", [2, 4])
def test_cpu_communicator_matrix_and_vllm_groups(vllm_patched, world_size):
    """Every dtype mix and size pattern (zero-row ranks, non-contiguous
    inputs), directly and through vLLM's own DP/EP GroupCoordinators."""
    assert_all_ok(run_ranks(f"{RANK_COMM}:cpu_all", world_size, env=vllm_patched, timeout_s=300))
