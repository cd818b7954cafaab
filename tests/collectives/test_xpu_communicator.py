"""Patches 0005 and 0006: vLLM's XpuCommunicator exercised on CPU over gloo.

The class is constructed as vLLM does (a CPU group and a device group), on
gloo groups; no collective is faked. The only fake is torch.xpu.device_count,
to reach reduce_scatterv's "process sees every device" branch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_epdp.harness.ranks import run_ranks

WORKER = str(Path(__file__).parent / "communicator_worker.py")


def _run(fn, world_size, env, workdir, timeout_s=240):
    return run_ranks(f"{WORKER}:{fn}", world_size, workdir, env=env, timeout_s=timeout_s)


def _run_ok(fn, world_size, env, workdir, timeout_s=240):
    run = _run(fn, world_size, env, workdir, timeout_s)
    assert run.ok, run.describe()


# ---- 0005: equal sizes handed dist.all_gather a 1-element output list
def test_uniform_all_gatherv_pristine_fails(vllm_pristine, tmp_path):
    run = _run("xpu_uniform_gather", 2, vllm_pristine, tmp_path)
    for rc, output in zip(run.returncodes, run.outputs):
        assert rc != 0, run.describe()
        assert "invalid output tensor list at index 0 (expected length 2, got 1)" in output, run.describe()


def test_uniform_all_gatherv_patched(vllm_patched, tmp_path):
    _run_ok("xpu_uniform_gather", 2, vllm_patched, tmp_path)


# ---- 0006: a list goes out as one collective, not one per tensor
def test_list_all_gatherv_without_0006_one_collective_per_tensor(series_without, tmp_path):
    """With every patch but 0006 (so 0005's equal-size path works), the MoE
    dispatch list of 3 tensors takes 3 collectives."""
    run = _run("xpu_list_gather_one_collective", 2, series_without("0006"), tmp_path)
    for rc, output in zip(run.returncodes, run.outputs):
        assert rc != 0, run.describe()
        assert "collectives: 3" in output, run.describe()


def test_list_all_gatherv_one_collective_patched(vllm_patched, tmp_path):
    _run_ok("xpu_list_gather_one_collective", 2, vllm_patched, tmp_path)


@pytest.mark.parametrize("world_size", [2, 4])
def test_xpu_communicator_matrix(vllm_patched, world_size, tmp_path):
    """Every dtype mix and size pattern (zero-row ranks, non-contiguous
    inputs) through all_gatherv and reduce_scatterv, both device-count
    branches of reduce_scatterv."""
    _run_ok("xpu_all", world_size, vllm_patched, tmp_path, timeout_s=300)


def test_xpu_reduce_scatterv_branches_pristine(vllm_pristine, tmp_path):
    """Review of reduce_scatterv for the all_gatherv kind of mistake: its
    branches are right as shipped (and no patch touches them)."""
    _run_ok("xpu_reduce_scatterv_branches", 2, vllm_pristine, tmp_path)
