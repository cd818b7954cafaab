"""The applied-revision record: a copy of every patch file apply wrote, kept with the tree.

It lives under ``<root>/.vllm-epdp-applied/`` (a git checkout:
``.git/vllm-epdp-applied/``, out of `git status`); revert removes the copies
it took off. A series shipped later may change a patch; the record tells
what is really on disk, so status can say ``outdated`` and revert can take
off the recorded revision instead of failing on a conflict it cannot explain.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from vllm_epdp.patching.series import Patch, parse_patch

APPLIED_RECORD = ".vllm-epdp-applied"


def record_dir(root: Path) -> Path:
    """Where apply records the patches it applied: in a git checkout under
    .git/ (out of `git status`), elsewhere (site-packages) under the root."""
    if (root / ".git").is_dir():
        return root / ".git" / APPLIED_RECORD.lstrip(".")
    return root / APPLIED_RECORD


def recorded(root: Path, patches: list[Patch]) -> list[Patch]:
    """The series with every patch whose recorded revision differs from the
    shipped one replaced by the recorded revision (matched by number)."""
    record = record_dir(root)
    if not record.is_dir():
        return patches
    out = []
    for p in patches:
        copies = sorted(record.glob(f"{p.number}-*.patch"))
        q = parse_patch(copies[0], check_header=False) if copies else p
        out.append(q if q.sha256 != p.sha256 else p)
    return out


def backfill_record(root: Path, applied: list[Patch]) -> None:
    """Record applied patches that have no record (applied by a vllm-epdp that
    kept none): they are applied in the shipped revision, so record that one.
    Best effort: a read-only tree just stays without a record."""
    missing = [p for p in applied if not (record_dir(root) / p.name).exists()]
    if missing:
        with contextlib.suppress(OSError):
            update_record(root, missing, reverse=False)


def update_record(root: Path, changed: list[Patch], reverse: bool) -> None:
    """Keep the record equal to the patches applied: copies of the applied
    ones in, reverted ones out (each file replaced atomically)."""
    record = record_dir(root)
    record.mkdir(exist_ok=True)
    for p in changed:
        for old in record.glob(f"{p.number}-*.patch"):
            old.unlink()
        if not reverse:
            tmp = record / f".{p.name}.tmp"
            shutil.copyfile(p.path, tmp)
            os.replace(tmp, record / p.name)
    if not any(record.iterdir()):
        record.rmdir()
