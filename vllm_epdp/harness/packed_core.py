"""Write the torch-only packed collective core of patch 0002 into a directory.

The core (``vllm/distributed/device_communicators/packed_collectives.py``) is a
new file that exists only inside patch 0002, so tests and benchmarks that need
it without vLLM (e.g. NCCL on a GPU box with only torch and git) extract it
with ``git apply`` into an empty directory and load it from there:

    from vllm_epdp.harness.packed_core import materialise_core
    path = materialise_core(Path(tmp) / "core")   # .../packed_collectives.py
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from vllm_epdp.patching.series import series_dir

CORE_REL = "vllm/distributed/device_communicators/packed_collectives.py"
# The series the tests and benchmarks were written against.
DEFAULT_VERSION = "0.32.0"


def core_patch(version: str | None = None) -> Path:
    """Patch 0002 of the series for `version` (default 0.32.0)."""
    directory = series_dir(version or DEFAULT_VERSION)
    found = sorted(directory.glob("0002-*.patch"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one {directory}/0002-*.patch, found {found}")
    return found[0]


def materialise_core(dest: Path, version: str | None = None) -> Path:
    """Apply only the core file of patch 0002 under `dest`; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    # Inside another git work tree, git apply would resolve paths against
    # that tree's root: make `dest` a repository of its own first.
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(
        ["git", "apply", f"--include={CORE_REL}", str(core_patch(version))],
        cwd=dest,
        check=True,
    )
    return dest / CORE_REL
