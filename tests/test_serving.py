"""vllm_epdp.harness.serving without engines: the topologies it refuses, and why.

The Ray topologies are refused on a vLLM whose CPU platform names no Ray
device (vLLM as released); patch 0015 names one. Both facts are checked on
the pristine and the patched overlay, so the day a vLLM release names one,
the refusal test fails and patch 0015 can go.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_epdp.errors import EpdpError
from vllm_epdp.harness import serving, topology_ray

FAKE_VLLM_SERVE = Path(__file__).parent / "fake_vllm_serve"


def test_ray_topology_refused_on_released_vllm(vllm_pristine, tmp_path):
    """One of the three: they share the refusal (topology_ray.start)."""
    ray = serving.Deployment("unused", topology="ray-executor")
    with pytest.raises(EpdpError, match="names no Ray device.*patch 0015"), serving.serve(ray, tmp_path, vllm_pristine):
        pass
    assert not list(tmp_path.glob("*.log")) and not list(tmp_path.glob("r*"))  # nothing was started


def test_unknown_topology_names_the_known_ones(tmp_path):
    k8s = serving.Deployment("unused", topology="k8s")
    known = "use one of mp, multinode, ray, ray-executor, ray-multinode"
    with pytest.raises(EpdpError, match=known), serving.serve(k8s, tmp_path):
        pass


def test_unknown_ray_executor_is_refused(tmp_path):
    ray = serving.Deployment("unused", topology="ray", ray_executor="v3")
    with (
        pytest.raises(EpdpError, match="unknown Ray executor 'v3': use one of v2, legacy"),
        serving.serve(ray, tmp_path),
    ):
        pass


def test_cpu_platform_ray_device_without_and_with_the_series(vllm_pristine, vllm_patched):
    assert topology_ray.ray_device_key(vllm_pristine) == ""
    assert topology_ray.ray_device_key(vllm_patched) == "CPU"


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
