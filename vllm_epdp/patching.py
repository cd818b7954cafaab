"""status / check / apply / revert of a patch series on a target, with `git apply`.

State of each patch on a tree:
  applied      `git apply -R --check` succeeds (with the later applied patches of
               the series taken off first, in a scratch copy)
  not applied  it applies on top of the earlier patches of the series
  conflicts    neither: the tree was changed locally; the report names the file
               and hunk git could not place
  outdated     it conflicts, but the revision of it that apply recorded (see
               below) is applied: the tree holds an older revision of the patch

Every apply records the exact patch files it applied under
``<root>/.vllm-epdp-applied/`` (a git checkout: ``.git/vllm-epdp-applied/``;
revert removes them). A series shipped later may
change a patch; revert then takes off what is really on disk, the recorded
revision, and apply asks for that revert first instead of failing on a conflict
it cannot explain.

apply/revert are all or nothing: every selected patch is first tried in a scratch
copy of the files the series touches; then a journal (a copy of every file about
to change) is written under the target root before anything changes; any
failure, exception, SIGINT, SIGTERM or SIGHUP restores the journal; success
removes it. A journal found at start means a run was killed (e.g. SIGKILL): it is
restored first. `git apply` writes each file anew (new inode), so hard links into
other trees (overlays) never see the change; restores replace files the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vllm_epdp.errors import CheckFailed, EpdpError
from vllm_epdp.series import Patch, parse_patch, run_git, select
from vllm_epdp.target import Target, record_mismatches

APPLIED = "applied"
NOT_APPLIED = "not applied"
CONFLICTS = "conflicts"
OUTDATED = "outdated"

JOURNAL = ".vllm-epdp-journal"
APPLIED_RECORD = ".vllm-epdp-applied"
_JOURNAL_NEW = ".vllm-epdp-journal.new"
_MANIFEST = "manifest.json"
# Test hook: sleep this many seconds after each patch written, so that tests can
# interrupt an apply/revert half way.
_PAUSE_ENV = "VLLM_EPDP_TEST_PAUSE_AFTER_PATCH"

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class PatchStatus:
    patch: Patch
    state: str
    details: list[str] = field(default_factory=list)  # e.g. "vllm/x.py hunk #2 (@@ -120,7 +120,8 @@) does not apply"

    def to_json(self) -> dict:
        return {
            "number": self.patch.number,
            "name": self.patch.name,
            "subject": self.patch.subject,
            "state": self.state,
            "details": self.details,
            "files": list(self.patch.files),
        }


# --------------------------------------------------------------------- git apply


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
    r = run_git([*args, str(patch.path)], cwd=root, env=_git_env(root))
    output = r.stdout + r.stderr
    return GitResult(r.returncode == 0, [] if r.returncode == 0 else _problems(patch, output, reverse), output)


def _git_env(root: Path) -> dict:
    """git discovers repositories upwards; a site-packages inside some git work
    tree (a venv in a repo) would make git apply skip every path as "outside the
    current directory". Stop discovery at root: a checkout's own .git still counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(Path(root).resolve().parent)
    return env


def _problems(patch: Patch, output: str, reverse: bool) -> list[str]:
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
    return problems or [output.strip().splitlines()[-1] if output.strip() else "git apply failed"]


class Scratch:
    """A temporary copy of some files of a tree, to try patches on freely."""

    def __init__(self, root: Path, paths: Iterable[str]):
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

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def apply(self, patch: Patch, reverse: bool = False) -> GitResult:
        return git_apply(self.root, patch, reverse=reverse)


# ------------------------------------------------------------------------ status


def all_files(patches: Iterable[Patch]) -> list[str]:
    return sorted({f for p in patches for f in p.files})


def status(target: Target, patches: list[Patch]) -> list[PatchStatus]:
    """State of every patch (see the module docstring), OUTDATED included."""
    result = _stack_status(target, patches)
    if not any(r.state == CONFLICTS for r in result):
        return result
    recorded = _recorded(target.root, patches)
    if all(q is p for p, q in zip(patches, recorded)):
        return result
    on_disk = _stack_status(target, recorded)
    if not any(q is not p and d.state == APPLIED for p, q, d in zip(patches, recorded, on_disk)):
        return result
    # Older revisions are on disk: judge the whole stack by what is applied
    # (a patch stacked on an outdated one conflicts only because of it).
    for i, (p, q) in enumerate(zip(patches, recorded)):
        if q is not p and on_disk[i].state == APPLIED:
            on_disk[i] = PatchStatus(
                p,
                OUTDATED,
                [
                    f"an older revision of {p.number} is applied (as recorded in "
                    f"{record_dir(target.root)} when it was applied): `vllm-epdp revert` takes off what "
                    "is applied, then `vllm-epdp apply` applies this series"
                ],
            )
        else:
            on_disk[i] = PatchStatus(p, on_disk[i].state, on_disk[i].details)
    return on_disk


def _stack_status(target: Target, patches: list[Patch]) -> list[PatchStatus]:
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


def record_dir(root: Path) -> Path:
    """Where apply records the patches it applied: in a git checkout under
    .git/ (out of `git status`), elsewhere (site-packages) under the root."""
    if (root / ".git").is_dir():
        return root / ".git" / APPLIED_RECORD.lstrip(".")
    return root / APPLIED_RECORD


def _recorded(root: Path, patches: list[Patch]) -> list[Patch]:
    """The series with every patch whose recorded revision differs from the
    shipped one replaced by the recorded revision (matched by number)."""
    record = record_dir(root)
    if not record.is_dir():
        return patches
    out = []
    for p in patches:
        copies = sorted(record.glob(f"{p.number}-*.patch"))
        q = parse_patch(copies[0]) if copies else p
        out.append(q if q.sha256 != p.sha256 else p)
    return out


