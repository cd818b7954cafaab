"""Fixtures for the tests of a series on a release nobody here has installed
(release_trees.RELEASES: 0.33.0, and 0.34.0, the release without Model Runner
V1). Tests that take ``version`` run once per release.

version         the release, one of RELEASES (the test's id says which)
release_root    directory of that release's sdist unpacked (vllm/,
                pyproject.toml, tests/): fetched from PyPI by
                vllm_epdp.patching.releases the first time (47-51 MB download, ~10 s
                each), then read from the cache (releases/ of
                vllm_epdp.cache's directory); never written. The only network
                use of these tests.
trees           (pristine, patched): copies of its vllm/ package, one as
                released, one with the release's whole series applied by the
                tool; importable with PYTHONPATH=<dir> (no compiled kernels).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tool")]  # release_trees, tool_helpers

from release_trees import RELEASES, release_trees  # noqa: E402

from vllm_epdp.patching import releases  # noqa: E402


@pytest.fixture(scope="session", params=RELEASES)
def version(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def release_root(version) -> Path:
    return releases.unpacked(version)


@pytest.fixture(scope="session")
def trees(version, tmp_path_factory) -> tuple[Path, Path]:
    return release_trees(version, tmp_path_factory)
