"""Cost of the DP/EP runner fixes (patches 0008, 0010) on the CPU end-to-end
decode step: the whole series vs the series with one patch reverted, side by
side in one run.

Configuration: tiny Qwen3-MoE fp32, DP=2 + EP, offline (one verify rank
process per DP rank: vllm_epdp.verify.offline.run_offline), eager, uneven load
(7 prompts on rank 0, 1 prompt on rank 1, so rank 1 is padded every step when
0008 is in).

Metric: decode time per step on DP rank 0, per engine and repetition,

    (T(generate, N tokens) - T(generate, 2 tokens)) / (N - 2)

where both generate() calls run the same prompt shapes (same word counts,
other seeds so the prefix cache cannot serve the second from the first) on
both ranks, started together (verify's barrier). The 2-token run is prefill
plus one decode step; the difference is N-2 decode steps, including the DP
coordination all-reduce and the MoE collectives of every step. (A 1-token
run on every rank at once hung the offline DP ranks here without patch 0012:
the wave ended at its first step while requests were still arriving;
debug.md section 9. The 2-token baseline measures the same and stays.)

Variants, run as separate engines interleaved A B C A B C ... (--rounds):
  full          whole series
  without-0008  series minus 0008 (no DP padding under EP in eager mode)
  without-0010  series minus 0010 (padding rows of attention/SSM outputs left
                as torch.empty instead of zeroed)
  without-0012  series minus 0012 (no batch-complete round trip from the
                front-end to its engine; 0012 costs once per generate()
                call, not per step: read its 2-token round column)
Each engine does one warm-up and then --reps (prefill, decode) pairs.

Not measured, no CPU effect: 0009 changes only the XPU Gated DeltaNet wrapper
(Qwen3-Next on XPU); 0011 changes the async-scheduling default on XPU only.

Run on a machine with nothing else busy (the numbers are per-step times):
  .venv/bin/python benchmarks/fix_costs.py \
      --json docs/fix_costs.json --markdown docs/fix_costs.md
``--dry-run`` prints the plan (variants, overlays, scenarios) without starting
engines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vllm_epdp.patching import overlay
from vllm_epdp.verify import offline
from vllm_epdp.verify.plan import Config, Model
from vllm_epdp.verify.scenarios import ALL_SCENARIOS, Request, Scenario, prompt

MEASURED = ("0008", "0010", "0012")
NO_CPU_EFFECT = {
    "0009": "XPU-only: changes the XPU Gated DeltaNet wrapper (Qwen3-Next on XPU), no CPU code path",
    "0011": "async-scheduling default under EP+DP on XPU only",
}
# Word counts of the prompts per rank: 7 mixed on rank 0, 1 long on rank 1.
RANK0_WORDS = (4, 8, 15, 2, 20, 6, 10)
RANK1_WORDS = (70,)


def load_scenario(name: str, seed: int, max_tokens: int) -> Scenario:
    """Uneven load with fresh prompts (seed) of fixed lengths."""

    def reqs(rank: int, words: tuple[int, ...]) -> tuple[Request, ...]:
        return tuple(
            Request(f"{name}-r{rank}-{i}", prompt(seed * 100 + rank * 10 + i, w), max_tokens)
            for i, w in enumerate(words)
        )

    return Scenario(name, f"fix_costs {name}", ((reqs(0, RANK0_WORDS),), (reqs(1, RANK1_WORDS),)))


def engine_scenarios(round_: int, reps: int, tokens: int) -> list[Scenario]:
    """Warm-up, then reps x (prefill-only, full decode); seeds differ per
    scenario and round so no prompt repeats within or across engines."""
    base = 1000 * (round_ + 1)
    out = [load_scenario("warmup", base, 16)]
    for r in range(reps):
        out.append(load_scenario(f"prefill{r}", base + 2 * r + 1, 2))
        out.append(load_scenario(f"decode{r}", base + 2 * r + 2, tokens))
    return out


def variant_paths(variants: list[str]) -> dict[str, Path]:
    from vllm_epdp.patching.variants import overlay_without

    paths = {}
    for v in variants:
        paths[v] = overlay.make_overlay(state="patched") if v == "full" else overlay_without(v.split("-", 1)[1])
    return paths


def run_engine(
    variant: str, path: Path, model: Model, scenarios: list[Scenario], tokens: int, workdir: Path, timeout_s: float
) -> tuple[list[float], list[float]]:
    """Start one DP=2+EP engine pair on ``path``'s vLLM; per repetition, the
    per-step decode seconds and the seconds of the 2-token round (prefill
    plus one decode step: what 0012 adds to, once per generate() call)."""
    for s in scenarios:
        ALL_SCENARIOS[s.name] = s  # run_offline looks scenarios up by name
    names = [s.name for s in scenarios]
    config = Config(f"fixcost-{variant}", model.key, 2, 1, True, "mp", tuple(names))
    pythonpath = str(path) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    settings = offline.Settings(timeout_s=timeout_s, watch=False, ledger=False, extra_env={"PYTHONPATH": pythonpath})
    result = offline.run_offline(config, model, names, workdir, settings)
    if not result.ok:
        raise RuntimeError(f"{variant}: engine run failed: {result.error}")
    timings = json.loads((workdir / "out" / "rank0.json").read_text())["timings"]
    reps = sum(1 for n in names if n.startswith("decode"))
    decode = [(timings[f"decode{r}"] - timings[f"prefill{r}"]) / (tokens - 2) for r in range(reps)]
    return decode, [timings[f"prefill{r}"] for r in range(reps)]


def markdown(report: dict) -> str:
    full = report["median_ms"]["full"]
    full_round = report["round_median_ms"]["full"]
    lines = [
        "| variant | decode ms/step (median) | samples (ms) | full / variant "
        "| 2-token round ms (median) | full / variant |",
        "|---|---|---|---|---|---|",
    ]
    for v, med in report["median_ms"].items():
        samples = ", ".join(f"{x:.2f}" for x in report["samples_ms"][v])
        ratio = "1.00" if v == "full" else f"{full / med:.3f}"
        rnd = report["round_median_ms"][v]
        rratio = "1.00" if v == "full" else f"{full_round / rnd:.3f}"
        lines.append(f"| {v} | {med:.2f} | {samples} | {ratio} | {rnd:.1f} | {rratio} |")
    for number, why in report["not_measured"].items():
        lines.append(f"| without-{number} | not measured | | no CPU effect: {why} | | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (one engine per variant per round)")
    ap.add_argument("--reps", type=int, default=3, help="(prefill, decode) pairs per engine")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request in the decode runs")
    ap.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "vllm-epdp-fixcost" / "qwen3-moe"))
    ap.add_argument("--workdir", default=None, help="logs and rank outputs (default: a temporary directory)")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per engine run")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--markdown", help="write the markdown table here")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()

    variants = ["full"] + [f"without-{n}" for n in MEASURED]
    paths = variant_paths(variants)
    order = [(r, v) for r in range(args.rounds) for v in variants]
    if args.dry_run:
        for v, p in paths.items():
            print(f"{v}: {p}")
        for r, v in order:
            print(f"round {r}: {v}: " + ", ".join(s.name for s in engine_scenarios(r, args.reps, args.tokens)))
        print(json.dumps(engine_scenarios(0, 1, args.tokens)[1].to_json(2))[:400])
        return 0

    from vllm_epdp.harness import tiny_models

    model = Model("qwen3-moe", str(tiny_models.build_qwen3_moe(args.model_dir)), "float32", "exact")
    workroot = Path(args.workdir or tempfile.mkdtemp(prefix="fixcost-"))
    samples: dict[str, list[float]] = {v: [] for v in variants}
    rounds: dict[str, list[float]] = {v: [] for v in variants}
    started = time.monotonic()
    for r, v in order:
        per_step, round_s = run_engine(
            v,
            paths[v],
            model,
            engine_scenarios(r, args.reps, args.tokens),
            args.tokens,
            workroot / f"round{r}-{v}",
            args.timeout,
        )
        samples[v].extend(per_step)
        rounds[v].extend(round_s)
        print(
            f"[fix_costs] round {r} {v}: "
            + ", ".join(f"{x * 1e3:.2f}" for x in per_step)
            + " ms/step; 2-token rounds "
            + ", ".join(f"{x * 1e3:.0f}" for x in round_s)
            + " ms",
            flush=True,
        )
    report = {
        "config": "tiny Qwen3-MoE fp32, DP=2+EP offline (mp), eager, rank 0: 7 prompts, rank 1: 1 prompt",
        "metric": "(T(generate N tokens) - T(generate 2 tokens)) / (N-2) on DP rank 0",
        "tokens": args.tokens,
        "rounds": args.rounds,
        "reps_per_engine": args.reps,
        "order": [f"{r}:{v}" for r, v in order],
        "samples_ms": {v: [round(x * 1e3, 3) for x in s] for v, s in samples.items()},
        "median_ms": {v: round(statistics.median(s) * 1e3, 3) for v, s in samples.items()},
        "round_samples_ms": {v: [round(x * 1e3, 1) for x in s] for v, s in rounds.items()},
        "round_median_ms": {v: round(statistics.median(s) * 1e3, 1) for v, s in rounds.items()},
        "not_measured": NO_CPU_EFFECT,
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
