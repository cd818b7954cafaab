"""Judge one fuzzed schedule: what a correct DP x EP server must have done.

Every request that was not aborted came back complete (``max_tokens`` tokens,
``n`` choices: ignore_eos is on) and equal, token for token, to what a
single-rank (DP=1) server answers for the same prompt (greedy, fp32), up to a
near-tie: where DP=1's two best tokens are within TIE_LOGPROB of each other
and the target picked the other one, the answers may part there and are
compared no further (a tie, counted, not a problem); an aborted request's
tokens so far are a prefix of that answer; no logprob is NaN or infinite; no
request timed out (a hang: the server's stacks go with the report); the
collective ledger agrees for every group once the engines are quiet.
"""

from __future__ import annotations

import dataclasses
import math

from vllm_epdp.fuzz.client import Answer
from vllm_epdp.fuzz.schedule import Schedule

# How close DP=1's two best logprobs must be for a different pick to be a
# tie, not a divergence. fp32 logits of one position differ in the last bits
# between a decode step and the prefill that recomputes a preempted request
# (measured: 722 over 632 by 9.5e-7 when decoded, 632 over 722 by 2.9e-6 when
# prefilled; DP=1 with the same small KV cache parts there just as DP=2 + EP
# does). 1e-4 is over 30x that noise, and far below what a real fault does.
TIE_LOGPROB = 1e-4


def near_tie(top: dict[int, float], token: int) -> bool:
    """``token`` is within TIE_LOGPROB of the best of ``top`` (one position's
    {token id: logprob}) and is not the best itself."""
    if len(top) < 2 or token not in top:
        return False
    best = max(top.values())
    return top[token] >= best - TIE_LOGPROB and top[token] != best


@dataclasses.dataclass(kw_only=True)
class Counts:
    """What a schedule (Verdict) or a whole fuzz run (fuzz.Report) saw."""

    requests: int = 0
    aborts: int = 0
    preemptions: int = 0
    divergences: int = 0
    ties: int = 0  # parted from DP=1 at a near-tie (see TIE_LOGPROB): allowed
    hangs: int = 0
    nonfinite: int = 0
    errors: int = 0

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Counts)}

    def add(self, other: Counts) -> None:
        for key, value in other.counts().items():
            setattr(self, key, getattr(self, key) + value)


@dataclasses.dataclass
class Verdict(Counts):
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(
    schedule: Schedule,
    answers: list[Answer],
    reference: dict[tuple, list[int]],
    ledger_problems: list[str],
    preemptions: int = 0,
    tops: dict[tuple, list[dict[int, float]]] | None = None,
) -> Verdict:
    """``reference``: DP=1's tokens per Request.key(); ``tops``: its most
    likely tokens per position, which allow a tie (without them, none is)."""
    out = Verdict([], requests=len(schedule.requests), preemptions=preemptions)
    for i, (req, ans) in enumerate(zip(schedule.requests, answers)):
        where = f"request {i} (prompt {len(req.prompt)} tokens, max_tokens {req.max_tokens}, n {req.n})"
        want = reference.get(req.key())
        if ans.status == "timeout":
            out.hangs += 1
            out.problems.append(f"{where}: HANG: {ans.error}")
            continue
        if ans.status == "error":
            out.errors += 1
            out.problems.append(f"{where}: the server failed it: {ans.error}")
            continue
        aborted = ans.status == "aborted"
        out.aborts += aborted
        bad = sum(not math.isfinite(x) for lp in ans.logprobs for x in lp)
        if bad:
            out.nonfinite += bad
            out.problems.append(f"{where}: {bad} non-finite logprob(s)")
        if not aborted and len(ans.choices) != req.n:
            out.problems.append(f"{where}: {len(ans.choices)} choice(s) came back, {req.n} asked for")
        for c, tokens in enumerate(ans.choices):
            if not aborted and len(tokens) != req.max_tokens:
                out.problems.append(f"{where}: choice {c} has {len(tokens)} tokens, {req.max_tokens} asked for")
            if want is not None and tokens != want[: len(tokens)]:
                first = next(k for k, (a, b) in enumerate(zip(tokens, want)) if a != b)
                top = (tops or {}).get(req.key(), [])
                if first < len(top) and near_tie(top[first], tokens[first]):
                    out.ties += 1
                    continue
                out.divergences += 1
                out.problems.append(
                    f"{where}: choice {c} differs from DP=1 at token {first}: {tokens[first]} vs {want[first]}"
                )
    out.problems += [f"collective ledger: {p}" for p in ledger_problems]
    return out
