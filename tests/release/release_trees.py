"""vLLM 0.33.0's files laid out as the tests need them (helpers, no fixtures)."""

from __future__ import annotations

import base64
import csv
import hashlib
import shutil
from pathlib import Path

RELEASE = "0.33.0"


def copy_package(release: Path, dest: Path) -> Path:
    """release's vllm/ under dest, .py files not executable as a wheel
    installs them (the sdist marks a few executable)."""
    shutil.copytree(release / "vllm", dest / "vllm")
    for path in (dest / "vllm").rglob("*.py"):
        path.chmod(0o644)
    return dest


def make_site(release, dest):
    """site-packages as `pip install vllm==0.33.0` would leave its Python
    files: the package plus a dist-info whose RECORD hashes every file."""
    site = copy_package(release, dest / "site")
    info = site / f"vllm-{RELEASE}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {RELEASE}\n")
    with open(info / "RECORD", "w", newline="") as f:
        record = csv.writer(f)  # csv: some of 0.33.0's file names hold commas
        for path in sorted((site / "vllm").rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.writerow([str(path.relative_to(site)), f"sha256={digest}", len(data)])
        record.writerow([f"{info.name}/RECORD", "", ""])
    return site
