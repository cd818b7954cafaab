"""``vllm-epdp verify``: does a DP x EP run compute what a single-rank run does?

Runs a DP=1 reference and target configurations (DP=2+EP, TP=2+EP, the hybrid
Qwen3-Next with DP=2+EP; with ``--all`` also an idle rank, a long mixed run and
``vllm serve``), compares every request token by token and logprob by logprob,
watches for NaN (``--deep``: every row of every decoder layer, DP padding rows
included) and for hangs (a deadline per run; stacks of every process).

Exit status: 0 all matched, 1 a mismatch / NaN / hang / crash, 2 usage or
environment error. The CLI (vllm_epdp/cli.py) calls ``add_arguments`` and
``run``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vllm_epdp.cache import cache_root
from vllm_epdp.errors import EpdpError
from vllm_epdp.verify import compare
from vllm_epdp.verify import plan as plan_mod
from vllm_epdp.verify.plan import Model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sel = parser.add_argument_group("what to run")
    sel.add_argument("--list", action="store_true", help="list the scenarios and exit")
    sel.add_argument("--all", action="store_true", help="run every scenario (idle rank, long run, vllm serve)")
    sel.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="CONFIG/SCENARIO, CONFIG or SCENARIO to run (glob patterns; repeatable); see --list",
    )
    sel.add_argument(
        "--deep",
        action="store_true",
        help="hook every decoder layer; fail on any non-finite row, DP padding rows included",
    )
    sel.add_argument(
        "--ledger",
        action="store_true",
        help="record every collective per rank and fail if the members of a group disagree",
    )
    hw = parser.add_argument_group("your own model and hardware (default: tiny local models on CPU)")
    hw.add_argument("--model", metavar="PATH_OR_NAME", help="model to verify instead of the tiny local ones")
    hw.add_argument("--device", choices=("cpu", "cuda", "xpu"), default="cpu")
    hw.add_argument("--dp", type=int, default=2, help="data-parallel size of the target (default 2)")
    hw.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the target (default 1)")
    hw.add_argument("--ref-tp", type=int, help="tensor-parallel size of the DP=1 reference (default: --tp)")
    hw.add_argument("--dtype", help="model dtype with --model (default auto; float32 gives the exact token check)")
    hw.add_argument(
        "--runner",
        choices=("auto", "v1", "v2", "both"),
        help="model runner: vLLM's own pick (auto), V1, V2 (Model Runner V2, vLLM's default on XPU and NVIDIA; "
        "on CPU through Triton's interpreter: slow per step) or both, each against its own DP=1 reference "
        "(default: both for the tiny models, auto with --model)",
    )
    hw.add_argument(
        "--launcher",
        choices=("mp", "torchrun"),
        default="mp",
        help="mp: one process per DP rank (vLLM's offline DP pattern); torchrun: external launcher",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    out.add_argument("--keep-logs", metavar="DIR", help="keep every run's logs and outputs in DIR")
    out.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="deadline per configuration run in seconds (default 600)",
    )
    out.add_argument(
        "--tolerance",
        type=float,
        default=compare.DEFAULT_TOLERANCE,
        help=f"max |logprob difference| for fp32 models (default {compare.DEFAULT_TOLERANCE:g})",
    )
    out.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the tiny models are built in DIR/models (default: vllm-epdp's cache: $VLLM_EPDP_CACHE, "
        "<repository>/.cache in a source checkout, else ~/.cache/vllm-epdp)",
    )


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _vllm_location() -> dict:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.origin:
        raise EpdpError(
            "vLLM is not importable by this Python; install it (CPU: ./dev setup) or run verify from its environment"
        )
    root = Path(spec.origin).parent
    version = "unknown"
    try:
        for line in (root / "_version.py").read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=")[-1].strip().strip("'\"")
    except OSError:
        pass
    return {"location": str(root), "version": version}


def _make_plan(args) -> plan_mod.Plan:
    for name in ("dp", "tp"):
        if getattr(args, name) < 1:
            raise EpdpError(f"--{name} must be at least 1")
    if args.model:
        # Exact token equality only makes sense in fp32; anything else (the
        # model's own dtype with "auto") gets the logprob-closeness criterion.
        dtype = args.dtype or "auto"
        mode = "exact" if dtype in ("float32", "float") else "close"
        models = {"model": Model("model", args.model, dtype, mode, offline=Path(args.model).exists())}
        configs = plan_mod.user_configs("model", args.dp, args.tp, args.launcher, args.ref_tp or args.tp)
    else:
        if args.dtype or args.launcher != "mp" or args.dp != 2 or args.tp != 1 or args.ref_tp:
            raise EpdpError(
                "--dp/--tp/--ref-tp/--dtype/--launcher apply to --model; "
                "the tiny models have fixed configurations (see --list)"
            )
        cache = Path(args.cache_dir) if args.cache_dir else cache_root()
        models = {
            "qwen3-moe": Model("qwen3-moe", str(cache / "models" / "qwen3-moe"), "float32", "exact"),
            "qwen3-next": Model("qwen3-next", str(cache / "models" / "qwen3-next"), "bfloat16", "close"),
        }
        configs = plan_mod.embedded_configs()
    runner = args.runner or ("auto" if args.model else "both")
    configs = plan_mod.for_runners(configs, ["v1", "v2"] if runner == "both" else [runner])
    return plan_mod.select(models, configs, args.scenario, args.all)


def _build_models(plan: plan_mod.Plan) -> None:
    from vllm_epdp import tiny_models

    needed = {c.model for c, _ in plan.runs()}
    for key in sorted(needed):
        model = plan.models[key]
        if key in ("qwen3-moe", "qwen3-next"):
            t0 = time.monotonic()
            tiny_models.build(key, model.path)
            _say(f"[verify] model {key} ready in {model.path} ({time.monotonic() - t0:.1f} s)")


def run(args) -> int:
    started = time.monotonic()
    plan = _make_plan(args)
    if args.list:
        print("\n".join(plan.listing()))
        return 0
    vllm_info = _vllm_location()
    _build_models(plan)
    if args.keep_logs:
        workroot = Path(args.keep_logs)
        workroot.mkdir(parents=True, exist_ok=True)
    else:
        workroot = Path(tempfile.mkdtemp(prefix="vllm-epdp-verify-"))
    from vllm_epdp.verify import runner, server

    settings = runner.Settings(
        device=args.device,
        timeout_s=args.timeout,
        watch=args.deep or not args.model,  # the hooks cost a host sync per layer: opt-in on real models
        ledger=args.ledger,
        say=_say,
    )
    _say(f"[verify] vLLM {vllm_info['version']} at {vllm_info['location']}; logs in {workroot}")
    # Targets first: a target that crashes needs no reference, so a broken
    # setup fails fast. A model's reference runs only if one of its targets
    # produced output to compare.
    results: dict[str, runner.RunResult] = {}
    runs = plan.runs()
    ordered = [r for r in runs if not r[0].reference] + [r for r in runs if r[0].reference]
    for config, scenarios in ordered:
        model = plan.models[config.model]
        if config.reference and not any(
            res.outputs_seen
            for res in results.values()
            if (res.config.model, res.config.runner) == (config.model, config.runner)
        ):
            _say(f"[verify] {config.key}: skipped, no target of {model.key} produced output")
            continue
        workdir = workroot / config.key
        shutil.rmtree(workdir, ignore_errors=True)
        run_fn = server.run_server if config.launcher == "serve" else runner.run_offline
        result = run_fn(config, model, scenarios, workdir, settings)
        results[config.key] = result
        _say(f"[verify] {config.key}: {'done' if result.ok else 'FAILED'} ({result.wall_s:.0f} s)")
    references = {(r.config.model, r.config.runner): r for r in results.values() if r.config.reference}
    rows = []
    for config, _ in runs:  # table order: references first
        if config.key in results:
            reference = references.get((config.model, config.runner))
            rows.append(_assess(results[config.key], plan.models[config.model], reference, args))
    report = {
        "ok": bool(rows) and all(r["verdict"] == "PASS" for r in rows),
        "vllm": vllm_info,
        "wall_s": round(time.monotonic() - started, 1),
        "tolerance": args.tolerance,
        "deep": bool(args.deep),
        "logs": str(workroot),
        "configs": rows,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report))
    if report["ok"] and not args.keep_logs:
        shutil.rmtree(workroot, ignore_errors=True)
    elif not report["ok"]:
        _say(f"[verify] logs kept in {workroot}")
    return 0 if report["ok"] else 1


def _assess(result, model: Model, reference, args) -> dict:
    """One table row (and JSON entry) for a run."""
    from vllm_epdp import nan_watch

    config = result.config
    row = {
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
    watch = nan_watch.summarize(watch_dir) if watch_dir.exists() else None
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
        bad_real, bad_pad = watch["real_nonfinite_rows"], watch["pad_nonfinite_rows"]
        if bad_real or (args.deep and bad_pad):
            where = ", ".join(
                f"{name} (real {e['real_nonfinite_rows']}, pad {e['pad_nonfinite_rows']}, "
                f"first at step {e['first_step']})"
                for name, e in sorted(watch["modules"].items())
                if e["real_nonfinite_rows"] or e["pad_nonfinite_rows"]
            )
            row["problems"].append(f"non-finite rows: {bad_real} real, {bad_pad} padding; {where}")
    if args.ledger:
        from vllm_epdp import ledger

        ledger_dir = result.workdir / "ledger"
        mismatches = ledger.compare(ledger_dir) if ledger_dir.exists() else ["no ledger was written"]
        row["ledger_problems"] = mismatches
        row["problems"].extend(f"collective ledger: {m}" for m in mismatches)
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
        verdict = compare.compare_runs(
            reference.outputs.get(scenario, {}), result.outputs.get(scenario, {}), model.mode, args.tolerance
        )
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
    row["verdict"] = "PASS" if not row["problems"] else "FAIL"
    return row


def ran_runner(workdir: Path, watch: dict | None) -> str | None:
    """The model runner a run really used: what nan_watch saw in the worker
    (the runner's class), else vLLM's own log line for V2 (V1 logs none of its
    own); None if no engine got that far."""
    from vllm_epdp import runners

    if watch and watch.get("runners"):
        return "+".join(sorted(watch["runners"]))
    logs = [p.read_text(errors="replace") for p in Path(workdir).glob("*.log")]
    if any(runners.V2_LOG_LINE in text for text in logs):
        return "V2"
    if any("Initializing a V1 LLM engine" in text for text in logs):  # the engine, not the runner
        return "V1"
    return None


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
