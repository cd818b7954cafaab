"""Fixtures for the collective tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from materialise import materialise_core  # noqa: E402


@pytest.fixture(scope="session")
def packed_core(tmp_path_factory) -> str:
    """Path of packed_collectives.py exactly as patch 0002 creates it."""
    return str(materialise_core(tmp_path_factory.mktemp("core")))
