"""vllm_epdp.serving without engines: the topologies it refuses, and why.

The "ray" refusal rests on a fact about the installed vLLM (its CPU platform
names no Ray device); the second test checks that fact, so the day a vLLM
release names one, this test fails and the ray topology is worth building.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_epdp import serving
from vllm_epdp.errors import EpdpError

FAKE_VLLM_SERVE = Path(__file__).parent / "fake_vllm_serve"


def test_ray_topology_refused_with_the_reason(tmp_path):
    ray = serving.Deployment("unused", topology="ray")
    with pytest.raises(EpdpError, match="ray_device_key"), serving.serve(ray, tmp_path):
        pass
    assert not (tmp_path / "server.log").exists()  # nothing was started


def test_unknown_topology_names_the_known_ones(tmp_path):
    k8s = serving.Deployment("unused", topology="k8s")
    with pytest.raises(EpdpError, match="use one of mp, multinode"), serving.serve(k8s, tmp_path):
        pass


def test_vllm_cpu_platform_names_no_ray_device():
    probe = "from vllm.platforms.cpu import CpuPlatform; print(repr(CpuPlatform.ray_device_key))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "''"


def test_a_new_deployment_starts_a_new_ledger(tmp_path):
    """A workdir used before (a campaign run again) keeps no ledger of the
    earlier server: compare would see two processes per rank. The server is
    the stand-in `vllm serve` of tests/fake_vllm_serve (no engines)."""
    stale = tmp_path / "ledger" / "1234.jsonl"
    stale.parent.mkdir()
    stale.write_text("{}\n")
    env = dict(os.environ, PYTHONPATH=str(FAKE_VLLM_SERVE), FAKE_SERVE_ON_SIGINT="exit0")
    deployment = serving.Deployment("unused", dp=1, ep=False)
    with serving.serve(deployment, tmp_path, env=env, start_limit_s=60, deadline_s=120) as server:
        assert server.ledger_dir == stale.parent
        assert not stale.exists()
