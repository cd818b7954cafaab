"""One writer per tree: an flock on the tree's root directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vllm_epdp.patching.log import Log, to_stderr


@contextlib.contextmanager
def root_lock(root: Path, log: Log = to_stderr, shared: bool = False) -> Iterator[None]:
    """flock on the root directory itself (nothing to leave behind in
    site-packages). Readers that copy the tree (overlays) take it shared, so
    they never copy a file half written."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another vllm-epdp run on {root} to finish")
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)
