"""Materialise the torch-only collective core from its patch.

The core (vllm/distributed/device_communicators/packed_collectives.py) is a
new file that exists only inside patch 0002, so tests and the benchmark
extract it with `git apply` into an empty directory instead of importing
vLLM. Used by tests/collectives and by benchmarks/collectives*.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE_REL = "vllm/distributed/device_communicators/packed_collectives.py"


def core_patch(repo: Path = REPO) -> Path:
    found = sorted((repo / "patches" / "v0.32.0").glob("0002-*.patch"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one patches/v0.32.0/0002-*.patch, found {found}")
    return found[0]


def materialise_core(dest: Path, repo: Path = REPO) -> Path:
    """Apply only the core file of patch 0002 under `dest`; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    # Inside another git work tree, git apply would resolve paths against
    # that tree's root: make `dest` a repository of its own first.
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(
        ["git", "apply", f"--include={CORE_REL}", str(core_patch(repo))],
        cwd=dest,
        check=True,
    )
    return dest / CORE_REL
