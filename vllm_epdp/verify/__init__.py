"""``vllm-epdp verify``: run the planned configurations and report whether each computes what DP=1 does.

Runs a DP=1 reference and target configurations (DP=2+EP, TP=2+EP, the hybrid
Qwen3-Next with DP=2+EP; with ``--all`` also an idle rank, a long mixed run and
``vllm serve``), compares every request token by token and logprob by logprob,
watches for NaN (``--deep``: every row of every decoder layer, DP padding rows
included) and for hangs (a deadline per run; stacks of every process).

Exit status: 0 all matched, 1 a mismatch / NaN / hang / crash, 2 usage or
environment error. The CLI (vllm_epdp/cli.py) calls ``add_arguments`` (args.py)
and ``run``. This module runs the plan: targets first, each model's reference
only if a target produced output; assess.py judges each run, table.py prints.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from vllm_epdp import model_runners
from vllm_epdp.errors import EpdpError
from vllm_epdp.patching import vllm_tree
from vllm_epdp.patching.log import to_stderr
from vllm_epdp.verify import plan as plan_mod
from vllm_epdp.verify.args import add_arguments, make_plan
from vllm_epdp.verify.assess import assess
from vllm_epdp.verify.table import format_table

__all__ = ["add_arguments", "run"]


def _vllm_location() -> dict:
    """The vLLM the runs will import (verify needs no wheel: --model on an
    editable install is fine), for the report."""
    package = model_runners.importable_package()
    if package is None:
        raise EpdpError(
            "vLLM is not importable by this Python; install it (CPU: ./dev setup) or run verify from its environment"
        )
    return {"location": str(package), "version": vllm_tree.version_from_file(package.parent) or "unknown"}


def _build_models(plan: plan_mod.Plan) -> None:
    from vllm_epdp.harness import tiny_models

    needed = {c.model for c, _ in plan.runs()}
    for key in sorted(needed):
        model = plan.models[key]
        if key in ("qwen3-moe", "qwen3-next"):
            t0 = time.monotonic()
            tiny_models.build(key, model.path)
            to_stderr(f"[verify] model {key} ready in {model.path} ({time.monotonic() - t0:.1f} s)")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    plan = make_plan(args)
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
    from vllm_epdp.verify import offline, server

    settings = offline.Settings(
        device=args.device,
        timeout_s=args.timeout,
        watch=args.deep or not args.model,  # the hooks cost a host sync per layer: opt-in on real models
        ledger=args.ledger,
        say=to_stderr,
    )
    to_stderr(f"[verify] vLLM {vllm_info['version']} at {vllm_info['location']}; logs in {workroot}")
    # Targets first: a target that crashes needs no reference, so a broken
    # setup fails fast. A model's reference runs only if one of its targets
    # produced output to compare.
    results: dict[str, offline.RunResult] = {}
    runs = plan.runs()
    ordered = [r for r in runs if not r[0].reference] + [r for r in runs if r[0].reference]
    for config, scenarios in ordered:
        model = plan.models[config.model]
        if config.reference and not any(
            res.outputs_seen
            for res in results.values()
            if (res.config.model, res.config.runner) == (config.model, config.runner)
        ):
            to_stderr(f"[verify] {config.key}: skipped, no target of {model.key} produced output")
            continue
        workdir = workroot / config.key
        shutil.rmtree(workdir, ignore_errors=True)
        run_fn = server.run_server if config.launcher == "serve" else offline.run_offline
        result = run_fn(config, model, scenarios, workdir, settings)
        results[config.key] = result
        to_stderr(f"[verify] {config.key}: {'done' if result.ok else 'FAILED'} ({result.wall_s:.0f} s)")
    references = {(r.config.model, r.config.runner): r for r in results.values() if r.config.reference}
    rows = []
    for config, _ in runs:  # table order: references first
        if config.key in results:
            reference = references.get((config.model, config.runner))
            rows.append(
                assess(
                    results[config.key],
                    plan.models[config.model],
                    reference,
                    deep=args.deep,
                    ledger=args.ledger,
                    tolerance=args.tolerance,
                )
            )
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
        to_stderr(f"[verify] logs kept in {workroot}")
    return 0 if report["ok"] else 1
