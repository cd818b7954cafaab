"""A fuzz session: the target server and its DP=1 reference kept up across
schedules (each schedule then costs seconds, not an engine start), one
schedule run and judged at a time, the target restarted after a hang."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_epdp import model_runners
from vllm_epdp.diagnostics import async_probe, ledger
from vllm_epdp.fuzz import client
from vllm_epdp.fuzz.schedule import Request, Schedule
from vllm_epdp.fuzz.targets import Target
from vllm_epdp.fuzz.verdict import Verdict, judge
from vllm_epdp.harness import serving

if TYPE_CHECKING:
    from typing_extensions import Self

REQUEST_TIMEOUT_S = 120.0


class Reference:
    """The DP=1 server of a target (same model and runner, no EP), started on
    the first question (a target that fails at once needs none), and the
    greedy answers it gave, asked once per prompt and max_tokens."""

    def __init__(self, session: SessionBase) -> None:
        self.session = session
        self.deployment = session.target.reference(session.model, session.runner)
        self.server: serving.Server | None = None
        self.answers: dict[tuple, list[int]] = {}
        self.tops: dict[tuple, list[dict[int, float]]] = {}  # per position, the two most likely tokens

    def answers_for(self, requests: Iterable[Request]) -> dict[tuple, list[int]]:
        todo = {r.key(): r for r in requests if r.key() not in self.answers}
        if todo and self.server is None:
            session = self.session
            session.say(f"[fuzz] starting the DP=1 reference ({self.deployment.runner})")
            served = serving.serve(self.deployment, session.workdir / "reference", session.env, ledger=False)
            self.server = session.stack.enter_context(served)

        server = self.server

        def ask(req: Request) -> tuple[tuple, client.Answer]:
            assert server is not None  # started above whenever there is a request to ask
            plain = Request(0.0, req.prompt, req.max_tokens)  # n=1, not streamed, never aborted
            return req.key(), client.send(server.url, self.session.model, plain, REQUEST_TIMEOUT_S, top=2)

        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(todo)))) as pool:
            for key, answer in pool.map(ask, todo.values()):
                if answer.status == "ok" and answer.choices:
                    self.answers[key] = answer.choices[0]
                    self.tops[key] = answer.top[0] if answer.top else []
        return self.answers


def ledger_problems(ledger_dir: Path) -> list[str]:
    """Where the ledgers of ``ledger_dir`` disagree, once the engines are quiet."""
    if not ledger.wait_quiet(ledger_dir, quiet_s=2.0):
        return ["the engines did not go quiet within 60 s after the last answer"]
    return ledger.compare(ledger_dir)


class SessionBase:
    """What every fuzz session does: a DP=1 reference (started on the first
    question), a target started on entering and on the first schedule after
    it hung or died, everything stopped on leaving. Subclasses start, retire
    and run their kind of target."""

    def __init__(
        self,
        target: Target,
        model: str,
        runner: str,
        workdir: Path,
        env: dict[str, str],
        say: Callable[[str], None] = print,
        async_scheduling: bool = True,
    ) -> None:
        self.target, self.model, self.runner = target, model, runner
        self.workdir, self.env, self.say = workdir, env, say
        self.async_scheduling = async_scheduling
        self.stack = contextlib.ExitStack()
        self.reference = Reference(self)
        self.restarts = 0
        self.logs: list[Path] = []  # the target's logs, for runner_seen()
        self.probe_dirs: list[Path] = []  # the async probe's directory of every target start

    def __enter__(self) -> Self:
        try:
            self._start_target()
        except BaseException:
            self.stack.close()  # nothing left up by a target that could not start
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def runner_seen(self) -> str | None:
        """The model runner the target's logs show ("V1", "V2"), not the one asked for."""
        return model_runners.runner_in_logs(self.logs)

    def probe_env(self, target_dir: Path) -> dict[str, str]:
        """The session's environment with the async probe on for one target
        start (its engine cores count their steps in ``target_dir``)."""
        probe = target_dir / "async-probe"
        for stale in probe.glob("engine-*.json"):  # an earlier session in the same workdir
            stale.unlink()
        self.probe_dirs.append(probe)
        return dict(self.env, VLLM_EPDP_ASYNC_PROBE=str(probe))

    def async_seen(self, answered: bool) -> tuple[int, list[str]]:
        """Steps the target's engine cores overlapped (scheduled while another
        batch ran), and why they did not run as asked (empty: they did).
        ``answered``: schedules passed, so engine cores must have stepped."""
        started = [d for d in self.probe_dirs if async_probe.read(d)]
        if not started:
            if answered:  # answers came, yet no engine core was counted: the regime is unknown
                return 0, [f"no engine core stepped with the async probe on ({', '.join(map(str, self.probe_dirs))})"]
            return 0, []  # no target engine ever stepped (a failed start says why)
        problems = []
        for d in started:
            problems += async_probe.problems(d, self.async_scheduling)
        overlapped = sum(e["overlapped"] for d in started for e in async_probe.read(d))
        return overlapped, problems

    def _start_target(self) -> None:
        raise NotImplementedError


class Session(SessionBase):
    """A serving target: a vLLM server."""

    server: serving.Server | None = None

    def _start_target(self) -> None:
        dep = self.target.deployment(self.model, self.runner, self.async_scheduling)
        self.say(f"[fuzz] starting {self.target.name}: {dep.describe()}")
        self.target_stack = contextlib.ExitStack()
        self.stack.callback(self.target_stack.close)
        workdir = self.workdir / f"target-{self.restarts}"
        served = serving.serve(dep, workdir, self.probe_env(workdir))
        self.server = self.target_stack.enter_context(served)
        self.logs = self.server.logs

    def retire_target(self) -> None:
        """Stop a target that hung or died now; the next schedule starts a new
        one (none is started for a session that ends here)."""
        self.target_stack.close()
        self.server = None

    def run(self, schedule: Schedule) -> Verdict:
        if self.server is None or not self.server.alive() or not serving.healthy(self.server.url):
            if self.server is not None:
                self.retire_target()
            self.restarts += 1
            self._start_target()
        assert self.server is not None  # _start_target set it
        before = client.preemptions(self.server.url)
        answers = client.run(self.server.url, self.model, schedule, REQUEST_TIMEOUT_S)
        hung = any(a.status == "timeout" for a in answers)
        stacks = self.server.stacks() if hung else ""
        problems = []
        if not hung and self.server.ledger_dir is not None:
            problems = ledger_problems(self.server.ledger_dir)
        preempted = client.preemptions(self.server.url) - before
        reference = self.reference.answers_for(schedule.requests)
        outcome = judge(schedule, answers, reference, problems, max(0, preempted), self.reference.tops)
        if hung:
            outcome.problems.append("stacks of every server process:\n" + stacks)
            self.retire_target()  # a hung server serves nothing more
        return outcome
