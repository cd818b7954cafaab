"""Where the packed all_gatherv's time goes at small T: host cost per op.

The packed gather (patch 0002) replaces three collective calls with one
call plus a handful of tensor ops. At small T every call is bound by host
work, so this probe measures, on the machine that matters (NCCL on
GPUs), the host cost of each kind of op the core issues, and the whole
gather with each way of calling the collective:

  wrapper     torch.distributed.all_gather_into_tensor (what vLLM calls)
  pg          the ProcessGroup's own _allgather_base + Work.wait(), i.e.
              the same C++ call without the Python wrapper's checks

Variants of the whole call, taking turns sample by sample (pipelined: 10
calls between synchronisations; medians of the slowest rank; host time to
issue the calls / total time, microseconds per call):

  list        one gather per tensor into preallocated outputs
  list_alloc  the same with a fresh output per tensor (the pristine XPU path)
  packed      the core as patched (patch 0002)
  packed_pg   the core with its collective called through `pg`
  candidate   another revision of the core (--candidate FILE), e.g. the
              previous one: `git show REV:patches/...0002-*.patch`, applied
  pack+gather prealloc  the pack and the gather into reused buffers, no
              unpack (not a candidate: reuse is unsafe; the cost of the rest)
  single      one gather of the same bytes: the floor

Only torch and the core are needed (the core from vllm_epdp.harness.packed_core unless
--core is given: vllm-epdp installed, or PYTHONPATH at the repository):

    torchrun --nproc-per-node=2 benchmarks/packed_overhead.py --inference-mode

Results: docs/packed-overhead-h200.txt, discussed in docs/collectives.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from collectives import _inputs, _load_core, pin_cpu  # noqa: E402


def _host_us(fn, n: int = 2000) -> float:
    """Host microseconds per call of fn (the device runs behind)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) * 1e6 / n
    torch.cuda.synchronize()
    return host


def op_costs(tensors, group, world_size) -> dict[str, float]:
    t0, t1, t2 = tensors
    flats = [t.view(-1).view(torch.uint8) for t in tensors]
    send = torch.cat(flats)
    recv = send.new_empty(world_size * send.numel())
    segs = recv.split([f.numel() for f in flats] * world_size)
    out = torch.cat(list(segs))
    blocks = out.split([f.numel() * world_size for f in flats])
    shape = (t0.shape[0] * world_size, t0.shape[1])
    ops = {
        "t.view(-1)": lambda: t0.view(-1),
        "t.view(uint8)": lambda: t0.view(torch.uint8),
        "cat(3 flats)": lambda: torch.cat(flats),
        "new_empty": lambda: send.new_empty(world_size * send.numel()),
        "split(6)": lambda: recv.split([f.numel() for f in flats] * world_size),
        "cat(6 segs)": lambda: torch.cat(segs),
        "split(3)": lambda: out.split([f.numel() * world_size for f in flats]),
        "block.view(dtype)": lambda: blocks[0].view(torch.bfloat16),
        "view(shape)": lambda: blocks[0].view(torch.bfloat16).view(shape),
        "gather wrapper": lambda: dist.all_gather_into_tensor(recv, send, group=group),
        "gather pg": lambda: group._allgather_base(recv, send).wait(),
    }
    return {name: _host_us(fn) for name, fn in ops.items()}


def _sample(fn, inner: int = 10) -> tuple[float, float]:
    """(host us to issue, total us until the device is done) per call."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) * 1e6 / inner, (t2 - t0) * 1e6 / inner


def _time_all(variants: dict, align, iters: int) -> dict[str, tuple[float, float]]:
    """Variants interleaved sample by sample (drift hits all alike); median
    of the slowest rank's per-call times."""
    for fn in variants.values():
        for _ in range(5):
            fn()
    host = {k: [] for k in variants}
    total = {k: [] for k in variants}
    for _ in range(iters):
        for name, fn in variants.items():
            dist.barrier(group=align)
            h, t = _sample(fn)
            host[name].append(h)
            total[name].append(t)
    out = {}
    for name in variants:
        t = torch.tensor([host[name], total[name]], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=align)
        out[name] = (statistics.median(t[0].tolist()), statistics.median(t[1].tolist()))
    return out


