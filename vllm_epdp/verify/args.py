"""verify's command line: its options, and the plan of runs they ask for."""

from __future__ import annotations

import argparse
from pathlib import Path

from vllm_epdp import model_runners
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
        "(default: both for the tiny models, auto with --model). vLLM 0.34.0 has no V1: both is V2 there",
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


def make_plan(args: argparse.Namespace) -> plan_mod.Plan:
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
    # "both" is every runner this vLLM has: V2 alone from 0.34.0 on (no V1).
    have = model_runners.available()
    if runner not in ("auto", "both") and runner not in have:
        raise EpdpError(f"{model_runners.NO_V1_WHY}: --runner {runner} cannot run; use --runner v2, auto or both")
    configs = plan_mod.for_runners(configs, have if runner == "both" else [runner])
    return plan_mod.select(models, configs, args.scenario, args.all)
