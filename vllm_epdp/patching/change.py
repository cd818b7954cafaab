"""apply / revert of a patch series on a target, all or nothing, and check, apply's dry run.

Every selected patch is first tried in a scratch copy of the files the series
touches; only then are files changed, under a journal (journal.py) that puts
them back on any failure or signal. Apply records the revisions it applied
(record.py); revert takes off what is recorded, so an older revision that a
later series changed comes off cleanly. On an installed target revert checks
every file it restores against the wheel's RECORD hashes.
"""

from __future__ import annotations

import os
import time

from vllm_epdp.errors import CheckFailed, EpdpError
from vllm_epdp.patching.files import drop_bytecode, file_modes, require_writable, restore_modes
from vllm_epdp.patching.git import Scratch, all_files, git_apply
from vllm_epdp.patching.journal import Journal, recover
from vllm_epdp.patching.lock import root_lock
from vllm_epdp.patching.log import Log, to_stderr
from vllm_epdp.patching.record import backfill_record, recorded, update_record
from vllm_epdp.patching.status import (
    APPLIED,
    CONFLICTS,
    NOT_APPLIED,
    OUTDATED,
    PatchStatus,
    conflict_summary,
    status,
)
from vllm_epdp.series import Patch, select
from vllm_epdp.target import Target, record_mismatches

# Test hook: sleep this many seconds after each patch written, so that tests can
# interrupt an apply/revert half way.
_PAUSE_ENV = "VLLM_EPDP_TEST_PAUSE_AFTER_PATCH"


def check(target: Target, patches: list[Patch], names: list[str] | None = None) -> list[PatchStatus]:
    """Dry run of apply for the selected patches: their states, after the same
    ordering rules apply enforces (EpdpError if the selection breaks them)."""
    selected = select(patches, names)
    every = status(target, patches)
    states = {s.patch.name: s for s in every}
    todo = [p for p in selected if states[p.name].state == NOT_APPLIED]
    _check_order(patches, todo, states, reverse=False)
    return [states[p.name] for p in selected]


def apply(target: Target, patches: list[Patch], names: list[str] | None = None, log: Log = to_stderr) -> list[Patch]:
    """Apply the selected patches (default: all) that are not applied yet.
    Returns the patches written; raises CheckFailed/EpdpError leaving no change."""
    return _change(target, patches, names, reverse=False, log=log)


def revert(target: Target, patches: list[Patch], names: list[str] | None = None, log: Log = to_stderr) -> list[Patch]:
    """Take the selected applied patches (default: all) off, last first. On an
    installed target every file they touched must then hash as in RECORD."""
    return _change(target, patches, names, reverse=True, log=log)


def _change(target: Target, patches: list[Patch], names, reverse: bool, log: Log) -> list[Patch]:
    root = target.root
    verb, done_state = ("revert", NOT_APPLIED) if reverse else ("apply", APPLIED)
    with root_lock(root, log):
        recover(root, log)
        selected = select(patches, names)
        every = status(target, patches)
        outdated = {s.patch.number for s in every if s.state == OUTDATED}
        if outdated and reverse:
            # Take off what is on disk: the recorded revisions.
            swap = {p.number: q for p, q in zip(patches, recorded(root, patches))}
            patches = [swap[p.number] if p.number in outdated else p for p in patches]
            selected = [swap[p.number] if p.number in outdated else p for p in selected]
            every = [PatchStatus(swap[s.patch.number], APPLIED) if s.state == OUTDATED else s for s in every]
        elif outdated & {p.number for p in selected}:
            numbers = ", ".join(sorted(outdated & {p.number for p in selected}))
            raise CheckFailed(
                f"cannot apply, nothing changed: {numbers} is applied in an older revision "
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
        already = "not applied" if reverse else "already applied"
        for p in selected:
            if states[p.name].state == done_state:
                log(f"{p.number} {p.subject}: {already}, nothing to do")
        if not todo:
            if not reverse:
                backfill_record(root, [p for p in selected if states[p.name].state == APPLIED])
            log(f"nothing to do: {len(selected)} patch(es) {already}")
            return []
        if reverse:
            todo.reverse()
        _check_order(patches, todo, states, reverse)
        touched = all_files(todo)
        _dry_run(target, patches, todo, states, reverse, touched)
        require_writable(target, touched)
        with Journal(root, touched, f"{verb} {' '.join(p.number for p in todo)}", log):
            pause = float(os.environ.get(_PAUSE_ENV) or 0)
            for p in todo:
                modes = file_modes(root, p.files)
                r = git_apply(root, p, reverse=reverse)
                restore_modes(root, modes)
                if not r.ok:
                    raise CheckFailed(f"{verb} of {p.number} failed: {', '.join(r.problems)}")
                drop_bytecode(root, p.files)
                log(f"{p.number} {p.subject}: {'reverted' if reverse else 'applied'}")
                if pause:
                    log(f"test pause: {pause:g} s after {p.number}")
                    time.sleep(pause)
        update_record(root, todo, reverse)
        if reverse and target.record is not None:
            mismatched = record_mismatches(root, target.record, _pristine_after_revert(patches, todo, states))
            if mismatched:
                raise CheckFailed(
                    f"reverted, but {', '.join(mismatched)} do(es) not match the wheel's RECORD: "
                    "reinstall vLLM (pip install --force-reinstall --no-deps <dist>==<version>)"
                )
        log(f"{verb} done: {len(todo)} patch(es) {'reverted' if reverse else 'applied'}")
        return todo


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


def _pristine_after_revert(patches: list[Patch], todo: list[Patch], states: dict) -> list[str]:
    """Files the revert must bring back to the wheel's bytes: touched by the
    reverted patches and by no patch that stays applied."""
    reverted = {p.name for p in todo}
    still = {f for p in patches if states[p.name].state == APPLIED and p.name not in reverted for f in p.files}
    return [f for f in all_files(todo) if f not in still]


def _dry_run(target: Target, patches, todo, states, reverse: bool, touched: list[str]) -> None:
    """Every patch first, in a scratch copy; then (revert) the RECORD hashes."""
    verb = "revert" if reverse else "apply"
    with Scratch(target.root, touched) as s:
        for p in todo:
            r = s.apply(p, reverse=reverse)
            if not r.ok:
                raise CheckFailed(f"cannot {verb}, nothing changed: {p.number}: {', '.join(r.problems)}")
        if reverse and target.record is not None:
            mismatched = record_mismatches(s.root, target.record, _pristine_after_revert(patches, todo, states))
            if mismatched:
                raise CheckFailed(
                    f"cannot revert, nothing changed: afterwards {', '.join(mismatched)} would still "
                    "differ from the wheel (changed outside vllm-epdp): reinstall vLLM "
                    "(pip install --force-reinstall --no-deps <dist>==<version>)"
                )
