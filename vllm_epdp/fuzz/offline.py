"""The offline fuzz targets: vLLM's offline DP (one process per DP rank with
VLLM_DP_* set, or torchrun with the external launcher), its engines kept up
across schedules and fed each schedule as waves (vllm_epdp.fuzz.offline_process).

How a schedule reads offline: every request goes to the DP rank it was drawn
(Request.rank), and a gap of ``wave_gap_s`` or more between two requests ends
the wave (what it does to a server's DP wave), so a later request starts the
next one. A rank none of a wave's requests went to is idle for the whole wave.
Arrival times inside a wave, streaming and aborts have no offline meaning.

The verdict is the serving targets' (vllm_epdp.fuzz.verdict): the same DP=1
server answers the same prompts, the collective ledger must agree; a schedule
with no answer within SCHEDULE_TIMEOUT_S is a hang (every process's stack goes
with the report) and the ranks start again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from vllm_epdp import model_runners
from vllm_epdp.diagnostics import ledger
from vllm_epdp.errors import EpdpError
from vllm_epdp.fuzz.client import Answer
from vllm_epdp.fuzz.schedule import WAVE_GAP_S, Schedule
from vllm_epdp.fuzz.session import SessionBase, ledger_problems
from vllm_epdp.fuzz.targets import MAX_MODEL_LEN
from vllm_epdp.fuzz.verdict import Verdict, judge
from vllm_epdp.harness import procs
from vllm_epdp.harness.cpu_host import cpu_env
from vllm_epdp.harness.offline_dp import rank_processes
from vllm_epdp.harness.offline_engine import PROGRESS, EngineSpec

SCHEDULE_TIMEOUT_S = 300.0
START_LIMIT_S = 600.0
POLL_S = 0.2
DEATH_GRACE_S = 5.0


def waves(schedule: Schedule, dp: int, wave_gap_s: float = WAVE_GAP_S) -> list[list[list[dict]]]:
    """``schedule`` as offline waves: waves[w][dp_rank] = that rank's requests
    (id = the request's index in the schedule)."""
    out: list[list[list[dict]]] = []
    last_at = None
    for i, req in sorted(enumerate(schedule.requests), key=lambda item: item[1].at_s):
        if last_at is None or req.at_s - last_at >= wave_gap_s:
            out.append([[] for _ in range(dp)])
        last_at = req.at_s
        rank = (req.rank if req.rank is not None else i) % dp
        out[-1][rank].append({"id": i, "prompt": list(req.prompt), "max_tokens": req.max_tokens, "n": req.n})
    return out


def answer_of(raw: dict | None) -> Answer:
    if raw is None:
        return Answer("error", error="no DP rank answered it")
    logprobs = [[float(x) for x in choice] for choice in raw["logprobs"]]  # "nan"/"inf" come back as floats
    return Answer("ok", raw["choices"], logprobs)


class OfflineSession(SessionBase):
    """A fuzz session on an offline target (the interface of
    vllm_epdp.fuzz.session.Session)."""

    group: procs.ProcGroup | None = None
    job = 0  # the next job's number

    @property
    def rank_dir(self) -> Path:
        return self.workdir / f"target-{self.restarts}"

    def _start_target(self) -> None:
        self.stack.callback(self._stop_ranks)  # once per start; stopping twice does nothing
        t = self.target
        asked = "on" if self.async_scheduling else "off"
        self.say(f"[fuzz] starting {t.name}: DP={t.dp}+TP={t.tp}+EP {t.topology} runner={self.runner} async={asked}")
        d = self.rank_dir
        self.job = 0
        env = model_runners.runner_env(self.runner, cpu_env(self.probe_env(d), t.dp * t.tp, hub_offline=True))
        env.update(VLLM_EPDP_LEDGER=str(d / "ledger"))
        engine = EngineSpec(
            model=self.model,
            dtype="float32",
            tp=t.tp,
            dp=t.dp,
            ep=True,
            launcher="torchrun" if t.topology == "torchrun" else "mp",
            max_model_len=MAX_MODEL_LEN,
            barrier_dir=str(d / "barrier"),
            async_scheduling=self.async_scheduling,
        )
        for sub in ("inbox", "outbox", "barrier", "ledger"):
            # An earlier session in the same workdir left jobs, answers and
            # ledgers here; the new ranks would read them as their own.
            shutil.rmtree(d / sub, ignore_errors=True)
            (d / sub).mkdir(parents=True)
        specs = rank_processes(
            engine,
            {"inbox": str(d / "inbox"), "outbox": str(d / "outbox")},
            env,
            ["-m", "vllm_epdp.fuzz.offline_process"],
            d,
        )
        self.logs = [s.log for s in specs]
        # The ranks live as long as the session; the deadline is only a backstop.
        self.group = procs.ProcGroup(t.name, specs, timeout_s=6 * 3600.0).start()
        # Every torchrun process reports its engine; offline "mp" one per DP rank.
        engines = t.dp * t.tp if engine.launcher == "torchrun" else t.dp
        deadline = time.monotonic() + START_LIMIT_S
        while self._engines_up() < engines:
            if not all(rc is None for rc in self.group.exited().values()):
                raise EpdpError(f"{t.name}: a rank exited during start-up:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise EpdpError(f"{t.name}: engines not up within {START_LIMIT_S:.0f} s:\n{self.group.dump_stacks()}")
            time.sleep(0.5)
        # Every process up now (front-ends, engine cores, workers) lives as
        # long as the session: one that is gone means an engine died, and
        # its front-end may wait for it for good instead of raising.
        self.watched = self.group.watch()

    def _engines_up(self) -> int:
        text = "".join(p.read_text(errors="replace") for p in self.logs if p.is_file())
        return sum(line.startswith(PROGRESS) and '"engine_up"' in line for line in text.splitlines())

    def _log_tail(self) -> str:
        """Each rank's first error (the root cause, before the cascade) and its last lines."""
        from vllm_epdp.harness.log_forensics import first_error, log_tail

        return "\n".join(f"--- {p}\nfirst error: {first_error(p) or 'none'}\n{log_tail(p, 40)}" for p in self.logs)

    def alive(self) -> bool:
        assert self.group is not None  # asked only of started ranks
        return all(rc is None for rc in self.group.exited().values()) and not self.group.died(self.watched)

    def _stop_ranks(self) -> None:
        if self.group is None:
            return
        (self.rank_dir / "inbox" / "stop").touch()
        deadline = time.monotonic() + 30.0
        while not all(rc is not None for rc in self.group.exited().values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.group.close()
        self.group = None

    def retire_target(self) -> None:
        """Stop ranks that hung or died now; the next schedule starts new ones."""
        self._stop_ranks()

    def run(self, schedule: Schedule) -> Verdict:
        if self.group is None or not self.alive():
            self._stop_ranks()
            self.restarts += 1
            self._start_target()
        plan = waves(schedule, self.target.dp)
        d, k = self.rank_dir, self.job
        self.job += 1
        tmp = d / "inbox" / f"{k}.tmp"
        tmp.write_text(json.dumps({"waves": plan}))
        tmp.rename(d / "inbox" / f"{k}.json")
        outs = [d / "outbox" / f"{k}.rank{r}.json" for r in range(self.target.dp)]
        deadline = time.monotonic() + SCHEDULE_TIMEOUT_S
        while not all(p.exists() for p in outs) and self.alive() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if not self.alive():
            time.sleep(DEATH_GRACE_S)  # the ranks that saw their engine die write why
        raw: dict[str, dict] = {}
        failed: list[str] = []  # what the ranks whose engine died said
        for r, p in enumerate(outs):
            if p.exists():
                data = json.loads(p.read_text())
                raw.update(data.get("answers", {}))
                if "error" in data:
                    failed.append(f"DP rank {r}: {data['error']}")
        if all(p.exists() for p in outs) and not failed:
            answers = [answer_of(raw.get(str(i))) for i in range(len(schedule.requests))]
            reference = self.reference.answers_for(schedule.requests)
            return judge(schedule, answers, reference, ledger_problems(d / "ledger"), tops=self.reference.tops)
        hung = not failed and self.alive()
        if hung:
            why = f"no answer within {SCHEDULE_TIMEOUT_S:.0f} s"
        else:
            why = "; ".join(failed) or "a process of the DP group died (its log says why)"
        answers = [
            answer_of(raw[str(i)]) if str(i) in raw else Answer("timeout" if hung else "error", error=why)
            for i in range(len(schedule.requests))
        ]
        # Only what came back is compared with DP=1 (nothing: no reference started).
        reference = self.reference.answers_for(r for i, r in enumerate(schedule.requests) if str(i) in raw)
        outcome = judge(schedule, answers, reference, [], tops=self.reference.tops)
        # Where the ranks' collectives parted, if they did: the cause of most
        # deaths and hangs of a DP group, often steps before the symptom.
        outcome.problems += [f"ledger: {p}" for p in ledger.compare(d / "ledger")]
        if hung:
            assert self.group is not None  # hung: the ranks are alive
            outcome.problems.append("stacks of every rank:\n" + self.group.dump_stacks())
        else:
            outcome.problems.append("logs of the ranks:\n" + self._log_tail())
        self.retire_target()  # a hung or broken DP group runs nothing more
        return outcome
