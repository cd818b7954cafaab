"""A kit's pull request as a git commit on the release's files.

``DIR/vllm``: a git repository of the release's source tree (its sdist, less
the sdist's own PKG-INFO and egg-info, which upstream's repository lacks),
committed as ``base``; one commit on top holds the kit's series patches, its
test files and, where the kit says so, the test's line in vLLM's CI file.
``DIR/0001-*.patch`` is that commit as ``git format-patch`` writes it: it
applies to upstream's tag of the release with ``git am``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from vllm_epdp.patching import patch_lint
from vllm_epdp.errors import CheckFailed, EpdpError
from vllm_epdp.patching.series import Patch, run_git
from vllm_epdp.upstream.kits import Kit
from vllm_epdp.upstream.testrun import place

AUTHOR = ("vllm-epdp", "dev@vllm-epdp")
_SDIST_ONLY = ("PKG-INFO", "vllm.egg-info")


def _git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME=AUTHOR[0],
        GIT_AUTHOR_EMAIL=AUTHOR[1],
        GIT_COMMITTER_NAME=AUTHOR[0],
        GIT_COMMITTER_EMAIL=AUTHOR[1],
        GIT_CEILING_DIRECTORIES=str(repo.resolve().parent),
    )
    r = run_git(list(args), cwd=repo, env=env)
    if r.returncode != 0:
        raise EpdpError(f"git {' '.join(args[:2])} in {repo} failed: {(r.stderr or r.stdout).strip()[:400]}")
    return r.stdout


def base_repo(release: str, release_root: Path, repo: Path) -> None:
    """The release's source tree as one commit, tagged ``base``."""
    if repo.exists():
        raise EpdpError(f"{repo} exists: pass an --out directory that holds no kit yet")
    shutil.copytree(release_root, repo, ignore=shutil.ignore_patterns(*_SDIST_ONLY), symlinks=True)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--no-verify", "-m", f"vLLM {release}: the release's source files (sdist)")
    _git(repo, "tag", "base")


def add_ci_line(repo: Path, kit: Kit) -> str | None:
    """Put each new test file of the kit into vLLM's CI file beside the test
    named by the kit (``[ci] beside``): every line naming that test gets a copy
    naming ours right after it (its source-file list and its pytest command).
    Returns the CI file changed, or None."""
    if not kit.ci_file:
        return None
    path = repo / kit.ci_file
    if not path.is_file():
        raise EpdpError(f"kit {kit.name}: this release has no {kit.ci_file} to add the test to")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out, found = [], 0
    new = [t.path for t in kit.tests if t.mode == "new"]
    for line in lines:
        out.append(line)
        if kit.ci_beside and kit.ci_beside in line:
            found += 1
            out += [line.replace(kit.ci_beside, test) for test in new]
    if not found:
        raise EpdpError(f"kit {kit.name}: {kit.ci_file} never names {kit.ci_beside}: pick another [ci] beside")
    path.write_text("".join(out), encoding="utf-8")
    return kit.ci_file


def commit_kit(
    kit: Kit, release: str, release_root: Path, patches: list[Patch], repo: Path, message: str
) -> tuple[list[str], list[str]]:
    """Apply the kit's patches, place its tests, edit CI, commit; lint the
    test files with the release's ruff settings (CheckFailed on a finding).
    Returns (pytest node ids, files changed)."""
    for patch in patches:
        r = run_git(["apply", "-p1", str(patch.path)], cwd=repo)
        if r.returncode != 0:
            raise CheckFailed(
                f"{patch.name} does not apply to vLLM {release}'s files: {r.stderr.strip()[:300]} "
                f"(vllm-epdp check --release {release} says which hunk)"
            )
    nodes = place(kit, release, release_root, repo)
    add_ci_line(repo, kit)
    problems = patch_lint.findings_added(
        repo, [t.path for t in kit.tests], release_root, patch_lint.release_ruff(release_root)
    )
    if problems:
        raise CheckFailed(
            f"kit {kit.name}'s tests do not pass vLLM {release}'s ruff settings: " + "; ".join(problems[:5])
        )
    _git(repo, "add", "-A")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(message)
        f.flush()
        _git(repo, "commit", "-q", "--no-verify", "-F", f.name)
    changed = _git(repo, "diff", "--name-only", "base", "HEAD").split()
    return nodes, changed


def format_patch(repo: Path, out: Path) -> Path:
    """The kit commit as ``git format-patch`` output in ``out``."""
    name = _git(repo, "format-patch", "-1", "HEAD", "-o", str(out.resolve())).strip().splitlines()[-1]
    return Path(name)
