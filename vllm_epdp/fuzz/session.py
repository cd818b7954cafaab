"""A fuzz session: the target server and its DP=1 reference kept up across
schedules (each schedule then costs seconds, not an engine start), one
schedule run and judged at a time, the target restarted after a hang."""

from __future__ import annotations

import concurrent.futures
import contextlib
from pathlib import Path

from vllm_epdp import ledger, serving
from vllm_epdp.fuzz import client
from vllm_epdp.fuzz.schedule import Schedule
from vllm_epdp.fuzz.targets import Target
from vllm_epdp.fuzz.verdict import Outcome, judge

REQUEST_TIMEOUT_S = 120.0


class Session:
    def __init__(self, target: Target, model: str, runner: str, workdir: Path, env: dict[str, str], say=print):
        self.target, self.model, self.runner = target, model, runner
        self.workdir, self.env, self.say = workdir, env, say
        self.stack = contextlib.ExitStack()
        self.server: serving.Server | None = None
        self.reference: serving.Server | None = None
        self.answers: dict[tuple, list[int]] = {}  # the reference's greedy tokens
        self.restarts = 0

    def __enter__(self) -> Session:
        self.say(f"[fuzz] starting the DP=1 reference ({self.runner})")
        ref = self.target.reference(self.model, self.runner)
        served = serving.serve(ref, self.workdir / "reference", self.env, ledger=False)
        self.reference = self.stack.enter_context(served)
        self._start_target()
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

    def restart_target(self) -> None:
        self.target_stack.close()
        self.restarts += 1
        self._start_target()

    def _reference_answers(self, schedule: Schedule) -> None:
        todo = {r.key(): r for r in schedule.requests if r.key() not in self.answers}

        def ask(req):
            plain = type(req)(0.0, req.prompt, req.max_tokens)  # n=1, not streamed, never aborted
            return req.key(), client.send(self.reference.url, self.model, plain, REQUEST_TIMEOUT_S)

        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(todo)))) as pool:
            for key, answer in pool.map(ask, todo.values()):
                if answer.status == "ok" and answer.choices:
                    self.answers[key] = answer.choices[0]

    def run(self, schedule: Schedule) -> Outcome:
        if not self.server.alive() or not serving.healthy(self.server.url):
            self.restart_target()
        before = client.preemptions(self.server.url)
        answers = client.run(self.server.url, self.model, schedule, REQUEST_TIMEOUT_S)
        hung = any(a.status == "timeout" for a in answers)
        stacks = self.server.stacks() if hung else ""
        problems = []
        if not hung and self.server.ledger_dir is not None:
            if ledger.wait_quiet(self.server.ledger_dir, quiet_s=2.0):
                problems = ledger.compare(self.server.ledger_dir)
            else:
                problems = ["the engines did not go quiet within 60 s after the last answer"]
        preempted = client.preemptions(self.server.url) - before
        self._reference_answers(schedule)
        outcome = judge(schedule, answers, self.answers, problems, max(0, preempted))
        if hung:
            outcome.problems.append("stacks of every server process:\n" + stacks)
            self.restart_target()  # a hung server serves nothing more
        return outcome
