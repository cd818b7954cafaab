"""What async scheduling is worth under DP=2 + EP on CPU: the same offline
batches with async scheduling on and off, side by side in one run, with a
null control (off against off) that shows the noise floor.

This is the cost a default of "async off under EP+DP" puts on users
(patch 0011, now on XPU only); on GPUs upstream measured +24-31 % throughput from async
scheduling. Tiny steps on 2 CPU cores are host-bound, which favours async
scheduling more than a GPU would: read the ratio for its direction and size,
not as a GPU prediction.

Configuration: tiny Qwen3-MoE fp32, DP=2 + EP offline (one verify rank per DP
rank: vllm_epdp.verify.offline.run_offline, the patched vLLM with patch 0014 so
that CPU honours --async-scheduling), eager. A batch: --prompts prompts of
--tokens tokens on each rank, both ranks started together (verify's barrier).
Metric: seconds per batch on DP rank 0 (its generate() call), after one
warm-up batch per engine.

Variants, each a fresh engine pair, interleaved per round in a shuffled order
(--rounds): ``on`` (async_scheduling=True), ``off`` and ``off-again``
(async_scheduling=False twice: the null control; ``off-again / off`` far
from 1 means the machine was too noisy for the on/off ratio to mean much).

  .venv/bin/python benchmarks/async_cost.py --json docs/async_cost.json --markdown docs/async_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vllm_epdp.diagnostics import async_probe
from vllm_epdp.patching import overlay
from vllm_epdp.verify import offline
from vllm_epdp.verify.plan import Config, Model
from vllm_epdp.verify.scenarios import ALL_SCENARIOS, Request, Scenario, prompt

VARIANTS = {"on": True, "off": False, "off-again": False}


def batch(name: str, seed: int, prompts: int, tokens: int) -> Scenario:
    """``prompts`` fresh prompts (10-30 words) of ``tokens`` tokens on each DP rank."""
    rng = random.Random(seed)
    waves = tuple(
        (  # one wave per rank
            tuple(
                Request(f"{name}-r{rank}-{i}", prompt(seed * 1000 + rank * 100 + i, rng.randint(10, 30)), tokens)
                for i in range(prompts)
            ),
        )
        for rank in range(2)
    )
    return Scenario(name, f"async_cost {name}", waves)


def run_engine(variant: str, model: Model, batches: list[Scenario], env_path: Path, workdir: Path, timeout_s: float):
    """One DP=2 + EP engine pair; seconds of every batch on rank 0 (warm-up
    dropped) and the async probe's counts of its engine cores."""
    for s in batches:
        ALL_SCENARIOS[s.name] = s  # run_offline looks scenarios up by name
    names = [s.name for s in batches]
    config = Config(f"async-{variant}", model.key, 2, 1, True, "mp", tuple(names))
    pythonpath = str(env_path) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    probe = workdir / "async-probe"
    settings = offline.Settings(
        timeout_s=timeout_s,
        watch=False,
        ledger=False,
        extra_env={"PYTHONPATH": pythonpath, "VLLM_EPDP_ASYNC_PROBE": str(probe)},
        async_scheduling=VARIANTS[variant],
    )
    result = offline.run_offline(config, model, names, workdir, settings)
    if not result.ok:
        raise RuntimeError(f"{variant}: engine run failed: {result.error}")
    problems = async_probe.problems(probe, expect_async=VARIANTS[variant])
    if problems:  # the variant did not run as asked: its numbers would lie
        raise RuntimeError(f"{variant}: " + "; ".join(problems))
    timings = json.loads((workdir / "out" / "rank0.json").read_text())["timings"]
    return [timings[n] for n in names[1:]], async_probe.read(probe)


def markdown(report: dict) -> str:
    med = report["median_s"]
    lines = [
        "| variant | s per batch (median) | samples (s) | off / variant |",
        "|---|---|---|---|",
    ]
    for v in VARIANTS:
        samples = ", ".join(f"{x:.2f}" for x in report["samples_s"][v])
        lines.append(f"| {v} | {med[v]:.3f} | {samples} | {med['off'] / med[v]:.2f} |")
    lines.append("")
    lines.append(
        f"Async on is **{med['off'] / med['on']:.2f}x** the batch rate of async off; the null control "
        f"(off-again vs off) is {med['off'] / med['off-again']:.2f}x. {report['config']}; "
        f"{report['rounds']} rounds, {report['batches_per_engine']} batches per engine after a warm-up, "
        f"order {', '.join(report['order'])}; {report['machine']}; {report['wall_s'] / 60:.0f} min."
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one engine per variant per round)")
    ap.add_argument("--batches", type=int, default=3, help="timed batches per engine (after one warm-up)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per DP rank per batch")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per prompt")
    ap.add_argument("--seed", type=int, default=0, help="shuffles the order of the variants in each round")
    ap.add_argument("--workdir", default=None, help="logs and rank outputs (default: a temporary directory)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per engine run")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--markdown", help="write the markdown table here")
    args = ap.parse_args()

    from vllm_epdp.cache import cache_root
    from vllm_epdp.harness import tiny_models

    model_dir = tiny_models.build("qwen3-moe", cache_root() / "models" / "qwen3-moe")
    model = Model("qwen3-moe", str(model_dir), "float32", "exact")
    patched = overlay.make_overlay(state="patched")
    workroot = Path(args.workdir or tempfile.mkdtemp(prefix="async-cost-"))
    shuffle = random.Random(args.seed)
    order = []
    for r in range(args.rounds):
        variants = list(VARIANTS)
        shuffle.shuffle(variants)
        order += [(r, v) for v in variants]
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    overlapped: dict[str, int] = {v: 0 for v in VARIANTS}
    started = time.monotonic()
    for k, (r, v) in enumerate(order):
        batches = [batch(f"b{k}-{i}", 10_000 * (k + 1) + i, args.prompts, args.tokens) for i in range(args.batches + 1)]
        seconds, engines = run_engine(v, model, batches, patched, workroot / f"round{r}-{v}", args.timeout)
        samples[v] += seconds
        overlapped[v] += sum(e["overlapped"] for e in engines)
        print(f"[async_cost] round {r} {v}: " + ", ".join(f"{x:.2f}" for x in seconds) + " s/batch", flush=True)
    report = {
        "config": f"tiny Qwen3-MoE fp32, DP=2+EP offline (mp), eager, {args.prompts} prompts x {args.tokens} tokens "
        "per DP rank per batch",
        "metric": "seconds per batch (generate() on DP rank 0, both ranks started together)",
        "rounds": args.rounds,
        "batches_per_engine": args.batches,
        "order": [f"{r}:{v}" for r, v in order],
        "samples_s": {v: [round(x, 3) for x in s] for v, s in samples.items()},
        "median_s": {v: round(statistics.median(s), 3) for v, s in samples.items()},
        "overlapped_steps": overlapped,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
        "wall_s": round(time.monotonic() - started, 1),
    }
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
