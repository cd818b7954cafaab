"""What the collective ledger (VLLM_EPDP_LEDGER, vllm_epdp/diagnostics/ledger/) adds to
each collective: one small gloo all_reduce on 2 ranks, per-call time without
and with the ledger installed, side by side in one run.

Variants: plain (no ledger), ledger, ledger+watchdog (the stall watchdog on:
the in-flight bookkeeping it needs), plain-again (the null control: plain vs
plain-again is the noise floor). The ledger cannot be taken out of a process
once installed, so each variant is its own pair of rank processes; pairs
alternate (plain, ledger, ...) over --rounds so that machine load hits all
alike. Per pair: a warm-up, then --calls timed all_reduces; the figure is the
slower rank's mean per call. Then, in one process with nothing waiting on
it, the ledger's own CPU time per recorded call and per step marker. The per-decode-step cost in a real vLLM run is
benchmarks/ledger_step_cost.py.

  python benchmarks/ledger_overhead.py [--rounds 5] [--calls 2000] [--markdown FILE]
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

from vllm_epdp.harness import ports, procs


def rank_main(variant: str, calls: int, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from vllm_epdp.diagnostics import ledger

    if variant.startswith("ledger"):
        ledger.install(out.parent / f"ledger-{out.stem}", stall_s=600 if variant == "ledger+watchdog" else None)
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


def in_process_main(calls: int, out: Path) -> None:
    """The ledger's own CPU time per call, in one process, nothing else
    waiting on it: what a call costs the rank that makes it. A no-op stands
    in for the collective; the arguments are a MoE dispatch's (3 tensors)."""
    import torch

    from vllm_epdp.diagnostics import ledger
    from vllm_epdp.diagnostics.ledger import record

    ledger.install(out.parent / "ledger-in-process", stall_s=600)
    group = record.Group("ep:0[0,1]", 0, "vllm", "ep:0", [0, 1])
    tensors = (torch.ones(4, 128), torch.ones(4, 2), torch.ones(4, 2, dtype=torch.int32))

    def noop(*args, **kwargs):
        return None

    def recorded():
        record.call("vllm", "dispatch", group, noop, (None, *tensors), {})

    def step():
        with ledger.step("execute_model", 4):
            pass

    def per_call_us(fn) -> float:
        best = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best.append((time.perf_counter() - start) / calls * 1e6)
        return min(best)

    base = per_call_us(lambda: noop(None, *tensors))
    result = {
        "recorded call (3 tensors)": per_call_us(recorded) - base,
        "step marker": per_call_us(step),
    }
    out.write_text(json.dumps(result))


def run_in_process(calls: int, workdir: Path) -> dict[str, float]:
    out = workdir / "in-process.json"
    argv = [sys.executable, __file__, "--in-process-of", str(out), "--calls", str(calls)]
    spec = procs.ProcSpec("in-process", argv, dict(os.environ, OMP_NUM_THREADS="1"), workdir / "in-process.log")
    outcome = procs.run_group("ledger overhead in process", [spec], timeout_s=300)
    if not outcome.ok:
        raise SystemExit(outcome.describe())
    return json.loads(out.read_text())


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
    ap.add_argument("--in-process-of", help=argparse.SUPPRESS)  # internal: the in-process measurement
    args = ap.parse_args()
    if args.rank_of:
        rank_main(args.rank_of, args.calls, Path(args.out))
        return
    if args.in_process_of:
        in_process_main(args.calls * 5, Path(args.in_process_of))
        return
    samples: dict[str, list[float]] = {"plain": [], "ledger": [], "ledger+watchdog": [], "plain-again": []}
    with tempfile.TemporaryDirectory(prefix="ledger-overhead-") as tmp:
        for r in range(args.rounds):
            for variant in samples:
                samples[variant].append(run_pair(variant, args.calls, Path(tmp)))
            print(
                f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v} {s[-1]:.1f} us" for v, s in samples.items()),
                file=sys.stderr,
            )
        alone = run_in_process(args.calls, Path(tmp))
    plain = statistics.median(samples["plain"])
    lines = [
        f"gloo all_reduce of 1 float32, 2 ranks, {args.calls} calls per pair, "
        f"{args.rounds} alternating rounds; median of the rounds, slower rank",
        "",
        "| variant | us per call | variant - plain (us) | rounds (us) |",
        "|---|---|---|---|",
        *(
            f"| {v} | {statistics.median(s):.1f} | {statistics.median(s) - plain:+.1f} | "
            f"{', '.join(f'{x:.1f}' for x in s)} |"
            for v, s in samples.items()
        ),
        "",
        f"In one process, nothing waiting on it (the ledger's own CPU time; best of 5 x {args.calls * 5} calls, "
        "watchdog on):",
        "",
        "| what | us |",
        "|---|---|",
        *(f"| {what} | {us:.2f} |" for what, us in alone.items()),
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(
            f"# Collective ledger overhead\n\n`python benchmarks/ledger_overhead.py`, {os.cpu_count()} CPUs\n\n{text}\n"
        )


if __name__ == "__main__":
    main()
