"""Fuzz campaign: many schedules per target and model runner, one table.

For every target (vllm_epdp.fuzz.targets), runner and async scheduling
setting asked for, one ``vllm-epdp fuzz`` session of --schedules drawn
schedules (seed = --seed + the combination's index, so every one draws its
own), with the patched vLLM first on PYTHONPATH. Writes the table (schedules, requests, aborts, preemptions,
divergences, hangs, errors, failures with their saved schedule) as Markdown
and JSON.

  python benchmarks/fuzz_campaign.py --schedules 100 \\
      --json docs/fuzz.json --markdown docs/fuzz.md

Hours, not minutes: each schedule costs seconds; each target starts its
servers once (~1-2 minutes on 2 cores). Not run in CI (CI runs a few fixed
seeds per target: tests/fuzz/test_fuzz_targets.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from vllm_epdp import fuzz
from vllm_epdp.fuzz.targets import TARGETS
from vllm_epdp.patching.overlay import overlay_env

COLUMNS = (
    "schedules", "distinct", "requests", "aborts", "preemptions", "divergences", "ties", "hangs", "nonfinite", "errors",
    "restarts",
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--runners", nargs="+", default=["v1", "v2"], choices=["v1", "v2"])
    ap.add_argument("--async", dest="asyncs", nargs="+", default=["on"], choices=["on", "off"],
                    help="async scheduling of the targets (default on)")  # fmt: skip
    ap.add_argument("--schedules", type=int, default=100, help="schedules per target and runner")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workdir", default="fuzz-campaign", help="logs, ledgers, failing schedules")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument(
        "--append", action="store_true", help="add to the rows already in --json (e.g. V2 with fewer schedules)"
    )
    ap.add_argument("--markdown", metavar="FILE")
    args = ap.parse_args()
    env = overlay_env("patched")
    rows, earlier_s = [], 0.0
    if args.append and args.json and Path(args.json).is_file():
        earlier = json.loads(Path(args.json).read_text())
        rows, earlier_s = earlier["rows"], float(earlier["wall_s"])
    started = time.monotonic() - earlier_s
    combos = [(t, r, a) for t in args.targets for r in args.runners for a in args.asyncs]
    for i, (name, runner, asked) in enumerate(combos):
        workdir = Path(args.workdir) / f"{name}-{runner}-async-{asked}"
        workdir.mkdir(parents=True, exist_ok=True)
        what = f"{name} ({runner}, async {asked})"
        print(f"[campaign] {what}: {args.schedules} schedules, seed {args.seed + i}", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):
            try:
                report = fuzz.fuzz(
                    name, runner, args.schedules, args.seed + i, workdir, env=env, async_scheduling=asked == "on"
                )
                row = row_of(report)
            except Exception as exc:  # a target that cannot start: a row that says why
                row = {"target": name, "runner": runner, "async": asked == "on", "seed": args.seed + i,
                       "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        rows.append(row)
        print(f"[campaign] {what}: {row.get('error') or fuzz.format_report(report)}", file=sys.stderr)
        if args.json:  # after every pair: a long campaign cut short keeps what it did
            Path(args.json).write_text(
                json.dumps({"wall_s": round(time.monotonic() - started), "rows": rows}, indent=1)
            )
    text = table(rows, time.monotonic() - started)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def row_of(report: fuzz.Report) -> dict:
    """A report as a row of docs/fuzz.json: its fields, async scheduling as "async"."""
    row = dataclasses.asdict(report)
    row["async"] = row.pop("async_scheduling")
    return row


def table(rows: list[dict], wall_s: float) -> str:
    out = [
        "# Fuzz campaign",
        "",
        f"`python benchmarks/fuzz_campaign.py`: {sum(r.get('schedules', 0) for r in rows)} schedules in "
        f"{wall_s / 3600:.1f} h, tiny Qwen3-MoE fp32 on CPU, the patched vLLM; every schedule judged against a "
        "DP=1 server (tokens), for NaN, hangs and the collective ledger.",
        "",
        "| target | runner | async | seed | " + " | ".join(COLUMNS) + " | failures |",
        "|" + "---|" * (len(COLUMNS) + 5),
    ]
    for r in rows:
        head = f"| {r['target']} | {r['runner']} | {'on' if r['async'] else 'off'} | {r['seed']} | "
        if "error" in r:
            out.append(head + " | ".join("-" for _ in COLUMNS) + f" | could not run: {r['error'][:200]} |")
            continue
        failures = "; ".join(f.get("problems", ["?"])[0][:160] + (f" ({f['schedule']})" if "schedule" in f else "")
                             for f in r["failures"]) or "none"  # fmt: skip
        out.append(head + " | ".join(str(r.get(c, "-")) for c in COLUMNS) + f" | {failures} |")
    # Rows from before a column existed show "-" and add nothing to its total.
    on, off = [r for r in rows if r["async"]], [r for r in rows if not r["async"]]
    for label, subset in (("async on", on), ("async off", off), ("**all**", rows)):
        totals = {c: sum(r.get(c, 0) for r in subset) for c in COLUMNS}
        out.append(f"| {label} | | | | " + " | ".join(str(totals[c]) for c in COLUMNS) + " | |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
