"""``vllm-epdp fuzz``: random request schedules against DP x EP servers,
each judged against a single-rank server, with the collective ledger on.

Hypothesis draws the schedules (vllm_epdp.fuzz.strategies), runs each
against the target, which stays up between schedules (vllm_epdp.fuzz.session),
and on a failure shrinks it to a small schedule that still fails; that one is
saved as JSON and replays with ``vllm-epdp fuzz --target T --replay FILE``.
Hypothesis also keeps failing examples in a database
(``<cache>/fuzz-db/<target>-<runner>``) and tries them first next time.

Exit status: 0 every schedule passed, 1 a schedule failed (hang, divergence
from DP=1, NaN, ledger disagreement, a request the server failed), 2 usage or
environment error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_epdp.errors import EpdpError
from vllm_epdp.fuzz.verdict import Counts
from vllm_epdp.patching.log import to_stderr

if TYPE_CHECKING:
    from vllm_epdp.fuzz.schedule import Schedule
    from vllm_epdp.fuzz.strategies import Limits
    from vllm_epdp.fuzz.targets import Target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vllm_epdp.fuzz.targets import TARGETS

    parser.add_argument(
        "--target",
        default="serve-dp2-ep",
        choices=sorted(TARGETS),
        help="what to fuzz: " + "; ".join(f"{t.name}: {t.summary}" for t in TARGETS.values()),
    )
    parser.add_argument("--runner", choices=("v1", "v2"), default="v1", help="model runner (V2: Triton interpreter)")
    parser.add_argument(
        "--async",
        dest="async_scheduling",
        choices=("on", "off"),
        default="on",
        help="async scheduling of the target (default on, as vLLM runs on XPU and NVIDIA; on CPU it needs "
        "patch 0014). The fuzzer checks that the target's engine cores really pipelined (on) or did not (off); "
        "the DP=1 reference runs vLLM's default either way",
    )
    parser.add_argument("--examples", type=int, default=20, metavar="N", help="schedules to draw (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed draws the same schedules")
    parser.add_argument("--replay", metavar="FILE", help="run this saved schedule (JSON) instead of drawing")
    parser.add_argument("--workdir", metavar="DIR", help="logs, ledgers and failing schedules (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


@dataclasses.dataclass
class Report(Counts):
    target: str
    runner: str
    seed: int
    async_scheduling: bool = True
    schedules: int = 0
    distinct: int = 0  # schedules not run before in this report (Hypothesis may run one again while it shrinks)
    restarts: int = 0
    runner_seen: str | None = None  # what the target's logs show ran ("V1", "V2"), not what was asked
    # Steps the target's engine cores scheduled while another batch ran
    # (vllm_epdp.diagnostics.async_probe): > 0 is what shows async scheduling really ran.
    overlapped_steps: int = 0
    failures: list[dict] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0

    def __post_init__(self) -> None:
        self._seen: set[str] = set()  # digests run so far (not a field: not in the JSON)

    @property
    def ok(self) -> bool:
        return not self.failures

    # A Report adds one schedule's outcome with that schedule's digest; it is
    # never added up through a plain Counts, so the wider signature is safe.
    def add(self, outcome: Counts, digest: str) -> None:  # type: ignore[override]
        self.schedules += 1
        if digest not in self._seen:
            self._seen.add(digest)
            self.distinct += 1
        super().add(outcome)


# n > 1 asks vLLM to sample (it refuses n > 1 when greedy), and V2 samples
# with top-k through a Triton kernel that Triton's interpreter cannot run
# (`row_id.to(...)` on a Python int in _topk_topp_kernel): on CPU, V2 gets
# n = 1 only. Compiled Triton on a GPU runs it.
V2_CPU_MAX_N = 1
# V2 steps through Triton's interpreter (~50 ms of overhead per step on 2
# cores): its idle phases are shorter.
V2_CPU_MAX_LONG_TOKENS = 96


def _model_limits(model_dir: Path, runner: str, chosen: Target) -> Limits:
    from vllm_epdp.fuzz.strategies import Limits
    from vllm_epdp.fuzz.targets import CPU_BLOCK_TOKENS, MAX_MODEL_LEN

    config = json.loads((model_dir / "config.json").read_text())
    max_n = V2_CPU_MAX_N if runner == "v2" else 2
    return Limits(
        vocab_size=int(config["vocab_size"]),
        max_model_len=MAX_MODEL_LEN,
        max_n=max_n,
        kv_block_tokens=CPU_BLOCK_TOKENS if chosen.small_kv else None,
        offline_dp=chosen.dp if chosen.offline else None,
        pin_dp=None if chosen.offline else chosen.dp,
        max_long_tokens=V2_CPU_MAX_LONG_TOKENS if runner == "v2" else Limits.max_long_tokens,
    )


def fuzz(
    target_name: str,
    runner: str,
    examples: int,
    seed: int,
    workdir: Path,
    env: dict[str, str] | None = None,
    replay: Path | None = None,
    say: Callable[[str], None] = to_stderr,
    async_scheduling: bool = True,
) -> Report:
    """Run the schedules; return what happened (failures shrunk and saved)."""
    from vllm_epdp.cache import cache_root
    from vllm_epdp.fuzz.offline import OfflineSession
    from vllm_epdp.fuzz.schedule import Schedule
    from vllm_epdp.fuzz.session import Session
    from vllm_epdp.fuzz.targets import target
    from vllm_epdp.harness import tiny_models

    _need_hypothesis()
    started = time.monotonic()
    chosen = target(target_name)
    cache = cache_root()
    model = tiny_models.build("qwen3-moe", cache / "models" / "qwen3-moe")
    limits = _model_limits(Path(model), runner, chosen)
    report = Report(target_name, runner, seed, async_scheduling)
    env = dict(os.environ if env is None else env)
    failing: list[tuple[Schedule | None, list[str]]] = []
    if replay is not None and any(r.n > limits.max_n for r in Schedule.load(replay).requests):
        raise EpdpError(
            f"{replay} asks n > {limits.max_n}, which {runner} cannot run on CPU: replay it with --runner v1"
        )

    session_class = OfflineSession if chosen.offline else Session
    with session_class(chosen, str(model), runner, workdir, env, say, async_scheduling) as session:

        def check(schedule: Schedule) -> None:
            outcome = session.run(schedule)
            report.add(outcome, schedule.digest())
            verdict = "ok" if outcome.ok else "FAIL"
            say(f"[fuzz] schedule {report.schedules} ({schedule.digest()}): {schedule.describe()}: {verdict}")
            if not outcome.ok:
                failing.append((schedule, outcome.problems))
                raise AssertionError("\n".join(outcome.problems))

        if replay is not None:
            with contextlib.suppress(AssertionError):
                check(Schedule.load(replay))
        else:
            database = cache / "fuzz-db" / f"{target_name}-{runner}"
            problem = _draw_schedules(check, limits, examples, seed, database)
            if problem and failing:  # keep the schedule that failed: it is the lead to follow
                failing[-1] = (failing[-1][0], failing[-1][1] + [problem])
            elif problem:
                failing.append((None, [problem]))
        report.restarts = session.restarts
        report.runner_seen = session.runner_seen()
        answered = report.schedules > 0 and not failing
        report.overlapped_steps, async_problems = session.async_seen(answered)

    asked = "on" if async_scheduling else "off"
    if failing:
        schedule, problems = failing[-1]
        entry: dict[str, str | list[str]] = {"problems": problems}
        if schedule is not None:
            path = workdir / f"failure-{target_name}-{runner}-seed{seed}.json"
            schedule.save(path)
            entry["schedule"] = str(path)
            entry["replay"] = f"vllm-epdp fuzz --target {target_name} --runner {runner} --async {asked} --replay {path}"
        report.failures.append(entry)
    if async_problems:  # the schedules ran, but not in the regime asked for
        report.failures.append({"problems": [f"async scheduling {asked} was asked: " + "; ".join(async_problems)]})
    report.wall_s = round(time.monotonic() - started, 1)
    return report


def _need_hypothesis() -> None:
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise EpdpError("vllm-epdp fuzz needs Hypothesis: pip install 'vllm-epdp[fuzz]' (or hypothesis)") from None


def _draw_schedules(
    check: Callable[[Schedule], None], limits: Limits, examples: int, seed: int, database: Path
) -> str | None:
    """Hypothesis draws up to ``examples`` schedules for ``check`` and shrinks
    the first that fails (``check`` keeps the failing ones). Returns what went
    wrong beyond a failing schedule, or None."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    from vllm_epdp.fuzz.strategies import schedules

    run = settings(
        max_examples=examples,
        deadline=None,
        database=DirectoryBasedExampleDatabase(str(database)),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )(hypothesis_seed(seed)(given(schedules(limits))(check)))
    try:
        run()
    except AssertionError:
        pass  # Hypothesis shrank it; the last failing schedule is the smallest
    except Exception as exc:  # e.g. Hypothesis' Flaky: failed once, not again
        return f"{type(exc).__name__}: {exc}"
    return None