def _backfill_record(root: Path, applied: list[Patch]) -> None:
    """Record applied patches that have no record (applied by a vllm-epdp that
    kept none): they are applied in the shipped revision, so record that one.
    Best effort: a read-only tree just stays without a record."""
    missing = [p for p in applied if not (record_dir(root) / p.name).exists()]
    if missing:
        with contextlib.suppress(OSError):
            _update_record(root, missing, reverse=False)


def _update_record(root: Path, changed: list[Patch], reverse: bool) -> None:
    """Keep <root>/.vllm-epdp-applied/ equal to the patches applied: copies of
    the applied ones in, reverted ones out (each file replaced atomically)."""
    record = record_dir(root)
    record.mkdir(exist_ok=True)
    for p in changed:
        for old in record.glob(f"{p.number}-*.patch"):
            old.unlink()
        if not reverse:
            tmp = record / f".{p.name}.tmp"
            shutil.copyfile(p.path, tmp)
            os.replace(tmp, record / p.name)
    if not any(record.iterdir()):
        record.rmdir()


def check(target: Target, patches: list[Patch], names: list[str] | None = None) -> list[PatchStatus]:
    """Dry run of apply for the selected patches: their states, after the same
    ordering rules apply enforces (EpdpError if the selection breaks them)."""
    selected = select(patches, names)
    every = status(target, patches)
    states = {s.patch.name: s for s in every}
    todo = [p for p in selected if states[p.name].state == NOT_APPLIED]
    _check_order(patches, todo, states, reverse=False)
    return [states[p.name] for p in selected]


def conflict_summary(states: Iterable[PatchStatus]) -> str:
    return "; ".join(f"{s.patch.number}: {', '.join(s.details)}" for s in states)


# ----------------------------------------------------------------- apply/revert


def apply(target: Target, patches: list[Patch], names: list[str] | None = None, log: Log = _stderr) -> list[Patch]:
    """Apply the selected patches (default: all) that are not applied yet.
    Returns the patches written; raises CheckFailed/EpdpError leaving no change."""
    return _change(target, patches, names, reverse=False, log=log)


def revert(target: Target, patches: list[Patch], names: list[str] | None = None, log: Log = _stderr) -> list[Patch]:
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
            swap = {p.number: q for p, q in zip(patches, _recorded(root, patches))}
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
                _backfill_record(root, [p for p in selected if states[p.name].state == APPLIED])
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
        _update_record(root, todo, reverse)
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


# ------------------------------------------------------------------ safety nets


def require_writable(target: Target, paths: Iterable[str]) -> None:
    """Fail before changing anything if any file, or the directory it is written
    into, is not writable (git apply replaces files, so directories matter)."""
    root = target.root
    checks = [root]
    for rel in paths:
        full = root / rel
        if full.exists():
            checks.append(full)
        parent = full.parent
        while not parent.exists():
            parent = parent.parent
        checks.append(parent)
    for path in checks:
        if not os.access(path, os.W_OK):
            where = "site-packages" if target.kind == "installed" else "this tree"
            raise EpdpError(
                f"cannot write {path}: {where} is read-only for this user; run as its owner "
                "(e.g. sudo), use a virtualenv you own, or patch a source checkout with --checkout DIR"
            )


def file_modes(root: Path, paths: Iterable[str]) -> dict[str, int]:
    """Permission bits of those of ``paths`` that exist under root."""
    modes = {}
    for rel in paths:
        with contextlib.suppress(FileNotFoundError):
            modes[rel] = (root / rel).stat().st_mode & 0o7777
    return modes


def restore_modes(root: Path, modes: dict[str, int]) -> None:
    """Give files back the permission bits they had before `git apply`.

    git apply gives a file the mode its patch's index line names (100644:
    the patches are made from wheel-installed files), but upstream's git
    marks some .py files executable (vllm/envs.py): without this, a
    checkout's file would change mode and a revert would not undo it."""
    for rel, mode in modes.items():
        path = root / rel
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mode & 0o7777 != mode:
                os.chmod(path, mode)


def drop_bytecode(root: Path, paths: Iterable[str]) -> None:
    """Remove cached bytecode of changed modules. Python would notice a changed
    source by mtime and size, but not when a change keeps the size and lands in
    the same second as the cached compile (apply + revert in one second)."""
    for rel in paths:
        if not rel.endswith(".py"):
            continue
        src = root / rel
        for pyc in (src.parent / "__pycache__").glob(src.stem + ".*.pyc"):
            with contextlib.suppress(FileNotFoundError):
                pyc.unlink()


@contextlib.contextmanager
def root_lock(root: Path, log: Log = _stderr, shared: bool = False):
    """One writer per tree: flock on the root directory itself (nothing to
    leave behind in site-packages). Readers that copy the tree (overlays) take
    it shared, so they never copy a file half written."""
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


def journal_pending(root: Path) -> bool:
    return (Path(root) / JOURNAL / _MANIFEST).is_file()


def recover(root: Path, log: Log = _stderr) -> bool:
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

    def __init__(self, root: Path, paths: list[str], operation: str, log: Log):
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
            entry = {"path": rel, "existed": full.exists()}
            if full.exists():
                entry["backup"] = f"files/{i}"
                shutil.copy2(full, new / entry["backup"])
            else:
                parent = full.parent
                while not parent.exists():
                    created_dirs.append(str(parent.relative_to(self.root)))
                    parent = parent.parent
            files.append(entry)
        info = {
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

    def __exit__(self, exc_type, exc, tb) -> bool:
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
        def handler(signum, frame):
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
    def __init__(self, signum: int):
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
