"""Releases' files laid out as the tests need them (helpers, no fixtures)."""

from __future__ import annotations

import base64
import csv
import hashlib
import shutil
from pathlib import Path

from vllm_epdp import patching
from vllm_epdp.patching import releases
from vllm_epdp.patching.series import load_series
from vllm_epdp.patching.vllm_tree import VllmTree

# Series for releases with no CPU build here, tested on their own files.
RELEASES = ("0.33.0", "0.34.0")
_TREES: dict[str, tuple[Path, Path]] = {}


def copy_package(release: Path, dest: Path) -> Path:
    """release's vllm/ under dest, .py files not executable as a wheel
    installs them (the sdist marks a few executable)."""
    shutil.copytree(release / "vllm", dest / "vllm")
    for path in (dest / "vllm").rglob("*.py"):
        path.chmod(0o644)
    return dest


def make_site(release: Path, dest: Path, version: str) -> Path:
    """site-packages as `pip install vllm==VERSION` would leave its Python
    files: the package plus a dist-info whose RECORD hashes every file."""
    site = copy_package(release, dest / "site")
    info = site / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    with open(info / "RECORD", "w", newline="") as f:
        record = csv.writer(f)  # csv: some of the releases' file names hold commas
        for path in sorted((site / "vllm").rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.writerow([str(path.relative_to(site)), f"sha256={digest}", len(data)])
        record.writerow([f"{info.name}/RECORD", "", ""])
    return site


def release_trees(version: str, factory) -> tuple[Path, Path]:
    """(pristine, patched) copies of ``version``'s package, made once a session."""
    if version not in _TREES:
        root = releases.unpacked(version)
        pristine = copy_package(root, factory.mktemp(f"pristine-{version}"))
        patched = copy_package(root, factory.mktemp(f"patched-{version}"))
        target = VllmTree(kind="checkout", root=patched, version=version)
        patching.apply(target, load_series(version), log=lambda line: None)
        _TREES[version] = (pristine, patched)
    return _TREES[version]
