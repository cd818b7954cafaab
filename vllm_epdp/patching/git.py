"""`git apply` of one patch on a tree, and scratch copies of a tree to try patches in."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vllm_epdp.patching.series import Patch, run_git


@dataclass
class GitResult:
    ok: bool
    problems: list[str]  # one line each, file + hunk where git says so
    output: str


def git_apply(root: Path, patch: Patch, reverse: bool = False, check: bool = False) -> GitResult:
    args = ["apply", "-p1", "-v"]
    if reverse:
        args.append("-R")
    if check:
        args.append("--check")
    r = run_git([*args, str(patch.path)], cwd=root, env=git_env(root))
    output = r.stdout + r.stderr
    if r.returncode == 0:
        return GitResult(True, [], output)
    return GitResult(False, _every_problem(root, patch, reverse) or _problems(patch, output, reverse), output)


def _every_problem(root: Path, patch: Patch, reverse: bool) -> list[str]:
    """Every hunk of ``patch`` that does not apply. A failing `git apply`
    names only the first failing hunk of each file; with --reject it goes on
    through every hunk, and with --check it writes nothing (no file, no
    .rej)."""
    args = ["apply", "-p1", "-v", "--check", "--reject", *(["-R"] if reverse else []), str(patch.path)]
    r = run_git(args, cwd=root, env=git_env(root))
    found = _problems(patch, r.stdout + r.stderr, reverse, fallback=False)
    return list(dict.fromkeys(found))  # once each, in git's order


def git_env(root: Path) -> dict:
    """git discovers repositories upwards; a site-packages inside some git work
    tree (a venv in a repo) would make git apply skip every path as "outside the
    current directory". Stop discovery at root: a checkout's own .git still counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(Path(root).resolve().parent)
    return env


def _problems(patch: Patch, output: str, reverse: bool, fallback: bool = True) -> list[str]:
    problems = []
    for line in output.splitlines():
        m = re.match(r"^error: patch failed: (.+):(\d+)$", line)
        if m:
            path, at = m.group(1), int(m.group(2))
            hunk = patch.find_hunk(path, at, reverse=reverse)
            problems.append(f"{hunk.describe(path) if hunk else f'{path} line {at}'} does not apply")
            continue
        m = re.match(r"^error: (.+): (already exists in working directory|No such file or directory)$", line)
        if m:
            what = "already exists" if m.group(2).startswith("already") else "is missing"
            problems.append(f"{m.group(1)} {what}")
            continue
        if line.startswith("error: ") and not line.endswith((": patch does not apply", "while searching for:")):
            problems.append(line[len("error: ") :])
    if problems or not fallback:
        return problems
    return [output.strip().splitlines()[-1] if output.strip() else "git apply failed"]


def all_files(patches: Iterable[Patch]) -> list[str]:
    """Every file the patches touch, sorted: what a scratch copy needs."""
    return sorted({f for p in patches for f in p.files})


class Scratch:
    """A temporary copy of some files of a tree, to try patches on freely."""

    def __init__(self, root: Path, paths: Iterable[str]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vllm-epdp-scratch-")
        self.root = Path(self._tmp.name)
        for rel in sorted(set(paths)):
            src = root / rel
            if src.is_file():
                dst = self.root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def apply(self, patch: Patch, reverse: bool = False) -> GitResult:
        return git_apply(self.root, patch, reverse=reverse)
