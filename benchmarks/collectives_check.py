"""Correctness of the torch-only collective core (patch 0002) on any backend.

The same byte-exact checks as tests/collectives/test_packed_core.py, for
machines without vLLM (only torch, git and vllm-epdp, installed or on
PYTHONPATH, for vllm_epdp.harness.packed_core): NCCL on GPUs, gloo on CPU.

    torchrun --nproc-per-node=2 benchmarks/collectives_check.py      # NCCL if CUDA
    python benchmarks/collectives_check.py --world-size 4 --backend gloo

Under torchrun each rank runs the checks; without it, the script starts
--world-size ranks itself. Prints one PASS/FAIL line per check (rank 0) and
exits non-zero if any rank failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "collectives"))

import packed_core_worker  # noqa: E402  (torch-only)

from vllm_epdp.harness.packed_core import materialise_core  # noqa: E402

CHECKS = [
    ("gather: every dtype mix x size pattern", "gather_matrix", {}),
    ("gather: non-contiguous inputs", "gather_matrix", {"noncontig": True}),
    ("gather: large uneven (~1000 x 4096 bf16 + fp32 + int32)", "gather_large", {}),
    ("gather: bad sizes rejected before any collective", "gather_errors", {}),
    ("gather: pack and unpack one kernel each", "kernel_count", {}),
    ("reduce_scatterv: padded reduce_scatter and all_reduce", "reduce_scatter_matrix", {}),
]


def run_checks(rank: int, world_size: int, core: str, device: str) -> bool:
    ok = True
    for title, fn, kwargs in CHECKS:
        try:
            getattr(packed_core_worker, fn)(rank, world_size, core, device=device, **kwargs)
            status = "PASS"
        except Exception:  # report and go on: every check runs
            status = "FAIL"
            ok = False
            traceback.print_exc()
        # Keep the ranks together after a failed check.
        dist.barrier()
        if rank == 0:
            print(f"{status}  [{dist.get_backend()} x{world_size}] {title}", flush=True)
    return ok


def _rank(rank: int, world_size: int, backend: str, core: str, init: str) -> None:
    device = "cuda" if backend == "nccl" else "cpu"
    kwargs = {}
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(
        backend, init_method=init, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=300), **kwargs
    )
    ok = run_checks(rank, world_size, core, device)
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["nccl", "gloo"], default="nccl" if torch.cuda.is_available() else "gloo")
    p.add_argument("--world-size", type=int, default=2, help="ranks to start when not under torchrun")
    p.add_argument(
        "--core", help="packed_collectives.py to test (default: materialised from patches/v0.32.0/0002-*.patch)"
    )
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="core_")
    core = args.core or str(materialise_core(Path(tmp)))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        _rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args.backend, core, "env://")
        return
    init = f"file://{tmp}/store"
    ctx = mp.start_processes(
        _rank,
        args=(args.world_size, args.backend, core, init),
        nprocs=args.world_size,
        join=False,
        start_method="spawn",
    )
    try:
        while not ctx.join(timeout=600):
            pass
    except mp.ProcessRaisedException as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    except mp.ProcessExitedException as e:
        print(f"a rank failed: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
