"""Start the ledger in a process: its file, then every layer that records into it.

The plugin calls ``install`` in every vLLM process when VLLM_EPDP_LEDGER is
set; tests and benchmarks call it directly. A forked child gets a file and
group names of its own, and its own watchdog.
"""

from __future__ import annotations

import os
from pathlib import Path

from vllm_epdp.diagnostics.ledger import graphs, groups, record, torch_layer, vllm_layer, watchdog


def install(outdir: str | os.PathLike, stall_s: float | None = None) -> Path:
    """Start this process's ledger in ``outdir``; idempotent. ``stall_s``:
    start the stall watchdog with that threshold. Returns this process's file."""
    path, opened = record.open_file(outdir)
    if not opened:
        return path
    os.register_at_fork(after_in_child=_after_fork_in_child)
    torch_layer.install()
    graphs.install()
    vllm_layer.install()
    if stall_s:
        watchdog.start(stall_s)
    return path


def _after_fork_in_child() -> None:
    if not record.reopen_in_child():
        return
    groups.forget_torch()
    groups.forget_coordinators()
    watchdog.restart_in_child()