def run(args: argparse.Namespace) -> int:
    """The CLI entry (vllm_epdp/cli.py)."""
    import tempfile

    if args.examples < 1:
        raise EpdpError("--examples must be at least 1")
    if args.replay and not Path(args.replay).is_file():
        raise EpdpError(f"--replay {args.replay}: no such file")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vllm-epdp-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Hypothesis reports on stdout; keep stdout for the report itself.
    with contextlib.redirect_stdout(sys.stderr):
        report = fuzz(args.target, args.runner, args.examples, args.seed, workdir,
                      replay=Path(args.replay) if args.replay else None,
                      async_scheduling=args.async_scheduling == "on")  # fmt: skip
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=1))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def format_report(report: Report) -> str:
    lines = [
        f"{report.target} ({report.runner}, async {'on' if report.async_scheduling else 'off'}), "
        f"seed {report.seed}: {report.schedules} schedule(s) "
        f"({report.distinct} distinct), "
        f"{report.requests} requests, {report.aborts} aborted, {report.preemptions} preemption(s), "
        f"{report.divergences} divergence(s), {report.ties} near-tie(s), {report.hangs} hang(s), "
        f"{report.nonfinite} non-finite, "
        f"{report.errors} error(s), {report.restarts} restart(s), {report.wall_s:.0f} s, "
        f"runner seen: {report.runner_seen or 'none'}, {report.overlapped_steps} overlapped step(s)",
    ]
    for f in report.failures:
        lines.append("FAILED: " + "\n  ".join(f["problems"][:20]))
        if "replay" in f:
            lines.append(f"smallest failing schedule: {f['schedule']}\nreplay: {f['replay']}")
    lines.append("VERDICT: " + ("PASS" if report.ok else "FAIL"))
    return "\n".join(lines)
