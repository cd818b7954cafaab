"""All or nothing on disk: a journal of the files about to change, restored unless the change succeeds.

A journal (a copy of every file about to change) is written under the target
root before anything changes; any failure, exception, SIGINT, SIGTERM or
SIGHUP restores it; success removes it. A journal found at start means a run
was killed (e.g. SIGKILL): ``recover`` restores it first. Restores replace
files (new inode), as `git apply` does, so hard links into other trees
(overlays) never see the change.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from vllm_epdp.errors import EpdpError
from vllm_epdp.patching.files import drop_bytecode
from vllm_epdp.patching.log import Log, to_stderr

JOURNAL = ".vllm-epdp-journal"
_JOURNAL_NEW = ".vllm-epdp-journal.new"
_MANIFEST = "manifest.json"


def journal_pending(root: Path) -> bool:
    return (Path(root) / JOURNAL / _MANIFEST).is_file()


def recover(root: Path, log: Log = to_stderr) -> bool:
    """Restore an interrupted run's journal, if there is one. True if it did."""
    root = Path(root)
    new = root / _JOURNAL_NEW
    if new.exists():
        # Killed while writing the journal: nothing had been changed yet.
        shutil.rmtree(new, ignore_errors=True)
    journal = root / JOURNAL
    if not journal.exists():
        return False
    manifest = journal / _MANIFEST
    if not manifest.is_file():
        # Killed while removing a finished journal.
        shutil.rmtree(journal, ignore_errors=True)
        return False
    info = json.loads(manifest.read_text())
    _restore(root, journal, info)
    log(
        f"found the journal of an interrupted run ({info.get('operation', '?')}, pid "
        f"{info.get('pid', '?')}): restored {len(info['files'])} file(s) to their state before it"
    )
    return True


class Journal:
    """Copies of files about to change; restores them unless the block succeeds."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, root: Path, paths: list[str], operation: str, log: Log) -> None:
        self.root, self.paths, self.operation, self.log = Path(root), paths, operation, log
        self.dir = self.root / JOURNAL
        self._saved_handlers: dict = {}

    def __enter__(self) -> Journal:
        new = self.root / _JOURNAL_NEW
        shutil.rmtree(new, ignore_errors=True)
        (new / "files").mkdir(parents=True)
        files, created_dirs = [], []
        for i, rel in enumerate(self.paths):
            full = self.root / rel
            entry: dict[str, Any] = {"path": rel, "existed": full.exists()}
            if full.exists():
                entry["backup"] = f"files/{i}"
                shutil.copy2(full, new / entry["backup"])
            else:
                parent = full.parent
                while not parent.exists():
                    created_dirs.append(str(parent.relative_to(self.root)))
                    parent = parent.parent
            files.append(entry)
        info: dict[str, Any] = {
            "format": 1,
            "pid": os.getpid(),
            "operation": self.operation,
            "files": files,
            "created_dirs": sorted(set(created_dirs), key=len, reverse=True),
        }
        _write_synced(new / _MANIFEST, json.dumps(info, indent=1))
        self.info = info
        os.replace(new, self.dir)  # from here on, a restart restores this journal
        self._install_handlers()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        try:
            if exc_type is None:
                self._discard()
                return False
            # Nothing may interrupt the rollback itself; SIGKILL is covered by
            # the journal staying on disk until the restore finished.
            for sig in self._SIGNALS:
                with contextlib.suppress(ValueError):
                    signal.signal(sig, signal.SIG_IGN)
            _restore(self.root, self.dir, self.info)
            n = len(self.info["files"])
            if isinstance(exc, _Interrupted):
                raise EpdpError(
                    f"interrupted by {exc.signame}: rolled back {n} file(s), the tree is as before",
                    exit_code=128 + exc.signum,
                ) from None
            if isinstance(exc, KeyboardInterrupt):
                raise EpdpError(f"interrupted: rolled back {n} file(s), the tree is as before", exit_code=130) from None
            self.log(f"rolled back {n} file(s): the tree is as before")
            return False
        finally:
            self._restore_handlers()

    def _discard(self) -> None:
        (self.dir / _MANIFEST).unlink()  # the journal is void from here on
        shutil.rmtree(self.dir, ignore_errors=True)

    def _install_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            raise _Interrupted(signum)

        for sig in self._SIGNALS:
            try:
                self._saved_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: the journal still covers kills
                pass

    def _restore_handlers(self) -> None:
        for sig, old in self._saved_handlers.items():
            signal.signal(sig, old)
        self._saved_handlers = {}


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.signame = signal.Signals(signum).name


def _restore(root: Path, journal: Path, info: dict) -> None:
    """Put every journaled file back (new inode via rename; idempotent, so a
    restore that is itself killed can simply run again), then drop the journal."""
    for entry in info["files"]:
        full = root / entry["path"]
        if entry["existed"]:
            tmp = full.parent / (full.name + ".vllm-epdp-restore")
            full.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(journal / entry["backup"], tmp)
            os.replace(tmp, full)
        else:
            with contextlib.suppress(FileNotFoundError):
                full.unlink()
    for rel in info.get("created_dirs", []):
        with contextlib.suppress(OSError):
            (root / rel).rmdir()  # only if empty
    drop_bytecode(root, [e["path"] for e in info["files"]])
    (journal / _MANIFEST).unlink()
    shutil.rmtree(journal, ignore_errors=True)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
