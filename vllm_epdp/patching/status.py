"""The state of every patch of a series on a tree, judged as a stack.

applied      `git apply -R --check` succeeds (with the later applied patches of
             the series taken off first, in a scratch copy)
not applied  it applies on top of the earlier patches of the series
conflicts    neither: the tree was changed locally; the report names the file
             and hunk git could not place
outdated     it conflicts, but the revision of it that apply recorded
             (applied.py) is applied: the tree holds an older revision of the patch
             (a revision is its diff: a recorded copy whose header alone differs
             counts as the shipped one)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vllm_epdp.patching.applied import record_dir, recorded
from vllm_epdp.patching.git import Scratch, all_files
from vllm_epdp.patching.series import Patch
from vllm_epdp.patching.vllm_tree import VllmTree

APPLIED = "applied"
NOT_APPLIED = "not applied"
CONFLICTS = "conflicts"
OUTDATED = "outdated"


@dataclass
class PatchStatus:
    patch: Patch
    state: str
    details: list[str] = field(default_factory=list)  # e.g. "vllm/x.py hunk #2 (@@ -120,7 +120,8 @@) does not apply"
    # OUTDATED only: the recorded revision that is on disk, what revert takes off.
    on_disk: Patch | None = None

    def to_json(self) -> dict:
        return self.patch.state_json(self.state, self.details)


def status(target: VllmTree, patches: list[Patch]) -> list[PatchStatus]:
    """State of every patch (see the module docstring), OUTDATED included."""
    result = _stack_status(target, patches)
    if not any(r.state == CONFLICTS for r in result):
        return result
    # A recorded revision that differs from the shipped one only in its header
    # (e.g. a Forwarded: URL added once the fix was proposed) put the same
    # bytes on disk: it is the shipped revision, not an older one.
    revisions = [q if q.diff_sha256 != p.diff_sha256 else p for p, q in zip(patches, recorded(target.root, patches))]
    if all(q is p for p, q in zip(patches, revisions)):
        return result
    on_disk = _stack_status(target, revisions)
    if not any(q is not p and d.state == APPLIED for p, q, d in zip(patches, revisions, on_disk)):
        return result
    # Older revisions are on disk: judge the whole stack by what is applied
    # (a patch stacked on an outdated one conflicts only because of it).
    for i, (p, q) in enumerate(zip(patches, revisions)):
        if q is not p and on_disk[i].state == APPLIED:
            on_disk[i] = PatchStatus(
                p,
                OUTDATED,
                [
                    f"an older revision of {p.number} is applied (as recorded in "
                    f"{record_dir(target.root)} when it was applied): `vllm-epdp revert` takes off what "
                    "is applied, then `vllm-epdp apply` applies this series"
                ],
                on_disk=q,
            )
        else:
            on_disk[i] = PatchStatus(p, on_disk[i].state, on_disk[i].details)
    return on_disk


def _stack_status(target: VllmTree, patches: list[Patch]) -> list[PatchStatus]:
    """State of every patch, judged as a stack: later applied patches are taken
    off (in a scratch copy) before an earlier one is tested, so patches that
    change the same file are judged correctly."""
    with Scratch(target.root, all_files(patches)) as s:
        applied = set()
        for p in reversed(patches):
            if s.apply(p, reverse=True).ok:
                applied.add(p.name)
        # The scratch tree is now the tree without any series patch; put the
        # series back on in order: an applied patch must go back on, a
        # not-applied one must apply on top of everything before it.
        result = []
        for p in patches:
            r = s.apply(p)
            if r.ok:
                result.append(PatchStatus(p, APPLIED if p.name in applied else NOT_APPLIED))
            else:
                result.append(PatchStatus(p, CONFLICTS, r.problems))
        return result


def conflict_summary(states: Iterable[PatchStatus]) -> str:
    return "; ".join(f"{s.patch.number}: {', '.join(s.details)}" for s in states)
