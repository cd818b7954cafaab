"""Fixtures for the tests of a series on a release nobody here has installed.

release_033     directory of vLLM 0.33.0's sdist unpacked (vllm/, pyproject.toml,
                tests/): fetched from PyPI by vllm_epdp.releases the first time
                (47 MB download, 150 MB unpacked, ~10 s), then read from the cache
                (releases/ of vllm_epdp.cache's directory); never written.
                The only network use of these tests.
tree_033        (pristine, patched): copies of its vllm/ package, one as
                released, one with the whole 0.33.0 series applied by the
                tool; importable with PYTHONPATH=<dir> (no compiled kernels).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tool")]  # release_trees, tool_helpers

from release_trees import RELEASE, copy_package  # noqa: E402

from vllm_epdp import patching, releases  # noqa: E402
from vllm_epdp.series import load_series  # noqa: E402
from vllm_epdp.target import Target  # noqa: E402


@pytest.fixture(scope="session")
def release_033() -> Path:
    return releases.unpacked(RELEASE)


@pytest.fixture(scope="session")
def tree_033(release_033, tmp_path_factory) -> tuple[Path, Path]:
    pristine = copy_package(release_033, tmp_path_factory.mktemp("pristine-033"))
    patched = copy_package(release_033, tmp_path_factory.mktemp("patched-033"))
    target = Target(kind="checkout", root=patched, version=RELEASE)
    patching.apply(target, load_series(RELEASE), log=lambda line: None)
    return pristine, patched
