"""Benchmark: list-path all_gatherv vs the packed core vs one plain gather.

What the MoE dispatch gathers per call: bf16 hidden states [T, H], fp32
top-k weights [T, 8], int32 top-k ids [T, 8], T rows on every rank.

  list     one all_gather per tensor into preallocated outputs (the issue's
           anchor; CUDA issues the same three inside one NCCL group)
  list_alloc  the same with a fresh output per tensor per call, as the
           pristine XPU communicator's list path (and patch 0005's
           per-tensor path) actually runs
  packed   all_gatherv_packed of patch 0002: one cat in, one gather, one cat out
  single   one all_gather of the same number of bytes, no packing: the floor
  barrier  dist.barrier on the same group alone (what
           VLLM_MOE_ALLGATHER_BARRIER=1 adds before each collective)
  packed+barrier  barrier then packed
  rs_native / rs_allreduce   reduce_scatterv_single of a bf16 [T*ranks, H]
           input (the MoE combine), with the backend's reduce_scatter or
           with one all_reduce and a slice

Two timings, each a sample started with the ranks lined up on a gloo side
group and the device synchronised: "latency" times one call up to a device
synchronize (host overhead fully counted); "pipelined" times 10 back-to-back
calls and divides (host work overlaps device work, as in an eager forward).
Methods take turns sample by sample (ratios are measured side by side), and
on GPUs each rank is pinned to a core of its own.
A sample is the slowest rank's; tables give the median over samples, in
microseconds. Everything runs under torch.inference_mode(), as in vLLM's
forward pass (--no-inference-mode to compare; views cost more without). Only torch and the core file are needed:

    python benchmarks/collectives.py --backend gloo --world-sizes 2 4
    python benchmarks/collectives.py --backend nccl --world-sizes 2 \\
        --json docs/collectives-nccl-h200.json

The core is materialised from patches/v0.32.0/0002-*.patch with git apply
(vllm_epdp.harness.packed_core: vllm-epdp installed, or PYTHONPATH at the repository),
or given with --core PATH.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROWS = [1, 8, 64, 512, 4096]
HIDDEN = 4096
METHODS = ["list", "list_alloc", "packed", "single", "barrier", "packed+barrier", "rs_native", "rs_allreduce"]


def _load_core(path: str):
    spec = importlib.util.spec_from_file_location("packed_collectives", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gather_flat(out, inp, group):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def _inputs(rows: int, hidden: int, device) -> list[torch.Tensor]:
    return [
        torch.randn(rows, hidden, device=device).to(torch.bfloat16),
        torch.rand(rows, 8, device=device),
        torch.randint(0, 128, (rows, 8), dtype=torch.int32, device=device),
    ]


def _ops(core, tensors, group, rank, world_size, device, backend):
    outs = [t.new_empty((t.shape[0] * world_size,) + t.shape[1:]) for t in tensors]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    flat_in = torch.empty(nbytes, dtype=torch.uint8, device=device)
    flat_out = torch.empty(nbytes * world_size, dtype=torch.uint8, device=device)
    barrier_kwargs = {}
    if backend == "nccl":
        barrier_kwargs["device_ids"] = [device.index]

    def list_path():
        for t, o in zip(tensors, outs):
            _gather_flat(o, t, group)

    def list_alloc():
        for t in tensors:
            _gather_flat(t.new_empty((t.shape[0] * world_size,) + t.shape[1:]), t, group)

    def packed():
        core.all_gatherv_packed(tensors, None, group, rank, world_size)

    def single():
        _gather_flat(flat_out, flat_in, group)

    def barrier():
        dist.barrier(group=group, **barrier_kwargs)

    def packed_barrier():
        barrier()
        packed()

    combine_in = tensors[0].repeat(world_size, 1)

    def rs(native):
        return lambda: core.reduce_scatterv_single(combine_in, None, group, rank, world_size, native)

    return {
        "list": list_path,
        "list_alloc": list_alloc,
        "packed": packed,
        "single": single,
        "barrier": barrier,
        "packed+barrier": packed_barrier,
        "rs_native": rs(True),
        "rs_allreduce": rs(False),
    }


def _time(ops: dict, sync, align, iters: int, warmup: int, inner: int = 1) -> dict[str, list[float]]:
    """Per-call microseconds of every method: `inner` back-to-back calls
    between device synchronisations, divided by `inner` (1: one call's full
    latency; more: the pipelined cost, host work overlapping device work).
    Methods take turns sample by sample, so drift on a shared machine hits
    all of them alike and their ratios are measured side by side."""
    for fn in ops.values():
        for _ in range(warmup):
            fn()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(iters):
        for name, fn in ops.items():
            dist.barrier(group=align)
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) * 1e6 / inner)
    # Slowest rank per sample.
    t = torch.tensor([samples[name] for name in ops], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=align)
    return dict(zip(ops, t.tolist()))


def pin_cpu(rank: int) -> None:
    """Pin this rank to one core of its own: at small sizes every method is
    bound by host work, and a rank migrating between cores (or sharing one)
    turns that into noise larger than the differences measured."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 4 * (rank + 1):
        os.sched_setaffinity(0, {cpus[2 + 2 * rank]})


