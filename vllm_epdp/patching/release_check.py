"""Judge a patch series against a vLLM release's own files, patch by patch.

What a maintainer runs the day a release appears (``vllm-epdp check
--release X``): the release's Python files come from its sdist
(vllm_epdp.patching.releases, fetched once), the files the series touches are copied
into a scratch directory, and every patch is tried there on top of the
earlier ones that applied:

  applies           `git apply` places every hunk exactly (no fuzz)
  already upstream  it does not apply, but its reverse does: the release
                    already holds the change; drop the patch for it
  conflicts         neither; the details name the file and hunk, and a patch
                    that builds on an earlier one that did not apply says so

Exact placement is the point. `patch -F3` "succeeds" where upstream moved the
code a hunk sits in (it put 0011's new elif after an else: on 0.33.0), and
`git apply --3way --check` reported success there although the real 3-way
merge conflicts, so neither is asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vllm_epdp.patching.git import Scratch, all_files, git_apply
from vllm_epdp.patching.series import Patch

APPLIES = "applies"
UPSTREAM = "already upstream"
CONFLICTS = "conflicts"


@dataclass
class ReleaseState:
    patch: Patch
    state: str
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return self.patch.state_json(self.state, self.details)


def judge(release_root: Path, patches: list[Patch]) -> list[ReleaseState]:
    """State of every patch on the release tree at ``release_root`` (the
    directory holding ``vllm/``); the tree itself is never written."""
    result = []
    with Scratch(release_root, all_files(patches)) as scratch:
        missing: dict[str, str] = {}  # file -> number of a patch that did not go on
        for p in patches:
            r = scratch.apply(p)
            if r.ok:
                result.append(ReleaseState(p, APPLIES))
                continue
            if git_apply(scratch.root, p, reverse=True, check=True).ok:
                result.append(ReleaseState(p, UPSTREAM))
                continue
            details = list(r.problems)
            below = sorted({missing[f] for f in p.files if f in missing})
            if below:
                details.append(
                    f"builds on {', '.join(below)}, which did not apply: this may clear once that one is fixed"
                )
            for f in p.files:
                missing.setdefault(f, p.number)
            result.append(ReleaseState(p, CONFLICTS, details))
    return result
