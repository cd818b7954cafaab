"""Lint the patch series the way vLLM's own pre-commit would: every patch,
applied to the release's files, must add no ruff finding and leave its files
as ``ruff format`` writes them, under the release's own ruff settings.

Why: each patch is meant to go upstream as it is. vLLM's CI runs ruff
(``ruff-check`` and ``ruff-format`` hooks, version pinned in its
``.pre-commit-config.yaml``) with the ``[tool.ruff]`` settings of its
``pyproject.toml``; a patch that fails them is sent back.

How: the release's sdist (vllm_epdp.patching.releases) gives the pristine files and the
settings, and its pre-commit config the ruff version: each release is linted
with the ruff it pins (0.32.0 and 0.33.0: 0.14.0, ours too; 0.34.0: 0.17.2),
installed once from PyPI into ``tools/`` of vllm-epdp's cache when it is not
the ruff of this Python. The files the series touches (with the ``__init__.py`` of their
packages, for ruff's namespace-package rule) are copied into a scratch tree
beside that ``pyproject.toml``; the patches are applied there one at a time
with ``git apply``, and after each one ruff looks at the files it touched.
A finding counts against a patch when the file has more of it (same rule,
same message) than before the patch; a file counts when ``ruff format``
would change it now but did not before. Upstream's own findings, if any,
are left alone.

  python -m vllm_epdp.patching.patch_lint [--version 0.32.0]   exit 0 clean, 1 findings, 2 set-up
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vllm_epdp.cache import cache_root
from vllm_epdp.errors import CheckFailed, EpdpError
from vllm_epdp.patching import releases
from vllm_epdp.patching.series import Patch, load_series, run_git, supported_versions


@dataclass(frozen=True)
class Finding:
    patch: str  # number, e.g. "0004"
    path: str
    text: str  # "12:1: I001 Import block is un-sorted" or "would be reformatted"

    def __str__(self) -> str:
        return f"{self.patch}: {self.path}:{self.text}"


def upstream_ruff_pin(release_root: Path) -> str | None:
    """The ruff version vLLM's pre-commit pins, if found: ``rev: vX.Y.Z``, or
    a commit with its version in a comment (``rev: <sha>  # frozen: vX.Y.Z``,
    0.34.0 on)."""
    config = release_root / ".pre-commit-config.yaml"
    if not config.is_file():
        return None
    m = re.search(r"ruff-pre-commit\s*\n\s*rev:\s*(\S+)(?:[ \t]*#[^\n]*?v(\d[\w.]*))?", config.read_text())
    if not m:
        return None
    if m.group(2):
        return m.group(2)
    return m.group(1).removeprefix("v") if re.fullmatch(r"v?\d[\w.]*", m.group(1)) else None


RuffCommand = list[str]
THIS_PYTHONS_RUFF: RuffCommand = [sys.executable, "-m", "ruff"]


def ruff_version(ruff: RuffCommand = THIS_PYTHONS_RUFF) -> str:
    try:
        out = subprocess.run([*ruff, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise EpdpError("ruff is not installed in this Python: pip install ruff (./dev setup does)") from None
    return out.stdout.split()[-1]


def pinned_ruff(version: str) -> RuffCommand:
    """A ruff of exactly ``version``: this Python's if it is that one, else a
    copy installed once with pip into the cache (``tools/ruff-VERSION``)."""
    if ruff_version() == version:
        return THIS_PYTHONS_RUFF
    target = cache_root() / "tools" / f"ruff-{version}"
    binary = target / "bin" / "ruff"
    if not binary.is_file():
        print(f"patch_lint: installing ruff {version} (upstream's pin) into {target}, once", file=sys.stderr)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), f"ruff=={version}"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0 or not binary.is_file():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise EpdpError(f"cannot install ruff {version} (the version vLLM pins) with pip: {last}")
    return [str(binary)]


def _ruff(ruff: RuffCommand, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*ruff, *args], cwd=cwd, capture_output=True, text=True)


def _check(ruff: RuffCommand, root: Path, files: list[str]) -> collections.Counter:
    """(path, rule, message) -> count, and each finding's first location."""
    r = _ruff(ruff, ["check", "--no-cache", "--output-format", "json", *files], root)
    if r.returncode not in (0, 1):
        raise EpdpError(f"ruff check failed to run: {r.stderr.strip()[:300]}")
    counts: collections.Counter = collections.Counter()
    for item in json.loads(r.stdout or "[]"):
        path = Path(item["filename"]).resolve().relative_to(root.resolve()).as_posix()
        counts[(path, item["code"], item["message"], item["location"]["row"], item["location"]["column"])] += 1
    return counts


def _unformatted(ruff: RuffCommand, root: Path, files: list[str]) -> set[str]:
    r = _ruff(ruff, ["format", "--no-cache", "--check", *files], root)
    if r.returncode not in (0, 1):
        raise EpdpError(f"ruff format failed to run: {r.stderr.strip()[:300]}")
    return {line.removeprefix("Would reformat: ").strip() for line in r.stdout.splitlines() if line.startswith("Would")}


