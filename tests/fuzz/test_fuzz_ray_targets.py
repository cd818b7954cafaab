"""The Ray fuzz targets on real vLLM servers (patch 0015), a few fixed seeds
each: every drawn schedule must pass and the runner asked for must be the one
that ran. The slower tier only (``full``): CI covers Ray serving once in
tests/topologies/test_ray_serve.py. The Ray campaign is
benchmarks/fuzz_campaign.py with the serve-ray-* targets."""

from __future__ import annotations

import os
import shutil

import pytest

from vllm_epdp import fuzz

pytestmark = [pytest.mark.e2e, pytest.mark.full, pytest.mark.timeout(1500)]


@pytest.mark.parametrize(
    ("target", "runner", "examples", "seed"),
    [
        ("serve-ray-dp2-ep", "v1", 5, 1),
        ("serve-ray-tp2-dp2-ep", "v1", 3, 2),
        ("serve-ray-legacy-tp2-dp2-ep", "v1", 3, 3),
        pytest.param(
            "serve-ray-multinode-dp2-ep",
            "v1",
            3,
            4,
            marks=pytest.mark.skipif(
                os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
            ),
        ),
    ],
)
def test_drawn_schedules_pass_on_ray(vllm_patched, tmp_path, target, runner, examples, seed):
    # vLLM 0.32.0 refuses async scheduling with the legacy Ray executor.
    async_scheduling = "legacy" not in target
    report = fuzz.fuzz(target, runner, examples, seed, tmp_path, env=vllm_patched, async_scheduling=async_scheduling)
    assert report.ok, fuzz.format_report(report)
    assert report.schedules >= examples and report.requests > 0
    assert report.runner_seen == runner.upper(), fuzz.format_report(report)
    # The regime asked for really ran: under the Ray DP backend the engine cores
    # are Ray actors, which the async probe must count too.
    assert (report.overlapped_steps > 0) == async_scheduling, fuzz.format_report(report)
