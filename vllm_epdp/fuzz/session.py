"""A fuzz session: the target server and its DP=1 reference kept up across
schedules (each schedule then costs seconds, not an engine start), one
schedule run and judged at a time, the target restarted after a hang."""

from __future__ import annotations

import concurrent.futures
import contextlib
from pathlib import Path

from vllm_epdp import ledger, runners, serving
from vllm_epdp.fuzz import client
from vllm_epdp.fuzz.schedule import Request, Schedule
from vllm_epdp.fuzz.targets import Target
from vllm_epdp.fuzz.verdict import Outcome, judge

REQUEST_TIMEOUT_S = 120.0


class Reference:
    """The DP=1 server of a target (same model and runner, no EP) and the
    greedy answers it gave, asked once per prompt and max_tokens."""

    def __init__(self, server: serving.Server, model: str):
        self.server, self.model = server, model
        self.answers: dict[tuple, list[int]] = {}

    def answers_for(self, schedule: Schedule) -> dict[tuple, list[int]]:
        todo = {r.key(): r for r in schedule.requests if r.key() not in self.answers}

        def ask(req):
            plain = Request(0.0, req.prompt, req.max_tokens)  # n=1, not streamed, never aborted
            return req.key(), client.send(self.server.url, self.model, plain, REQUEST_TIMEOUT_S)

        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(todo)))) as pool:
            for key, answer in pool.map(ask, todo.values()):
                if answer.status == "ok" and answer.choices:
                    self.answers[key] = answer.choices[0]
        return self.answers


def ledger_problems(ledger_dir: Path) -> list[str]:
    """Where the ledgers of ``ledger_dir`` disagree, once the engines are quiet."""
    if not ledger.wait_quiet(ledger_dir, quiet_s=2.0):
        return ["the engines did not go quiet within 60 s after the last answer"]
    return ledger.compare(ledger_dir)


def start_reference(target: Target, model: str, runner: str, workdir: Path, env: dict[str, str], stack, say):
    say(f"[fuzz] starting the DP=1 reference ({runner})")
    served = serving.serve(target.reference(model, runner), workdir / "reference", env, ledger=False)
    return Reference(stack.enter_context(served), model)


class Session:
    def __init__(self, target: Target, model: str, runner: str, workdir: Path, env: dict[str, str], say=print):
        self.target, self.model, self.runner = target, model, runner
        self.workdir, self.env, self.say = workdir, env, say
        self.stack = contextlib.ExitStack()
        self.server: serving.Server | None = None
        self.reference: Reference | None = None
        self.restarts = 0

    def __enter__(self) -> Session:
        try:
            self.reference = start_reference(
                self.target, self.model, self.runner, self.workdir, self.env, self.stack, self.say
            )
            self._start_target()
        except BaseException:
            self.stack.close()  # no reference server left up by a target that could not start
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def _start_target(self) -> None:
        dep = self.target.deployment(self.model, self.runner)
        self.say(f"[fuzz] starting {self.target.name}: {dep.describe()}")
        self.target_stack = contextlib.ExitStack()
        self.stack.callback(self.target_stack.close)
        workdir = self.workdir / f"target-{self.restarts}"
        self.server = self.target_stack.enter_context(serving.serve(dep, workdir, self.env))
        self.logs = self.server.logs

    def retire_target(self) -> None:
        """Stop a target that hung or died now; the next schedule starts a new
        one (none is started for a session that ends here)."""
        self.target_stack.close()
        self.server = None

    def runner_seen(self) -> str | None:
        return runners.runner_in_logs(self.logs)

    def run(self, schedule: Schedule) -> Outcome:
        if self.server is None or not self.server.alive() or not serving.healthy(self.server.url):
            if self.server is not None:
                self.retire_target()
            self.restarts += 1
            self._start_target()
        before = client.preemptions(self.server.url)
        answers = client.run(self.server.url, self.model, schedule, REQUEST_TIMEOUT_S)
        hung = any(a.status == "timeout" for a in answers)
        stacks = self.server.stacks() if hung else ""
        problems = []
        if not hung and self.server.ledger_dir is not None:
            problems = ledger_problems(self.server.ledger_dir)
        preempted = client.preemptions(self.server.url) - before
        outcome = judge(schedule, answers, self.reference.answers_for(schedule), problems, max(0, preempted))
        if hung:
            outcome.problems.append("stacks of every server process:\n" + stacks)
            self.retire_target()  # a hung server serves nothing more
        return outcome
