"""Compare a target run's outputs with the DP=1 reference, request by request.

Two criteria, picked by the model's dtype:

- ``exact`` (fp32): the greedy tokens must be identical, and at every position
  the logprob of every token that both runs list in their top-k must agree
  within ``tolerance``. Measured on the tiny fp32 Qwen3-MoE (verify's default
  run, CPU): DP=2+EP and TP=2+EP differ from DP=1 by at most ~1e-6; the default
  tolerance 1e-3 leaves room for other batch shapes and kernels, and is far
  below what a wrong expert or a NaN row produces.
- ``close`` (bf16 and other low precision; vLLM's check_logprobs_close idea):
  walk the sequences together; while the tokens agree, record the logprob
  difference; at the first position where they differ, each run's token must be
  in the other's top-k logprobs, and the rest of that sequence is not compared
  (after one different token the inputs differ).

Either way any non-finite logprob fails, and a request missing from either
side fails.
"""

from __future__ import annotations

import dataclasses
import math

DEFAULT_TOLERANCE = 1e-3


@dataclasses.dataclass
class RequestVerdict:
    id: str
    ok: bool
    compared: int  # positions compared
    total: int  # reference length
    max_diff: float
    problem: str = ""


@dataclasses.dataclass
class Verdict:
    ok: bool
    requests: list[RequestVerdict]
    tokens_matched: int
    tokens_total: int
    max_diff: float
    nonfinite: int  # non-finite logprobs seen (either side)
    problems: list[str]


def _as_float(value: float | str) -> float:
    # rank.py writes non-finite logprobs as strings ("nan", "inf", "-inf").
    return float(value)


def _top(position: dict) -> dict[int, float]:
    return {int(tok): _as_float(lp) for tok, lp in position.items()}


def _nonfinite(result: dict) -> int:
    return sum(
        1 for position in result.get("logprobs", []) for lp in position.values() if not math.isfinite(_as_float(lp))
    )


def compare_request(rid: str, ref: dict, tgt: dict, mode: str, tolerance: float = DEFAULT_TOLERANCE) -> RequestVerdict:
    ref_tokens, tgt_tokens = ref["token_ids"], tgt["token_ids"]
    total = len(ref_tokens)
    bad_ref, bad_tgt = _nonfinite(ref), _nonfinite(tgt)
    if bad_ref or bad_tgt:
        return RequestVerdict(
            rid,
            False,
            0,
            total,
            math.inf,
            f"non-finite logprobs: {bad_ref} in reference, {bad_tgt} in target",
        )
    max_diff, compared = 0.0, 0
    ref_lps, tgt_lps = ref.get("logprobs") or [], tgt.get("logprobs") or []
    for pos in range(max(len(ref_tokens), len(tgt_tokens))):
        if pos >= len(ref_tokens) or pos >= len(tgt_tokens):
            return RequestVerdict(
                rid,
                False,
                compared,
                total,
                max_diff,
                f"length differs: reference {len(ref_tokens)} tokens, target {len(tgt_tokens)}",
            )
        a, b = ref_tokens[pos], tgt_tokens[pos]
        top_a = _top(ref_lps[pos]) if pos < len(ref_lps) else {}
        top_b = _top(tgt_lps[pos]) if pos < len(tgt_lps) else {}
        if a != b:
            if mode == "exact":
                return RequestVerdict(
                    rid,
                    False,
                    compared,
                    total,
                    max_diff,
                    f"token {pos} differs: reference {a}, target {b}",
                )
            if a in top_b and b in top_a:
                # Close enough: a near tie resolved differently. Stop here.
                return RequestVerdict(rid, True, compared, total, max_diff)
            return RequestVerdict(
                rid,
                False,
                compared,
                total,
                max_diff,
                f"token {pos} differs and is not in the other's top-{max(len(top_a), len(top_b)) or '?'}:"
                f" reference {a} ({_fmt(top_a.get(a))} vs target's {_fmt(top_b.get(a))}),"
                f" target {b} ({_fmt(top_b.get(b))} vs reference's {_fmt(top_a.get(b))})",
            )
        for tok in top_a.keys() & top_b.keys():
            max_diff = max(max_diff, abs(top_a[tok] - top_b[tok]))
        compared += 1
        if mode == "exact" and max_diff > tolerance:
            return RequestVerdict(
                rid,
                False,
                compared,
                total,
                max_diff,
                f"logprob at token {pos} differs by {max_diff:.3g} > tolerance {tolerance:g}",
            )
    return RequestVerdict(rid, True, compared, total, max_diff)


def _fmt(x: float | None) -> str:
    return "absent" if x is None else f"{x:.3f}"


def compare_runs(
    reference: dict[str, dict], target: dict[str, dict], mode: str, tolerance: float = DEFAULT_TOLERANCE
) -> Verdict:
    """``reference``/``target``: {request id: {"token_ids", "logprobs"}}; the
    reference decides which requests must be there."""
    verdicts, problems = [], []
    nonfinite = sum(_nonfinite(r) for r in target.values()) + sum(_nonfinite(r) for r in reference.values())
    for rid in sorted(reference):
        if rid not in target:
            verdicts.append(RequestVerdict(rid, False, 0, len(reference[rid]["token_ids"]), 0.0, "missing in target"))
        else:
            verdicts.append(compare_request(rid, reference[rid], target[rid], mode, tolerance))
    for rid in sorted(set(target) - set(reference)):
        verdicts.append(RequestVerdict(rid, False, 0, 0, 0.0, "not in the reference"))
    for v in verdicts:
        if not v.ok:
            problems.append(f"{v.id}: {v.problem}")
    finite_diffs = [v.max_diff for v in verdicts if math.isfinite(v.max_diff)]
    return Verdict(
        ok=all(v.ok for v in verdicts) and nonfinite == 0 and bool(verdicts),
        requests=verdicts,
        tokens_matched=sum(v.compared for v in verdicts),
        tokens_total=sum(v.total for v in verdicts),
        max_diff=max(finite_diffs, default=0.0) if all(math.isfinite(v.max_diff) for v in verdicts) else math.inf,
        nonfinite=nonfinite,
        problems=problems if verdicts else ["no requests to compare"],
    )
