"""Patch 0016: offline DP=2 + EP under torchrun (external_launcher) with async
scheduling. The scheduler schedules one step ahead, so a DP rank whose last
tokens are all in flight schedules a step of 0 tokens while its peer still
decodes. Model Runner V2 returned from that step before its DP sync, and the
rank's next collective (LLMEngine's has_unfinished all-reduce, same group)
met the peer's DP sync: gloo aborts with a collective mismatch (found by the
async fuzz campaign, offline-torchrun-dp2-ep on V2). With 0016 the rank runs
a dummy forward there, as V1 already does under external_launcher.

A fixed schedule makes it certain, whatever the machine's speed: rank 0
answers 2 tokens while rank 1 decodes 24, so rank 0 has its 0-token step
while rank 1 is mid-answer. V1 runs the same schedule on the series (it
needs no patch: its runner has the external_launcher branch)."""

from __future__ import annotations

import pytest

from vllm_epdp import fuzz
from vllm_epdp.fuzz.schedule import Request, Schedule
from vllm_epdp.patching.overlay import env_with
from vllm_epdp.patching.variants import overlay_without

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TARGET = "offline-torchrun-dp2-ep"
SHORT_BESIDE_LONG = Schedule((Request(0.0, (5, 6, 7, 8), 2, rank=0), Request(0.0, (9, 10, 11, 12, 13), 24, rank=1)))


def replay(env: dict, runner: str, tmp_path) -> fuzz.Report:
    path = tmp_path / "short-beside-long.json"
    SHORT_BESIDE_LONG.save(path)
    return fuzz.fuzz(TARGET, runner, 1, 0, tmp_path, env=env, replay=path, async_scheduling=True)


@pytest.mark.parametrize("runner", [pytest.param("v1", marks=pytest.mark.full), "v2"])
def test_torchrun_async_stays_in_step(vllm_patched, tmp_path, runner):
    # V1 under torchrun with async scheduling also runs in CI as the fuzz
    # target's fixed seed (tests/fuzz/test_fuzz_targets.py).
    report = replay(vllm_patched, runner, tmp_path)
    assert report.ok, fuzz.format_report(report)
    assert report.runner_seen == runner.upper(), fuzz.format_report(report)
    assert report.overlapped_steps > 0, fuzz.format_report(report)  # async really ran


def test_without_0016_v2_torchrun_async_collective_mismatch(tmp_path):
    report = replay(env_with(overlay_without("0016")), "v2", tmp_path)
    assert not report.ok, fuzz.format_report(report)
    assert report.runner_seen == "V2", fuzz.format_report(report)
    text = fuzz.format_report(report)
    # The ledger's first parting, on the DP group: the rank with the 0-token
    # step posts the engine's has_unfinished all-reduce ([1]) where its peer
    # posts V2's DP sync ([6, 2]).
    assert "members disagree" in text and "execute_model, 0 tokens" in text, text
