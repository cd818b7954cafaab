"""What the collective ledger (VLLM_EPDP_LEDGER, vllm_epdp/ledger/) adds to
each collective: one small gloo all_reduce on 2 ranks, per-call time without
and with the ledger installed, side by side in one run.

The ledger cannot be taken out of a process once installed, so each variant is
its own pair of rank processes; pairs alternate (plain, ledger, plain, ...)
over --rounds so that machine load hits both alike. Per pair: a warm-up, then
--calls timed all_reduces; the figure is the slower rank's mean per call.

  python benchmarks/ledger_overhead.py [--rounds 5] [--calls 2000] [--markdown docs/ledger_overhead.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vllm_epdp import ports, procs


def rank_main(variant: str, calls: int, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from vllm_epdp import ledger

    if variant == "ledger":
        ledger.install(out.parent / f"ledger-{out.stem}")
    dist.init_process_group("gloo")
    t = torch.zeros(1)
    for _ in range(200):  # warm-up: connections, allocator
        dist.all_reduce(t)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(t)
    per_call_us = (time.perf_counter() - start) / calls * 1e6
    out.write_text(json.dumps({"us": per_call_us}))
    dist.destroy_process_group()


def run_pair(variant: str, calls: int, workdir: Path) -> float:
    port = str(ports.free_port())
    specs = []
    for rank in range(2):
        env = dict(
            os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1"
        )
        argv = [
            sys.executable,
            __file__,
            "--rank-of",
            variant,
            "--calls",
            str(calls),
            "--out",
            str(workdir / f"{variant}-{port}-{rank}.json"),
        ]
        specs.append(procs.ProcSpec(f"rank{rank}", argv, env, workdir / f"{variant}-{port}-{rank}.log"))
    outcome = procs.run_group(f"ledger overhead {variant}", specs, timeout_s=300)
    if not outcome.ok:
        raise SystemExit(outcome.describe())
    return max(json.loads((workdir / f"{variant}-{port}-{r}.json").read_text())["us"] for r in range(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    ap.add_argument("--rank-of", help=argparse.SUPPRESS)  # internal: run as one rank
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_of:
        rank_main(args.rank_of, args.calls, Path(args.out))
        return
    samples: dict[str, list[float]] = {"plain": [], "ledger": []}
    with tempfile.TemporaryDirectory(prefix="ledger-overhead-") as tmp:
        for r in range(args.rounds):
            for variant in samples:
                samples[variant].append(run_pair(variant, args.calls, Path(tmp)))
            print(
                f"round {r + 1}/{args.rounds}: plain {samples['plain'][-1]:.1f} us, "
                f"ledger {samples['ledger'][-1]:.1f} us",
                file=sys.stderr,
            )
    plain, led = statistics.median(samples["plain"]), statistics.median(samples["ledger"])
    lines = [
        f"gloo all_reduce of 1 float32, 2 ranks, {args.calls} calls per pair, "
        f"{args.rounds} alternating rounds; median of the rounds, slower rank",
        "",
        "| variant | us per call | rounds (us) |",
        "|---|---|---|",
        *(f"| {v} | {statistics.median(s):.1f} | {', '.join(f'{x:.1f}' for x in s)} |" for v, s in samples.items()),
        "",
        f"ledger / plain: {led / plain:.2f} (+{led - plain:.1f} us per call)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(
            f"# Collective ledger overhead\n\n`python benchmarks/ledger_overhead.py`, {os.cpu_count()} CPUs\n\n{text}\n"
        )


if __name__ == "__main__":
    main()
