"""Patch 0007: VLLM_MOE_ALLGATHER_BARRIER on vLLM's real AgRs MoE all2all.

One dispatch_router_logits + dispatch + combine per scenario, DP = 2 with EP
over gloo, uneven token counts (one rank with none); the real
torch.distributed.barrier is wrapped to count its calls.
"""

from __future__ import annotations

from pathlib import Path

from gloo_ranks import assert_all_ok, describe, run_ranks

RANK_ALL2ALL = str(Path(__file__).parent / "rank_all2all.py")

# (setting, platform faked as XPU, barriers expected for 3 MoE collectives)
SCENARIOS = [
    ("1", False, 3),
    ("0", False, 0),
    (None, False, 0),   # default "auto" on CPU: off
    ("auto", False, 0),
    ("auto", True, 3),  # "auto" on XPU: on
    ("0", True, 0),
]


def _run(env, scenarios):
    results = run_ranks(f"{RANK_ALL2ALL}:agrs_barriers", 2, env=env,
                        args={"scenarios": [[s, x] for s, x, _ in scenarios]},
                        timeout_s=240)
    return results


def test_barrier_switch_without_0007_has_none(series_without):
    """Without the patch, asking for the barrier does nothing."""
    results = _run(series_without("0007"), [("1", False, 3)])
    assert_all_ok(results)
    for r in results:
        assert "barriers 1 False: 0" in r.stdout, describe(results)


def test_barrier_switch(vllm_patched):
    results = _run(vllm_patched, SCENARIOS)
    assert_all_ok(results)
    for r in results:
        for setting, fake_xpu, expected in SCENARIOS:
            line = f"barriers {setting} {fake_xpu}: {expected}"
            assert line in r.stdout, f"missing '{line}':\n{describe(results)}\n{r.stdout}"
