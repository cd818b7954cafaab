"""What the collective ledger (VLLM_EPDP_LEDGER, with its stall watchdog) costs per
decode step of a real DP=2 + EP vLLM run on CPU, side by side in one run.

Configuration: tiny Qwen3-MoE fp32, DP=2 + EP, offline (one verify rank
process per DP rank: vllm_epdp.verify.offline.run_offline), eager, the whole
series applied (an overlay), 4 prompts on each DP rank.

Metric: decode time per step on DP rank 0, per engine and repetition,

    (T(generate, N tokens) - T(generate, 2 tokens)) / (N - 2)

the same prompt shapes in both calls, other seeds (no prefix-cache hits): the
difference is N-2 decode steps, each with its DP coordination all-reduce and
its MoE collectives, so each with its ledger entries.

Variants, each a separate engine pair, interleaved A B C A B C ... (--rounds):
  off         no ledger
  on          VLLM_EPDP_LEDGER=DIR and VLLM_EPDP_LEDGER_STALL_S=120: what
              debug.md tells a user with the one-hour hang to run
  off-again   no ledger: the null control; off-again / off is the noise floor
Each engine does one warm-up and then --reps (2-token, N-token) pairs. From
the "on" runs the ledgers give the entries and bytes per decode step (per
process), which say how large a ledger an hour of decoding writes.

  .venv/bin/python benchmarks/ledger_step_cost.py --json FILE --markdown FILE   (docs/ledger_cost.md: two runs)
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

VARIANTS = ("off", "on", "off-again")
STALL_S = "120"
# Word counts of the prompts per DP rank.
WORDS = ((4, 12, 20, 8), (6, 10, 16, 30))


def load_scenario(name: str, seed: int, max_tokens: int) -> Scenario:
    def reqs(rank: int) -> tuple[Request, ...]:
        return tuple(
            Request(f"{name}-r{rank}-{i}", prompt(seed * 100 + rank * 10 + i, w), max_tokens)
            for i, w in enumerate(WORDS[rank])
        )

    return Scenario(name, f"ledger_step_cost {name}", ((reqs(0),), (reqs(1),)))


def engine_scenarios(round_: int, variant: int, reps: int, tokens: int) -> list[Scenario]:
    """Warm-up, then reps x (2-token, N-token); seeds differ per scenario,
    variant and round so no prompt repeats anywhere."""
    base = 1000 * (round_ * len(VARIANTS) + variant + 1)
    out = [load_scenario("warmup", base, 16)]
    for r in range(reps):
        out.append(load_scenario(f"prefill{r}", base + 2 * r + 1, 2))
        out.append(load_scenario(f"decode{r}", base + 2 * r + 2, tokens))
    return out


def run_engine(variant: str, model: Model, scenarios: list[Scenario], tokens: int, workdir: Path, timeout_s: float):
    """One DP=2+EP engine pair; per repetition the decode seconds per step,
    and (ledger on) the ledger's entries and bytes per decode step."""
    for s in scenarios:
        ALL_SCENARIOS[s.name] = s  # run_offline looks scenarios up by name
    names = [s.name for s in scenarios]
    config = Config(f"ledgercost-{variant}", model.key, 2, 1, True, "mp", tuple(names))
    path = overlay.make_overlay(state="patched")
    pythonpath = str(path) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    extra = {"PYTHONPATH": pythonpath}
    on = variant == "on"
    if on:
        extra["VLLM_EPDP_LEDGER_STALL_S"] = STALL_S
    settings = offline.Settings(timeout_s=timeout_s, watch=False, ledger=on, extra_env=extra)
    result = offline.run_offline(config, model, names, workdir, settings)
    if not result.ok:
        raise RuntimeError(f"{variant}: engine run failed: {result.error}")
    timings = json.loads((workdir / "out" / "rank0.json").read_text())["timings"]
    reps = sum(1 for n in names if n.startswith("decode"))
    per_step = [(timings[f"decode{r}"] - timings[f"prefill{r}"]) / (tokens - 2) for r in range(reps)]
    return per_step, ledger_size(workdir / "ledger") if on else None


