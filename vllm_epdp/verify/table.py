"""verify's report as a table for people: one line per run, then every problem, then the verdict."""

from __future__ import annotations

import math


def _nan_cell(row: dict) -> str:
    w = row.get("nan_watch")
    parts = []
    if row["nonfinite_logprobs"]:
        parts.append(f"{row['nonfinite_logprobs']} logprobs")
    if w:
        if w["real_nonfinite_rows"]:
            parts.append(f"{w['real_nonfinite_rows']} real rows")
        if w["pad_nonfinite_rows"]:
            parts.append(f"{w['pad_nonfinite_rows']} pad rows")
    elif not parts:
        return "no (logprobs)"
    return ", ".join(parts) if parts else "no"


def format_table(report: dict) -> str:
    header = (
        "configuration",
        "runner",
        "scenarios",
        "tokens matched",
        "max |dlogprob|",
        "NaN seen",
        "padding rows",
        "wall s",
        "verdict",
    )
    lines = []
    for r in report["configs"]:
        if r["reference"]:
            matched, diff = "(reference)", "-"
        else:
            matched = f"{r['tokens_matched']}/{r['tokens_total']}"
            d = r["max_logprob_diff"]
            diff = "inf" if not math.isfinite(d) else f"{d:.1e}"
        pad = r.get("padding")
        pad_cell = f"{pad['padded_rows']} in {pad['padded_steps']} steps" if pad else "-"
        lines.append(
            (
                f"{r['name']} ({r['describe']}, {r['model']} {r['dtype']})",
                r.get("runner") or "?",
                ",".join(r["scenario_names"]) or "-",
                matched,
                diff,
                _nan_cell(r),
                pad_cell,
                f"{r['wall_s']:.0f}",
                r["verdict"],
            )
        )
    widths = [max(len(h), *(len(cells[i]) for cells in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    for r in report["configs"]:
        for p in r["problems"]:
            out.append(f"\n{r['key']}: {p}")
    verdict = "all configurations match DP=1" if report["ok"] else "MISMATCH, NaN, HANG or ERROR: see above"
    out.append(
        f"\nvLLM {report['vllm']['version']} ({report['vllm']['location']}); fp32 tolerance {report['tolerance']:g};"
        f" {'deep NaN check; ' if report['deep'] else ''}total {report['wall_s']:.0f} s: {verdict}"
    )
    return "\n".join(out)
