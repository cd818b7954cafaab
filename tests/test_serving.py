"""vllm_epdp.serving without engines: the topologies it refuses, and why.

The "ray" refusal rests on a fact about the installed vLLM (its CPU platform
names no Ray device); the second test checks that fact, so the day a vLLM
release names one, this test fails and the ray topology is worth building.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from vllm_epdp import serving
from vllm_epdp.errors import EpdpError


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