def ledger_size(directory: Path) -> dict:
    """Entries, steps and bytes of the ledger files of processes that ran
    steps (the workers), and what problems compare found (must be none)."""
    from vllm_epdp.diagnostics import ledger

    entries = steps = size = 0
    for path in directory.glob("*.jsonl"):
        lines = path.read_text().splitlines()
        n_steps = sum('"kind":"step"' in line for line in lines)
        if n_steps:
            steps += n_steps
            entries += sum('"kind":"op"' in line for line in lines)
            size += path.stat().st_size
    return {"entries": entries, "steps": steps, "bytes": size, "problems": ledger.compare(directory)}


def markdown(report: dict) -> str:
    off = report["median_ms"]["off"]
    lines = [
        "| variant | decode ms/step (median) | samples (ms) | variant / off |",
        "|---|---|---|---|",
    ]
    for v, med in report["median_ms"].items():
        samples = ", ".join(f"{x:.2f}" for x in report["samples_ms"][v])
        lines.append(f"| {v} | {med:.2f} | {samples} | {med / off:.3f} |")
    size = report["ledger"]
    lines += [
        "",
        f'Ledger (the "on" runs, worker processes): {size["entries"]} entries over {size["steps"]} steps '
        f"({size['entries'] / size['steps']:.1f} per step per process), {size['bytes'] / size['steps']:.0f} bytes "
        f"per step per process; compare found {len(size['problems'])} problems.",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one engine per variant per round)")
    ap.add_argument("--reps", type=int, default=3, help="(2-token, N-token) pairs per engine")
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per request in the decode runs")
    ap.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "vllm-epdp-ledgercost" / "qwen3-moe"))
    ap.add_argument("--workdir", default=None, help="logs, ledgers and rank outputs (default: a temporary directory)")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per engine run")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--markdown", help="write the markdown table here")
    args = ap.parse_args()

    from vllm_epdp.harness import tiny_models

    model = Model("qwen3-moe", str(tiny_models.build_qwen3_moe(args.model_dir)), "float32", "exact")
    workroot = Path(args.workdir or tempfile.mkdtemp(prefix="ledgercost-"))
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    sizes = {"entries": 0, "steps": 0, "bytes": 0, "problems": []}
    started = time.monotonic()
    for r in range(args.rounds):
        for i, v in enumerate(VARIANTS):
            scenarios = engine_scenarios(r, i, args.reps, args.tokens)
            per_step, size = run_engine(v, model, scenarios, args.tokens, workroot / f"round{r}-{v}", args.timeout)
            samples[v].extend(per_step)
            if size:
                for k in ("entries", "steps", "bytes"):
                    sizes[k] += size[k]
                sizes["problems"] += size["problems"]
            print(f"[ledger_step_cost] round {r} {v}: " + ", ".join(f"{x * 1e3:.2f}" for x in per_step) + " ms/step",
                  flush=True)  # fmt: skip
    report = {
        "config": "tiny Qwen3-MoE fp32, DP=2+EP offline (mp), eager, series applied, 4 prompts per DP rank",
        "metric": "(T(generate N tokens) - T(generate 2 tokens)) / (N-2) on DP rank 0",
        "on": f"VLLM_EPDP_LEDGER=DIR VLLM_EPDP_LEDGER_STALL_S={STALL_S}",
        "tokens": args.tokens,
        "rounds": args.rounds,
        "reps_per_engine": args.reps,
        "samples_ms": {v: [round(x * 1e3, 3) for x in s] for v, s in samples.items()},
        "median_ms": {v: round(statistics.median(s) * 1e3, 3) for v, s in samples.items()},
        "ledger": sizes,
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
