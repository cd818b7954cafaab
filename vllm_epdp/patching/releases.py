"""Fetch a vLLM release's source distribution from PyPI, once, into a cache.

The sdist (``vllm-X.tar.gz``, ~45 MB) holds every Python file of the release
under ``vllm-X/vllm/``, its upstream tests and the ``pyproject.toml`` with its
ruff settings: what a patch is checked against before it goes upstream, and
what a maintainer needs to try the series on a release nobody has installed.
The wheel would add ~300 MB of compiled kernels that no such check reads.

Found through PyPI's JSON simple API (PEP 691); the download is checked
against the sha256 PyPI publishes, written to a temporary name and renamed,
so a cache never holds half an archive. Cache: ``releases/`` of vllm-epdp's
cache (vllm_epdp/cache.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from vllm_epdp.cache import cache_root
from vllm_epdp.errors import EpdpError

INDEX = os.environ.get("VLLM_EPDP_PYPI_SIMPLE", "https://pypi.org/simple")
_TIMEOUT_S = 60


def releases_dir() -> Path:
    """Where release archives and their unpacked trees are kept."""
    return cache_root() / "releases"


def _sdist_entry(version: str) -> dict:
    req = urllib.request.Request(f"{INDEX}/vllm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as r:
            files = json.load(r)["files"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise EpdpError(
            f"cannot read PyPI's index of vllm at {INDEX}/vllm/ ({exc}); "
            "check the network, or set VLLM_EPDP_PYPI_SIMPLE to a mirror"
        ) from None
    name = f"vllm-{version}.tar.gz"
    for f in files:
        if f["filename"] == name:
            return f
    raise EpdpError(f"PyPI has no source distribution {name}: is {version} a vLLM release?")


def sdist(version: str, say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Path of the release's sdist archive, downloaded on first use."""
    dest = releases_dir() / f"vllm-{version}.tar.gz"
    if dest.is_file():
        return dest
    entry = _sdist_entry(version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    say(f"[vllm-epdp] downloading {entry['filename']} ({entry.get('size', 0) / 1e6:.0f} MB) from PyPI, once")
    fd, tmp = tempfile.mkstemp(prefix=f".{entry['filename']}.", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry["url"], timeout=_TIMEOUT_S) as r:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        want = entry.get("hashes", {}).get("sha256")
        if want and digest.hexdigest() != want:
            raise EpdpError(f"{entry['filename']}: sha256 {digest.hexdigest()} is not PyPI's {want}; retry")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise EpdpError(f"download of {entry['filename']} failed ({exc}); retry") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def unpacked(version: str, say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Directory holding the release's sdist unpacked (``vllm/``,
    ``pyproject.toml``, ``tests/``, ...), made once from the cached archive."""
    root = releases_dir() / f"vllm-{version}"
    if (root / "pyproject.toml").is_file():
        return root
    archive = sdist(version, say)
    tmp = Path(tempfile.mkdtemp(prefix=f".vllm-{version}-", dir=root.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        top = tmp / f"vllm-{version}"
        if not (top / "pyproject.toml").is_file():
            raise EpdpError(f"{archive.name} does not hold vllm-{version}/pyproject.toml; delete it and retry")
        try:
            os.rename(top, root)
        except OSError:
            if not (root / "pyproject.toml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
