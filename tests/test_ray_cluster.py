"""vllm_epdp.harness.ray_cluster without vLLM: a cluster of ours starts on loopback
with the CPU count asked for, and leaves nothing behind when the code inside it fails:
no Ray process, no link in the system temp dir, no files in Ray's default
temp dir (its files are in the caller's directory)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vllm_epdp.harness import procs, ray_cluster

pytestmark = pytest.mark.timeout(300)


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (info := procs.read_proc(pid)) and info.state != "Z"}


def test_cluster_leaves_nothing_when_the_body_fails(tmp_path):
    deep = tmp_path / ("a-directory-long-enough-to-need-the-short-link" * 2)
    default_ray = Path(tempfile.gettempdir()) / "ray"
    before = set(default_ray.iterdir()) if default_ray.is_dir() else set()
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1]); "
        "print(ray.cluster_resources()['CPU'], [n['NodeManagerAddress'] for n in ray.nodes()])"
    )
    with pytest.raises(RuntimeError, match="the test's own failure"), ray_cluster.cluster(deep, num_cpus=3) as ray:
        pids = ray.members()
        links = list(Path(tempfile.gettempdir()).glob(f"{ray_cluster.LINK_PREFIX}{os.getpid()}-*"))
        out = subprocess.run(
            [sys.executable, "-c", probe, ray.address],
            env=ray.client_env(dict(os.environ)),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        raise RuntimeError("the test's own failure")
    # The CPU count asked for, not the machine's; the node on loopback, not
    # on the address Ray would pick.
    assert out.stdout.strip().splitlines()[-1] == "3.0 ['127.0.0.1']"
    assert len(links) == 1 and not links[0].exists() and not links[0].is_symlink()
    assert pids and not alive(pids)
    assert ray.temp_dir.is_relative_to(deep) and any(ray.temp_dir.glob("session_*"))
    assert (set(default_ray.iterdir()) if default_ray.is_dir() else set()) == before