def _by_rule(counts: collections.Counter) -> collections.Counter:
    rules: collections.Counter = collections.Counter()
    for (path, code, message, _row, _col), n in counts.items():
        rules[(path, code, message)] += n
    return rules


def _scratch_tree(release_root: Path, patches: list[Patch], dest: Path) -> None:
    """The touched files of the release, their packages' __init__.py, and the
    release's ruff settings, as a git-apply-able tree."""
    shutil.copy2(release_root / "pyproject.toml", dest / "pyproject.toml")
    wanted = set()
    for patch in patches:
        for change in patch.changes:
            parts = Path(change.path).parts
            for i in range(1, len(parts)):
                wanted.add(Path(*parts[:i], "__init__.py"))
            if not change.created:
                wanted.add(Path(change.path))
    for rel in sorted(wanted):
        src = release_root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
        elif rel.name != "__init__.py":
            raise CheckFailed(f"the release has no {rel}, which the series patches: the series does not fit it")


def release_ruff(release_root: Path) -> RuffCommand:
    """The ruff a release's own pre-commit runs (its pin), else this Python's."""
    pin = upstream_ruff_pin(release_root)
    return pinned_ruff(pin) if pin else THIS_PYTHONS_RUFF


def findings_added(root: Path, files: list[str], before_root: Path, ruff: RuffCommand = THIS_PYTHONS_RUFF) -> list[str]:
    """ruff findings and format problems in ``files`` (paths relative to
    ``root``, linted under root's pyproject.toml) that the same paths under
    ``before_root`` (e.g. the release's tree) do not have: what a change to
    those files adds, as vLLM's pre-commit would see it."""
    before = [f for f in files if (before_root / f).is_file()]
    old_rules = _by_rule(_check(ruff, before_root, before)) if before else collections.Counter()
    old_unformatted = _unformatted(ruff, before_root, before) if before else set()
    new = _check(ruff, root, files)
    grown = _by_rule(new) - old_rules
    found = [
        f"{path}:{row}:{col}: {code} {message}"
        for (path, code, message, row, col), _n in sorted(new.items())
        if grown[(path, code, message)] > 0
    ]
    found += [
        f"{path}: would be reformatted (ruff format)"
        for path in sorted(_unformatted(ruff, root, files) - old_unformatted)
    ]
    return found


def lint_series(version: str, release_root: Path | None = None, ruff: RuffCommand = THIS_PYTHONS_RUFF) -> list[Finding]:
    """Findings each patch of ``version``'s series adds, patch by patch."""
    release_root = release_root or releases.unpacked(version)
    patches = load_series(version)
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="vllm-epdp-lint-") as tmp:
        root = Path(tmp)
        _scratch_tree(release_root, patches, root)
        for patch in patches:
            files = [f for f in patch.files if f.endswith(".py")]
            before = [f for f in files if (root / f).is_file()]
            old_rules = _by_rule(_check(ruff, root, before)) if before else collections.Counter()
            old_unformatted = _unformatted(ruff, root, before) if before else set()
            r = run_git(["apply", "-p1", str(patch.path)], cwd=root)
            if r.returncode != 0:
                raise CheckFailed(f"{patch.name} does not apply to the {version} release: {r.stderr.strip()[:300]}")
            now = [f for f in files if (root / f).is_file()]
            if not now:
                continue
            new = _check(ruff, root, now)
            grown = _by_rule(new) - old_rules
            for (path, code, message, row, col), _n in sorted(new.items()):
                if grown[(path, code, message)] > 0:
                    findings.append(Finding(patch.number, path, f"{row}:{col}: {code} {message}"))
            for path in sorted(_unformatted(ruff, root, now) - old_unformatted):
                findings.append(Finding(patch.number, path, " would be reformatted (ruff format)"))
    return findings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vllm_epdp.patching.patch_lint",
        description="Check that every patch of a series passes vLLM's own ruff settings (as its pre-commit runs them).",
    )
    ap.add_argument("--version", action="append", help="series to lint (repeatable; default: every series)")
    args = ap.parse_args(argv)
    try:
        status = 0
        for version in args.version or supported_versions():
            root = releases.unpacked(version)
            pin = upstream_ruff_pin(root)
            ruff = release_ruff(root)
            have = ruff_version(ruff)
            if not pin:
                print(f"patch_lint: vLLM {version} pins no ruff that we can read: using ruff {have}", file=sys.stderr)
            found = lint_series(version, root, ruff)
            for f in found:
                print(f"v{version} {f}")
            print(f"v{version}: {len(found)} finding(s) under vLLM {version}'s ruff settings (ruff {have})")
            status = status or (1 if found else 0)
        return status
    except EpdpError as e:
        print(f"patch_lint: {e.message}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
