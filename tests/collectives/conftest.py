"""Fixtures for the collective tests."""

from __future__ import annotations

import pytest

from vllm_epdp.harness.packed_core import materialise_core


@pytest.fixture(scope="session")
def packed_core(tmp_path_factory) -> str:
    """Path of packed_collectives.py exactly as patch 0002 creates it."""
    return str(materialise_core(tmp_path_factory.mktemp("core")))


@pytest.fixture(scope="session")
def series_without():
    """series_without("0006") -> env whose PYTHONPATH is the whole series
    minus that patch (the pristine direction of a fix that needs the patches
    before it): vllm_epdp.patching.variants."""
    from vllm_epdp.patching.overlay import env_with
    from vllm_epdp.patching.variants import overlay_without

    return lambda *numbers: env_with(overlay_without(*numbers))
