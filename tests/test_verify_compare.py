"""verify's comparison rules and scenario selection (fast: no vLLM)."""

import math

import pytest

from vllm_epdp.errors import EpdpError
from vllm_epdp.verify import compare, plan
from vllm_epdp.verify.scenarios import ALL_SCENARIOS


def seq(tokens, top=None, lp=-1.0):
    """A result: each position lists its token at ``lp`` plus extra top-k."""
    logprobs = []
    for i, t in enumerate(tokens):
        pos = {str(t): lp}
        for other, value in (top or {}).get(i, {}).items():
            pos[str(other)] = value
        logprobs.append(pos)
    return {"token_ids": list(tokens), "logprobs": logprobs}


def test_exact_identical_passes():
    v = compare.compare_runs({"a": seq([1, 2, 3])}, {"a": seq([1, 2, 3])}, "exact")
    assert v.ok and v.tokens_matched == 3 and v.tokens_total == 3 and v.max_diff == 0


def test_exact_token_difference_fails_and_says_where():
    v = compare.compare_runs({"a": seq([1, 2, 3])}, {"a": seq([1, 9, 3])}, "exact")
    assert not v.ok and v.tokens_matched == 1
    assert "token 1 differs: reference 2, target 9" in v.problems[0]


def test_exact_logprob_tolerance():
    ref, tgt = seq([1, 2], lp=-1.0), seq([1, 2], lp=-1.0 + 5e-4)
    assert compare.compare_runs({"a": ref}, {"a": tgt}, "exact", tolerance=1e-3).ok
    v = compare.compare_runs({"a": ref}, {"a": tgt}, "exact", tolerance=1e-4)
    assert not v.ok and "tolerance" in v.problems[0]
    assert v.max_diff == pytest.approx(5e-4)


def test_nan_logprob_fails_even_when_tokens_match():
    bad = seq([1, 2])
    bad["logprobs"][1]["2"] = "nan"  # how rank.py writes a NaN
    for mode in ("exact", "close"):
        v = compare.compare_runs({"a": seq([1, 2])}, {"a": bad}, mode)
        assert not v.ok and v.nonfinite == 1 and "non-finite" in v.problems[0]


def test_close_accepts_divergence_inside_each_others_topk_then_stops():
    ref = seq([1, 2, 3, 4], top={1: {7: -1.1}})
    tgt = seq([1, 7, 8, 8], top={1: {2: -1.05}})
    v = compare.compare_runs({"a": ref}, {"a": tgt}, "close")
    assert v.ok, v.problems
    assert v.tokens_matched == 1  # compared up to the divergence, then stopped


def test_close_rejects_token_outside_topk():
    ref = seq([1, 2, 3], top={1: {7: -1.1}})
    tgt = seq([1, 7, 3])  # target's top-k lacks the reference token 2
    v = compare.compare_runs({"a": ref}, {"a": tgt}, "close")
    assert not v.ok and "not in the other's top" in v.problems[0]


def test_exact_rejects_what_close_accepts():
    ref = seq([1, 2], top={1: {7: -1.1}})
    tgt = seq([1, 7], top={1: {2: -1.05}})
    assert not compare.compare_runs({"a": ref}, {"a": tgt}, "exact").ok


def test_missing_extra_and_short_requests_fail():
    v = compare.compare_runs({"a": seq([1]), "b": seq([2])}, {"a": seq([1]), "c": seq([3])}, "exact")
    assert not v.ok
    assert any("b: missing" in p for p in v.problems)
    assert any("c: not in the reference" in p for p in v.problems)
    v = compare.compare_runs({"a": seq([1, 2])}, {"a": seq([1])}, "exact")
    assert not v.ok and "length differs" in v.problems[0]


def test_no_requests_is_not_a_pass():
    assert not compare.compare_runs({}, {}, "exact").ok


def test_infinite_diff_reported():
    bad = seq([1])
    bad["logprobs"][0]["1"] = "-inf"
    v = compare.compare_runs({"a": seq([1])}, {"a": bad}, "exact")
    assert not v.ok and math.isinf(v.max_diff)


# ---- scenarios and selection
def test_scenarios_fold_onto_ranks():
    uneven = ALL_SCENARIOS["uneven"]
    two = uneven.for_ranks(2)
    assert [len(w[0]) for w in two] == [7, 1]
    one = uneven.for_ranks(1)
    assert len(one[0][0]) == 8  # the reference gets every request, same wave
    idle = ALL_SCENARIOS["idle-rank"].for_ranks(2)
    assert idle[1] == [] and len(idle[0][0]) == 1
    ids = [r.id for s in ALL_SCENARIOS.values() for r in s.requests()]
    assert len(ids) == len(set(ids))


def test_long_scenario_has_hundreds_of_decode_steps():
    longest = max(r.max_tokens for r in ALL_SCENARIOS["long"].requests())
    assert longest >= 300


def _models():
    return {
        "qwen3-moe": plan.Model("qwen3-moe", "/m", "float32", "exact"),
        "qwen3-next": plan.Model("qwen3-next", "/n", "bfloat16", "close"),
    }


def test_default_selection_covers_required_targets():
    p = plan.select(_models(), plan.embedded_configs(), [], False)
    names = [c.name for c, _ in p.runs()]
    assert names == ["ref-moe", "ref-next", "dp2-ep", "tp2-ep", "next-dp2-ep"]
    assert p.selected["dp2-ep"] == ["even", "uneven"]
    assert p.selected["ref-moe"] == ["even", "uneven"]


def test_all_adds_idle_long_and_serve_in_engine_order():
    p = plan.select(_models(), plan.embedded_configs(), [], True)
    assert p.selected["dp2-ep"] == ["idle-rank", "even", "uneven", "long"]
    assert p.selected["serve-dp2-ep"] == ["serve-one", "serve"]
    assert "serve" in p.selected["ref-moe"] and "long" in p.selected["ref-moe"]


def test_pattern_selection_and_unknown_name():
    p = plan.select(_models(), plan.embedded_configs(), ["dp2-ep/uneven"], False)
    assert [c.name for c, _ in p.runs()] == ["ref-moe", "dp2-ep"]
    p = plan.select(_models(), plan.embedded_configs(), ["idle-rank"], False)
    assert {c.name for c, _ in p.runs()} == {"ref-moe", "ref-next", "dp2-ep", "next-dp2-ep"}
    with pytest.raises(EpdpError, match="no scenario matches nope"):
        plan.select(_models(), plan.embedded_configs(), ["nope"], False)
