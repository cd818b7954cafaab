"""apply / revert of a patch series on a target, all or nothing, and check, apply's dry run.

Every selected patch is first tried in a scratch copy of the files the series
touches; only then are files changed, under a journal (journal.py) that puts
them back on any failure or signal. Apply records the revisions it applied
(applied.py); revert takes off what is recorded, so an older revision that a
later series changed comes off cleanly. On an installed target revert checks
every file it restores against the wheel's RECORD hashes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from vllm_epdp.errors import CheckFailed, EpdpError
from vllm_epdp.patching.applied import backfill_record, update_record
from vllm_epdp.patching.files import drop_bytecode, file_modes, require_writable, restore_modes
from vllm_epdp.patching.git import Scratch, all_files, git_apply
from vllm_epdp.patching.journal import Journal, recover
from vllm_epdp.patching.lock import root_lock
from vllm_epdp.patching.log import Log, to_stderr
from vllm_epdp.patching.series import Patch, select
from vllm_epdp.patching.status import (
    APPLIED,
    CONFLICTS,
    NOT_APPLIED,
    OUTDATED,
    PatchStatus,
    conflict_summary,
    status,
)
from vllm_epdp.patching.vllm_tree import VllmTree, record_mismatches

# Test hook: sleep this many seconds after each patch written, so that tests can
# interrupt an apply/revert half way.
_PAUSE_ENV = "VLLM_EPDP_TEST_PAUSE_AFTER_PATCH"


def check(target: VllmTree, patches: list[Patch], names: list[str] | None = None) -> list[PatchStatus]:
    """Dry run of apply for the selected patches: their states, after the same
    ordering rules apply enforces (EpdpError if the selection breaks them)."""
    selected = select(patches, names)
    every = status(target, patches)
    states = {s.patch.name: s for s in every}
    todo = [p for p in selected if states[p.name].state == NOT_APPLIED]
    _check_order(patches, todo, states, reverse=False)
    return [states[p.name] for p in selected]


def apply(target: VllmTree, patches: list[Patch], names: list[str] | None = None, log: Log = to_stderr) -> list[Patch]:
    """Apply the selected patches (default: all) that are not applied yet.
    Returns the patches written; raises CheckFailed/EpdpError leaving no change."""
    return _change(target, patches, names, reverse=False, log=log)


def revert(target: VllmTree, patches: list[Patch], names: list[str] | None = None, log: Log = to_stderr) -> list[Patch]:
    """Take the selected applied patches (default: all) off, last first. On an
    installed target every file they touched must then hash as in RECORD."""
    return _change(target, patches, names, reverse=True, log=log)


@dataclass
class _Plan:
    """What one apply or revert does, decided before any file changes."""

    verb: str  # "apply" or "revert"
    reverse: bool
    patches: list[Patch]  # the series as it is on disk (a revert takes off recorded revisions)
    selected: list[Patch]
    states: dict[str, PatchStatus]  # by patch name
    todo: list[Patch]  # to write, in order (last first for a revert)


def _change(target: VllmTree, patches: list[Patch], names: list[str] | None, reverse: bool, log: Log) -> list[Patch]:
    root = target.root
    with root_lock(root, log):
        recover(root, log)
        plan = _plan(target, patches, names, reverse)
        already = "not applied" if reverse else "already applied"
        for p in plan.selected:
            if plan.states[p.name].state == (NOT_APPLIED if reverse else APPLIED):
                log(f"{p.number} {p.subject}: {already}, nothing to do")
        if not plan.todo:
            if not reverse:
                backfill_record(root, [p for p in plan.selected if plan.states[p.name].state == APPLIED])
            log(f"nothing to do: {len(plan.selected)} patch(es) {already}")
            return []
        _check_order(plan.patches, plan.todo, plan.states, reverse)
        touched = all_files(plan.todo)
        _dry_run(target, plan, touched)
        require_writable(target, touched)
        _write(target, plan, touched, log)
        update_record(root, plan.todo, reverse)
        if reverse and target.record is not None:
            mismatched = record_mismatches(root, target.record, _pristine_after_revert(plan))
            if mismatched:
                raise CheckFailed(
                    f"reverted, but {', '.join(mismatched)} do(es) not match the wheel's RECORD: "
                    "reinstall vLLM (pip install --force-reinstall --no-deps <dist>==<version>)"
                )
        log(f"{plan.verb} done: {len(plan.todo)} patch(es) {'reverted' if reverse else 'applied'}")
        return plan.todo


def _plan(target: VllmTree, patches: list[Patch], names: list[str] | None, reverse: bool) -> _Plan:
    """The states of the series and the patches to write; CheckFailed where a
    selected patch conflicts, or is outdated and asked to be applied."""
    verb = "revert" if reverse else "apply"
    selected = select(patches, names)
    every = status(target, patches)
    if reverse:
        # Take off what is on disk: an outdated patch's recorded revision,
        # which status found (selection by the shipped names, then swapped).
        on_disk = {s.patch.number: s.on_disk for s in every if s.on_disk is not None}
        patches = [on_disk.get(p.number, p) for p in patches]
        selected = [on_disk.get(p.number, p) for p in selected]
        every = [PatchStatus(s.on_disk, APPLIED) if s.on_disk is not None else s for s in every]
    outdated = sorted({s.patch.number for s in every if s.state == OUTDATED} & {p.number for p in selected})
    if outdated:
        raise CheckFailed(
            f"cannot apply, nothing changed: {', '.join(outdated)} is applied in an older revision "
            "(this vllm-epdp ships a newer one): run `vllm-epdp revert` (it takes off "
            "exactly what was applied), then `vllm-epdp apply`"
        )
    states = {s.patch.name: s for s in every}
    bad = [states[p.name] for p in selected if states[p.name].state == CONFLICTS]
    if bad:
        raise CheckFailed(
            f"cannot {verb}, nothing changed: {conflict_summary(bad)} "
            "(files changed locally? reinstall vLLM or restore the files, then retry)"
        )
    want = APPLIED if reverse else NOT_APPLIED
    todo = [p for p in selected if states[p.name].state == want]
    if reverse:
        todo.reverse()
    return _Plan(verb, reverse, patches, selected, states, todo)


def _write(target: VllmTree, plan: _Plan, touched: list[str], log: Log) -> None:
    """git apply every patch of the plan on the tree itself, under a journal."""
    root = target.root
    with Journal(root, touched, f"{plan.verb} {' '.join(p.number for p in plan.todo)}", log):
        pause = float(os.environ.get(_PAUSE_ENV) or 0)
        for p in plan.todo:
            modes = file_modes(root, p.files)
            r = git_apply(root, p, reverse=plan.reverse)
            restore_modes(root, modes)
            if not r.ok:
                raise CheckFailed(f"{plan.verb} of {p.number} failed: {', '.join(r.problems)}")
            drop_bytecode(root, p.files)
            log(f"{p.number} {p.subject}: {'reverted' if plan.reverse else 'applied'}")
            if pause:
                log(f"test pause: {pause:g} s after {p.number}")
                time.sleep(pause)


def _check_order(patches: list[Patch], todo: list[Patch], states: dict, reverse: bool) -> None:
    """A patch builds on the earlier series patches that change the same files.
    Applying it needs those applied; reverting it needs the later ones reverted."""
    index = {p.name: i for i, p in enumerate(patches)}
    chosen = {p.name for p in todo}
    for p in todo:
        i = index[p.name]
        for q in patches[:i] if not reverse else []:
            shared = sorted(set(p.files) & set(q.files))
            if shared and states[q.name].state != APPLIED and q.name not in chosen:
                raise EpdpError(
                    f"{p.number} builds on {q.number} (both change {shared[0]}), which is not "
                    f"applied: apply {q.number} too, or first"
                )
        for r in patches[i + 1 :]:
            shared = sorted(set(p.files) & set(r.files))
            if shared and states[r.name].state == APPLIED and (not reverse or r.name not in chosen):
                raise EpdpError(
                    f"{r.number} is applied on top of {p.number} (both change {shared[0]}): "
                    f"revert {r.number} {'too' if reverse else 'first'}"
                )


def _pristine_after_revert(plan: _Plan) -> list[str]:
    """Files the revert must bring back to the wheel's bytes: touched by the
    reverted patches and by no patch that stays applied."""
    reverted = {p.name for p in plan.todo}
    still = {
        f for p in plan.patches if plan.states[p.name].state == APPLIED and p.name not in reverted for f in p.files
    }
    return [f for f in all_files(plan.todo) if f not in still]


def _dry_run(target: VllmTree, plan: _Plan, touched: list[str]) -> None:
    """Every patch first, in a scratch copy; then (revert) the RECORD hashes."""
    with Scratch(target.root, touched) as s:
        for p in plan.todo:
            r = s.apply(p, reverse=plan.reverse)
            if not r.ok:
                raise CheckFailed(f"cannot {plan.verb}, nothing changed: {p.number}: {', '.join(r.problems)}")
        if plan.reverse and target.record is not None:
            mismatched = record_mismatches(s.root, target.record, _pristine_after_revert(plan))
            if mismatched:
                raise CheckFailed(
                    f"cannot revert, nothing changed: afterwards {', '.join(mismatched)} would still "
                    "differ from the wheel (changed outside vllm-epdp): reinstall vLLM "
                    "(pip install --force-reinstall --no-deps <dist>==<version>)"
                )
