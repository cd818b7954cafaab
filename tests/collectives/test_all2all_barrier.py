"""Patch 0007: VLLM_MOE_ALLGATHER_BARRIER on vLLM's real AgRs MoE all2all.

One dispatch_router_logits + dispatch + combine per scenario, DP = 2 with EP
over gloo, uneven token counts (one rank with none); the real
torch.distributed.barrier is wrapped to count its calls.
"""

from __future__ import annotations

import re
from pathlib import Path

from vllm_epdp.harness.ranks import run_ranks

WORKER = str(Path(__file__).parent / "all2all_worker.py")

# (setting, platform faked as XPU, barriers expected for 3 MoE collectives)
SCENARIOS = [
    ("1", False, 3),
    ("0", False, 0),
    (None, False, 0),  # default "auto" on CPU: off
    ("auto", False, 0),
    ("auto", True, 3),  # "auto" on XPU: on
    ("0", True, 0),
]


def _run(env, scenarios, workdir):
    run = run_ranks(
        f"{WORKER}:agrs_barriers",
        2,
        workdir,
        env=env,
        kwargs={"scenarios": [[s, x] for s, x, _ in scenarios]},
        timeout_s=240,
    )
    assert run.ok, run.describe()
    return run


def barrier_counts(run) -> set[tuple[str, str]]:
    """{(scenario, count)} seen by every rank: 'barriers <setting> <xpu>: N' lines."""
    seen = [set(re.findall(r"^barriers (\S+ \S+): (\d+)$", output, re.M)) for output in run.outputs]
    assert seen and all(s == seen[0] for s in seen), run.describe()
    return seen[0]


def expected_counts() -> set[tuple[str, str]]:
    return {(f"{setting} {fake_xpu}", str(n)) for setting, fake_xpu, n in SCENARIOS}


def test_barrier_switch_without_0007_misses_exactly_the_barriers(series_without, tmp_path):
    """The expectations of test_barrier_switch, on the series without 0007:
    every scenario that expects barriers gets none, the others agree; so that
    test fails without the patch, and for the right reason. (If upstream adds
    barriers of its own, this fails too: time to revisit 0007.)"""
    run = _run(series_without("0007"), SCENARIOS, tmp_path)
    got = barrier_counts(run)
    assert got == {(case, "0") for case, _ in expected_counts()}, run.describe()
    wrong = {case for case, n in expected_counts() - got}
    assert wrong == {f"{s} {x}" for s, x, n in SCENARIOS if n > 0}


def test_barrier_switch(vllm_patched, tmp_path):
    run = _run(vllm_patched, SCENARIOS, tmp_path)
    assert barrier_counts(run) == expected_counts(), run.describe()
