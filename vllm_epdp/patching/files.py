"""Care for the files `git apply` rewrites: writable before, same modes and no stale bytecode after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from vllm_epdp.errors import EpdpError
from vllm_epdp.patching.vllm_tree import VllmTree


def require_writable(target: VllmTree, paths: Iterable[str]) -> None:
    """Fail before changing anything if any file, or the directory it is written
    into, is not writable (git apply replaces files, so directories matter)."""
    root = target.root
    checks = [root]
    for rel in paths:
        full = root / rel
        if full.exists():
            checks.append(full)
        parent = full.parent
        while not parent.exists():
            parent = parent.parent
        checks.append(parent)
    for path in checks:
        if not os.access(path, os.W_OK):
            where = "site-packages" if target.kind == "installed" else "this tree"
            raise EpdpError(
                f"cannot write {path}: {where} is read-only for this user; run as its owner "
                "(e.g. sudo), use a virtualenv you own, or patch a source checkout with --checkout DIR"
            )


def file_modes(root: Path, paths: Iterable[str]) -> dict[str, int]:
    """Permission bits of those of ``paths`` that exist under root."""
    modes = {}
    for rel in paths:
        with contextlib.suppress(FileNotFoundError):
            modes[rel] = (root / rel).stat().st_mode & 0o7777
    return modes


def restore_modes(root: Path, modes: dict[str, int]) -> None:
    """Give files back the permission bits they had before `git apply`.

    git apply gives a file the mode its patch's index line names (100644:
    the patches are made from wheel-installed files), but upstream's git
    marks some .py files executable (vllm/envs.py): without this, a
    checkout's file would change mode and a revert would not undo it."""
    for rel, mode in modes.items():
        path = root / rel
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mode & 0o7777 != mode:
                os.chmod(path, mode)


def drop_bytecode(root: Path, paths: Iterable[str]) -> None:
    """Remove cached bytecode of changed modules. Python would notice a changed
    source by mtime and size, but not when a change keeps the size and lands in
    the same second as the cached compile (apply + revert in one second)."""
    for rel in paths:
        if not rel.endswith(".py"):
            continue
        src = root / rel
        for pyc in (src.parent / "__pycache__").glob(src.stem + ".*.pyc"):
            with contextlib.suppress(FileNotFoundError):
                pyc.unlink()
