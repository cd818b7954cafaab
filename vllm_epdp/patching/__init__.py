"""The patching API: status, check, apply and revert of a patch series on a vLLM tree, with `git apply`.

The names callers use, gathered from the modules that each do one part:
status.py (the state of every patch), change.py (apply/revert, all or
nothing, and check), applied.py (the revisions apply wrote), journal.py
(rollback on failure or signal), lock.py (one writer per tree), git.py
(`git apply` and scratch copies), files.py (modes, bytecode, writability).
"""

from vllm_epdp.patching.applied import APPLIED_RECORD, record_dir
from vllm_epdp.patching.change import apply, check, revert
from vllm_epdp.patching.journal import JOURNAL, journal_pending, recover
from vllm_epdp.patching.lock import root_lock
from vllm_epdp.patching.status import APPLIED, CONFLICTS, NOT_APPLIED, OUTDATED, PatchStatus, status

__all__ = [
    "APPLIED",
    "APPLIED_RECORD",
    "CONFLICTS",
    "JOURNAL",
    "NOT_APPLIED",
    "OUTDATED",
    "PatchStatus",
    "apply",
    "check",
    "journal_pending",
    "record_dir",
    "recover",
    "revert",
    "root_lock",
    "status",
]
