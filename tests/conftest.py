"""Fixtures shared by the whole suite.

repo_root      Path of this repository.
vllm_pristine  env dict (a copy of os.environ) whose PYTHONPATH starts with an
               overlay of the installed vLLM with NO series patch applied
               (checked against the wheel's RECORD). Pass it as `env=` to
               subprocesses that import vllm.
vllm_patched   the same with the WHOLE series of the installed version applied.

Both are session-scoped and cached on disk under .cache/overlays (first build
~3 s each, then ~0.2 s); they never touch the venv's own vllm, whatever state it
is in. Overlays are keyed by the series content, so editing or adding a patch
gives a fresh overlay on the next run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def vllm_pristine() -> dict:
    from vllm_epdp.patching.overlay import overlay_env

    return overlay_env("pristine")


@pytest.fixture(scope="session")
def vllm_patched() -> dict:
    from vllm_epdp.patching.overlay import overlay_env

    return overlay_env("patched")


def pytest_collection_modifyitems(config, items):
    """Experiments (marker `experiment`) document why we rejected an approach;
    each costs minutes of watchdog time, so CI's suite skips them unless
    VLLM_EPDP_EXPERIMENTS=1 asks for them. The slower tier (marker `full`:
    more cases of a kind CI runs once) runs with VLLM_EPDP_FULL=1."""
    tiers = {"experiment": "VLLM_EPDP_EXPERIMENTS", "full": "VLLM_EPDP_FULL"}
    for marker, switch in tiers.items():
        if os.environ.get(switch) == "1":
            continue
        skip = pytest.mark.skip(reason=f"{marker}: set {switch}=1 to run")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