def _rank(rank, world_size, backend, core_path, init, result_path, rows, hidden, iters, inference_mode=True):
    if backend == "nccl":
        pin_cpu(rank)
    if inference_mode:
        torch.inference_mode().__enter__()  # this process only runs the benchmark
    device = torch.device("cpu")
    kwargs = {}
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(
        backend, init_method=init, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=600), **kwargs
    )
    group = dist.group.WORLD
    align = dist.new_group(backend="gloo")
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    core = _load_core(core_path)
    results = []
    for t_rows in rows:
        tensors = _inputs(t_rows, hidden, device)
        ops = _ops(core, tensors, group, rank, world_size, device, backend)
        n = iters if t_rows < 512 or backend == "nccl" else max(iters // 4, 10)
        for mode, inner in (("latency", 1), ("pipelined", 10)):
            reps = n if inner == 1 else max(n // 2, 5)
            timed = _time({name: ops[name] for name in METHODS}, sync, align, reps, warmup=max(n // 10, 3), inner=inner)
            for name, samples in timed.items():
                results.append(
                    {
                        "world_size": world_size,
                        "rows": t_rows,
                        "method": name,
                        "mode": mode,
                        "median_us": statistics.median(samples),
                        "p10_us": sorted(samples)[len(samples) // 10],
                        "p90_us": sorted(samples)[(len(samples) * 9) // 10],
                        "iters": reps,
                        "calls_per_sample": inner,
                    }
                )
                if rank == 0:
                    print(
                        f"  x{world_size} T={t_rows:5d} {mode:9s} {name:15s} {results[-1]['median_us']:10.1f} us",
                        flush=True,
                    )
    if rank == 0:
        Path(result_path).write_text(json.dumps(results))
    dist.barrier(group=align)
    dist.destroy_process_group()


def markdown(meta: dict, rows: list[dict]) -> str:
    return "\n\n".join(
        _markdown(meta, [r for r in rows if r.get("mode", "latency") == mode], mode)
        for mode in ("latency", "pipelined")
        if any(r.get("mode", "latency") == mode for r in rows)
    )


_MODES = {
    "latency": "one call between device synchronisations (full latency)",
    "pipelined": "10 back-to-back calls between synchronisations, per call",
}


def _markdown(meta: dict, rows: list[dict], mode: str) -> str:
    by = {(r["world_size"], r["rows"], r["method"]): r["median_us"] for r in rows}
    sizes = sorted({r["world_size"] for r in rows})
    ts = sorted({r["rows"] for r in rows})
    lines = [
        f"**{mode}**: {meta['backend']} on {meta['device']}, torch {meta['torch']},"
        f" H={meta['hidden']}, {_MODES[mode]}"
        f"{', inference mode' if meta.get('inference_mode') else ''};"
        " median us per call (slowest rank),"
        " ranks: " + " / ".join(str(s) for s in sizes),
        "",
        "| T rows/rank | list (3 gathers) | list, fresh outputs | packed "
        "| single same-byte gather | packed / list | packed / list fresh "
        "| barrier alone | packed + barrier |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in ts:

        def cell(method, _t=t):
            return " / ".join(f"{by[(s, _t, method)]:.0f}" for s in sizes)

        def ratio(base, _t=t):
            return " / ".join(f"{by[(s, _t, 'packed')] / by[(s, _t, base)]:.2f}" for s in sizes)

        lines.append(
            f"| {t} | {cell('list')} | {cell('list_alloc')} | {cell('packed')} "
            f"| {cell('single')} | {ratio('list')} | {ratio('list_alloc')} "
            f"| {cell('barrier')} | {cell('packed+barrier')} |"
        )
    lines += [
        "",
        "| T rows/rank | reduce_scatterv: padded reduce_scatter | all_reduce + slice |",
        "|---|---|---|",
    ]
    for t in ts:
        lines.append(
            "| {} | {} | {} |".format(
                t, *(" / ".join(f"{by[(s, t, m)]:.0f}" for s in sizes) for m in ("rs_native", "rs_allreduce"))
            )
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["gloo", "nccl"], default="nccl" if torch.cuda.is_available() else "gloo")
    p.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    p.add_argument("--rows", type=int, nargs="+", default=ROWS)
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--iters", type=int, default=None, help="timed calls per point (default: gloo 40, nccl 200)")
    p.add_argument("--core", help="packed_collectives.py (default: from patch 0002)")
    p.add_argument(
        "--no-inference-mode",
        dest="inference_mode",
        action="store_false",
        help="time outside torch.inference_mode() (vLLM runs inside it)",
    )
    p.add_argument("--json", help="write results here as JSON")
    p.add_argument("--markdown", help="write the table here as markdown")
    args = p.parse_args()
    iters = args.iters or (200 if args.backend == "nccl" else 40)

    tmp = tempfile.mkdtemp(prefix="bench_collectives_")
    core = args.core
    if core is None:
        from vllm_epdp.harness.packed_core import materialise_core

        core = str(materialise_core(Path(tmp) / "core"))
    if args.backend == "nccl":
        device_name = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
        sizes = [s for s in args.world_sizes if s <= torch.cuda.device_count()]
        skipped = sorted(set(args.world_sizes) - set(sizes))
        if skipped:
            print(f"skipping world sizes {skipped}: only {torch.cuda.device_count()} GPUs", file=sys.stderr)
    else:
        device_name = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
        sizes = args.world_sizes
    meta = {
        "backend": args.backend,
        "device": device_name,
        "torch": torch.__version__,
        "hidden": args.hidden,
        "rows": args.rows,
        "iters": iters,
        "core": "patch 0002" if args.core is None else args.core,
        "inference_mode": args.inference_mode,
    }
    rows: list[dict] = []
    for ws in sizes:
        result = Path(tmp) / f"result-{ws}.json"
        init = f"file://{tmp}/store-{ws}"
        print(f"{args.backend} x{ws}:", flush=True)
        mp.start_processes(
            _rank,
            args=(ws, args.backend, core, init, str(result), args.rows, args.hidden, iters, args.inference_mode),
            nprocs=ws,
            join=True,
            start_method="spawn",
        )
        rows.extend(json.loads(result.read_text()))
    table = markdown(meta, rows)
    print()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