def _rows_layout(tensors, group, world_size):
    """Row-interleaved packing for equal sizes: each rank's chunk is
    [T, sum of row bytes]; one view per tensor in, one copy per tensor out."""
    views = [t.view(torch.uint8) for t in tensors]
    send = torch.cat(views, dim=1)
    recv = send.new_empty((world_size * send.shape[0], send.shape[1]))
    dist.all_gather_into_tensor(recv, send, group=group)
    cols = recv.split([v.shape[1] for v in views], dim=1)
    return [c.contiguous().view(t.dtype) for c, t in zip(cols, tensors)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 512, 4096])
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--core", help="packed_collectives.py (default: from patch 0002)")
    p.add_argument("--candidate", help="a second core file, timed beside the patch's as `candidate`")
    p.add_argument(
        "--inference-mode", action="store_true", help="run under torch.inference_mode(), as vLLM's forward does"
    )
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's op table for 50 packed calls")
    args = p.parse_args()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    pin_cpu(rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    group = dist.group.WORLD
    align = dist.new_group(backend="gloo")
    core_path = args.core
    if core_path is None:
        from vllm_epdp.harness.packed_core import materialise_core

        core_path = str(materialise_core(Path(tempfile.mkdtemp()) / f"core{rank}"))
    core = _load_core(core_path)
    core_pg = _load_core(core_path)
    core_pg._all_gather_flat = lambda o, i, g: g._allgather_base(o, i).wait()
    cand = _load_core(args.candidate or core_path)
    cand_pg = _load_core(args.candidate or core_path)
    cand_pg._all_gather_flat = core_pg._all_gather_flat
    if args.inference_mode:
        torch.inference_mode().__enter__()

    if rank == 0:
        print(f"torch {torch.__version__}, {world_size}x {torch.cuda.get_device_name()}")
        print("host us per op (T=8):")
    costs = op_costs(_inputs(8, 4096, device), group, world_size)
    if rank == 0:
        for name, us in costs.items():
            print(f"  {name:20s} {us:6.2f}")
    for rows in args.rows:
        tensors = _inputs(rows, 4096, device)
        outs = [t.new_empty((rows * world_size,) + t.shape[1:]) for t in tensors]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        s_in = torch.empty(nbytes, dtype=torch.uint8, device=device)
        s_out = s_in.new_empty(nbytes * world_size)
        ref = core.all_gatherv_packed(tensors, None, group, rank, world_size)
        got = core_pg.all_gatherv_packed(tensors, None, group, rank, world_size)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        for got in (
            _rows_layout(tensors, group, world_size),
            cand.all_gatherv_packed(tensors, None, group, rank, world_size),
        ):
            assert all(torch.equal(a, b) and a.shape == b.shape and a.dtype == b.dtype for a, b in zip(ref, got))
        sbuf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        rbuf = sbuf.new_empty(nbytes * world_size)

        def list_alloc():
            for t in tensors:
                o = t.new_empty((rows * world_size,) + t.shape[1:])
                dist.all_gather_into_tensor(o, t, group=group)

        def packed_prealloc():
            # Not a candidate (unsafe to reuse buffers): the cost of allocating.
            torch.cat([t.view(-1).view(torch.uint8) for t in tensors], out=sbuf)
            dist.all_gather_into_tensor(rbuf, sbuf, group=group)

        variants = {
            "list": lambda: [dist.all_gather_into_tensor(o, t, group=group) for t, o in zip(tensors, outs)],
            "list_alloc": list_alloc,
            "packed": lambda: core.all_gatherv_packed(tensors, None, group, rank, world_size),
            "packed_pg": lambda: core_pg.all_gatherv_packed(tensors, None, group, rank, world_size),
            "candidate": lambda: cand.all_gatherv_packed(tensors, None, group, rank, world_size),
            "candidate_pg": lambda: cand_pg.all_gatherv_packed(tensors, None, group, rank, world_size),
            "pack+gather prealloc": packed_prealloc,
            "single": lambda: dist.all_gather_into_tensor(s_out, s_in, group=group),
        }
        res = _time_all(variants, align, args.iters)
        if rank == 0:
            if rows == args.rows[0]:
                print("T      " + "".join(f"{k[:15]:>17s}" for k in res) + "   (us/call: host issue / total)")
            print(f"{rows:<6d} " + "".join(f"{h:7.1f} /{t:7.1f} " for h, t in res.values()), flush=True)
    if args.profile:
        tensors = _inputs(8, 4096, device)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(50):
                core.all_gatherv_packed(tensors, None, group, rank, world_size)
            torch.cuda.synchronize()
        if rank == 0:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    dist.barrier(group=align)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
