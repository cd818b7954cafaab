"""One run of verify judged: its row of the report (verdict, problems, the runner that ran).

A target is compared request by request with its model's DP=1 reference on
the same model runner; a reference only has to be finite and complete. Every
row also says what nan_watch saw (non-finite rows, real vs DP padding), what
the collective ledger found (``--ledger``), and which model runner really ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vllm_epdp.verify import compare
from vllm_epdp.verify.plan import Model

if TYPE_CHECKING:
    from vllm_epdp.verify.offline import RunResult


def assess(
    result: RunResult, model: Model, reference: RunResult | None, *, deep: bool, ledger: bool, tolerance: float
) -> dict:
    """One table row (and JSON entry) for a run. ``deep``: padding rows count
    too; ``ledger``: the run kept a ledger to compare; ``tolerance``: for
    models compared closely rather than exactly."""
    from vllm_epdp.diagnostics import nonfinite

    config = result.config
    row: dict[str, Any] = {
        "name": config.name,
        "key": config.key,
        "runner_asked": config.runner,
        "reference": config.reference,
        "describe": config.describe(),
        "model": model.key,
        "dtype": model.dtype,
        "mode": model.mode,
        "scenarios": {},
        "scenario_names": list(result.scenarios),
        "wall_s": round(result.wall_s, 1),
        "engine_up_s": result.engine_up_s,
        "problems": [],
        "tokens_matched": 0,
        "tokens_total": 0,
        "max_logprob_diff": 0.0,
        "nonfinite_logprobs": 0,
    }
    watch_dir = result.workdir / "nan_watch"
    watch = nonfinite.summarize(watch_dir) if watch_dir.exists() else None
    row["nan_watch"] = watch
    row["runner"] = ran_runner(result.workdir, watch)
    if config.runner != "auto" and row["runner"] not in (None, config.runner.upper()):
        row["problems"].append(
            f"asked for model runner {config.runner.upper()}, but vLLM ran {row['runner']}: "
            "see the run's log for why it fell back"
        )
    row["padding"] = (
        {k: watch[k] for k in ("padded_rows", "padded_steps", "max_padded_rows", "dummy_steps", "steps")}
        if watch
        else None
    )
    if result.error:
        row["verdict"] = "HANG" if result.outcome and result.outcome.timed_out else "ERROR"
        row["problems"].append(result.error)
        return row
    if watch:
        row["problems"].extend(nonfinite_problems(watch, deep))
    # A single rank (the DP=1 reference) posts no collective: its ledger has
    # nothing to compare, and an empty ledger reads as a problem.
    if ledger and config.dp * config.tp > 1:
        row["ledger_problems"] = ledger_problems(result.workdir / "ledger")
        row["problems"].extend(f"collective ledger: {m}" for m in row["ledger_problems"])
    if config.reference:
        # The reference is checked only for being finite and complete.
        for scenario, outputs in result.outputs.items():
            bad = sum(compare._nonfinite(r) for r in outputs.values())
            row["nonfinite_logprobs"] += bad
            if bad:
                row["problems"].append(f"{scenario}: {bad} non-finite logprobs in the reference")
        row["verdict"] = "PASS" if not row["problems"] else "FAIL"
        return row
    if reference is None or not reference.ok:
        row["verdict"] = "ERROR"
        row["problems"].append("no usable DP=1 reference run (see its row)")
        return row
    for scenario in result.scenarios:
        add_scenario(
            row, scenario, reference.outputs.get(scenario, {}), result.outputs.get(scenario, {}), model, tolerance
        )
    row["verdict"] = "PASS" if not row["problems"] else "FAIL"
    return row


def nonfinite_problems(watch: dict, deep: bool) -> list[str]:
    """What nan_watch's summary says is wrong: non-finite real rows, and with
    ``deep`` non-finite padding rows too, named by module and first step."""
    bad_real, bad_pad = watch["real_nonfinite_rows"], watch["pad_nonfinite_rows"]
    if not (bad_real or (deep and bad_pad)):
        return []
    where = ", ".join(
        f"{name} (real {e['real_nonfinite_rows']}, pad {e['pad_nonfinite_rows']}, first at step {e['first_step']})"
        for name, e in sorted(watch["modules"].items())
        if e["real_nonfinite_rows"] or e["pad_nonfinite_rows"]
    )
    return [f"non-finite rows: {bad_real} real, {bad_pad} padding; {where}"]


def ledger_problems(ledger_dir: Path) -> list[str]:
    from vllm_epdp.diagnostics import ledger as collective_ledger

    return collective_ledger.compare(ledger_dir) if ledger_dir.exists() else ["no ledger was written"]


def add_scenario(row: dict, scenario: str, expected: dict, got: dict, model: Model, tolerance: float) -> None:
    """Compare one scenario's outputs with the reference's; add it to ``row``."""
    verdict = compare.compare_runs(expected, got, model.mode, tolerance)
    row["scenarios"][scenario] = {
        "ok": verdict.ok,
        "tokens_matched": verdict.tokens_matched,
        "tokens_total": verdict.tokens_total,
        "max_logprob_diff": verdict.max_diff,
        "nonfinite_logprobs": verdict.nonfinite,
        "problems": verdict.problems,
    }
    row["tokens_matched"] += verdict.tokens_matched
    row["tokens_total"] += verdict.tokens_total
    row["max_logprob_diff"] = max(row["max_logprob_diff"], verdict.max_diff)
    row["nonfinite_logprobs"] += verdict.nonfinite
    row["problems"].extend(f"{scenario}: {p}" for p in verdict.problems)


def ran_runner(workdir: Path, watch: dict | None) -> str | None:
    """The model runner a run really used: what nan_watch saw in the worker
    (the runner's class), else vLLM's own log line for V2 (V1 logs none of its
    own); None if no engine got that far."""
    from vllm_epdp import model_runners

    if watch and watch.get("runners"):
        return "+".join(sorted(watch["runners"]))
    return model_runners.runner_in_logs(Path(workdir).glob("*.log"))
