"""The Ray fuzz targets on real vLLM servers (patch 0015), a few fixed seeds
each: every drawn schedule must pass and the runner asked for must be the one
that ran. CI runs the two-node target (a Ray head and a Ray worker node in two
network namespaces, async on: Ray DP, the second node and the async probe of
Ray actors at once); the one-host targets are in the slower tier (``full``):
CI serves one host under Ray once in tests/topologies/test_ray_serve.py. The
Ray campaign is benchmarks/fuzz_campaign.py with the serve-ray-* targets."""

from __future__ import annotations

import os
import shutil

import pytest

from vllm_epdp import fuzz

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]
FULL = pytest.mark.full


@pytest.mark.parametrize(
    ("target", "runner", "examples", "seed"),
    [
        pytest.param("serve-ray-dp2-ep", "v1", 5, 1, marks=FULL),
        pytest.param("serve-ray-tp2-dp2-ep", "v1", 3, 2, marks=FULL),
        pytest.param("serve-ray-legacy-tp2-dp2-ep", "v1", 3, 3, marks=FULL),
        pytest.param(
            "serve-ray-multinode-dp2-ep",
            "v1",
            2,
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
