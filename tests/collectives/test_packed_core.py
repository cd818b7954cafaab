"""The torch-only collective core of patch 0002 on real gloo ranks.

The core is a new file, so there is no pristine behaviour to compare with:
these tests check it against results computed locally without any
collective, and against the per-tensor list path, byte for byte.
The pristine/patched contrast lives in the communicator tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_epdp.harness.ranks import run_ranks

WORKER = str(Path(__file__).parent / "packed_core_worker.py")
WORLD_SIZES = [2, 4]


def _run(workdir, fn: str, world_size: int, core: str, timeout_s: float = 180, **args):
    run = run_ranks(f"{WORKER}:{fn}", world_size, workdir, kwargs={"core": core, **args}, timeout_s=timeout_s)
    assert run.ok, run.describe()


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_gather_matrix(packed_core, world_size, tmp_path):
    """Every dtype mix (bf16/fp16/fp32/fp64/int32/int64/uint8/bool/fp8) x
    uniform, uneven, zero-row and all-zero sizes."""
    _run(tmp_path, "gather_matrix", world_size, packed_core)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_gather_matrix_non_contiguous(packed_core, world_size, tmp_path):
    _run(tmp_path, "gather_matrix", world_size, packed_core, noncontig=True)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_gather_large(packed_core, world_size, tmp_path):
    """~1000 rows x 4096 bf16 + fp32 + int32 per rank, uneven."""
    _run(tmp_path, "gather_large", world_size, packed_core, timeout_s=300)


def test_gather_errors(packed_core, tmp_path):
    _run(tmp_path, "gather_errors", 2, packed_core)


def test_pack_unpack_one_kernel_each(packed_core, tmp_path):
    _run(tmp_path, "kernel_count", 2, packed_core)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_reduce_scatterv_matrix(packed_core, world_size, tmp_path):
    """Both strategies (padded reduce_scatter, all_reduce + slice)."""
    _run(tmp_path, "reduce_scatter_matrix", world_size, packed_core)
