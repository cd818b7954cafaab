"""Run groups of processes (one per DP rank, or a server) with a hard deadline,
stack dumps of every process on a hang, and no orphans, ever.

Why this much machinery: a DP x EP run that goes wrong usually does not crash,
it waits forever in a collective that a peer never joins. vLLM also starts
children of its own (engine core, workers) that ignore SIGTERM and outlive
their parent. So every rank is started in a new session (``setsid``); on a
deadline we dump the Python stack of every process of every session (and of
every descendant, in case a child called ``setsid`` itself) with ``py-spy``,
then SIGTERM and SIGKILL all of them, and reap what we can.

This process makes itself a "child subreaper" (Linux prctl) so that the
grandchildren of a rank that died are re-parented to us, not to init: they stay
findable as our descendants and we can reap them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from vllm_epdp.harness.log_forensics import first_error, log_tail

_PR_SET_CHILD_SUBREAPER = 36
_LIVE_GROUPS: set[ProcGroup] = set()
_LIVE_LOCK = threading.Lock()
_CLEANUP_INSTALLED = False


# --------------------------------------------------------------------- /proc
@dataclasses.dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgrp: int
    sid: int
    state: str
    comm: str
    start: int  # start time in clock ticks since boot: (pid, start) is unique


def read_proc(pid: int) -> ProcInfo | None:
    """One process's /proc/PID/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may contain spaces or ')': split at the last ')'.
    head, _, tail = raw.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], comm, int(fields[19]))


def all_procs() -> list[ProcInfo]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                out.append(info)
    return out


def related_pids(leaders: set[int]) -> set[int]:
    """Every live process in the sessions led by ``leaders`` plus all their
    descendants (a descendant may have started a session of its own)."""
    procs = all_procs()
    found = {p.pid for p in procs if p.sid in leaders or p.pid in leaders}
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def living(known: dict[int, int]) -> set[int]:
    """The pids of ``known`` ({pid: start time}) that still exist as the same
    process (not a recycled pid) and are not zombies."""
    alive = set()
    for pid, start in known.items():
        info = read_proc(pid)
        if info is not None and info.start == start and info.state != "Z":
            alive.add(pid)
    return alive


# -------------------------------------------------------------- stack dumps
def py_spy_path() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def dump_stack(pid: int, timeout_s: float = 20.0) -> str:
    """The Python stacks of every thread of ``pid`` (py-spy), or why not."""
    info = read_proc(pid)
    name = f"pid {pid} ({info.comm if info else 'gone'})"
    spy = py_spy_path()
    if spy is None:
        return f"--- {name}: py-spy not found; install it (pip install py-spy)"
    try:
        res = subprocess.run(
            [spy, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return f"--- {name}: py-spy dump timed out after {timeout_s:.0f} s"
    text = (res.stdout + res.stderr).strip()
    return f"--- {name}\n{text}"


# ---------------------------------------------------------------- the group
@dataclasses.dataclass
class ProcSpec:
    """One process to start: a DP rank, a server, a fake rank in a test."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: str | None = None


@dataclasses.dataclass
class Outcome:
    label: str
    returncodes: dict[str, int | None]  # None: still running when we killed it
    timed_out: bool
    wall_s: float
    stacks: str = ""
    logs: dict[str, Path] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(rc == 0 for rc in self.returncodes.values())

    def describe(self, log_lines: int = 30) -> str:
        """What went wrong, for a human: exit codes, stacks, log tails."""
        if self.ok:
            return f"{self.label}: all processes exited 0 in {self.wall_s:.0f} s"
        parts = []
        if self.timed_out:
            stuck = [n for n, rc in self.returncodes.items() if rc is None]
            parts.append(
                f"{self.label}: HUNG, no progress to completion after "
                f"{self.wall_s:.0f} s; still running: {', '.join(stuck) or '-'}"
            )
        else:
            parts.append(f"{self.label}: a process failed")
        for name, rc in self.returncodes.items():
            parts.append(f"  {name}: {describe_returncode(rc)}")
        for name, path in self.logs.items():
            cause = first_error(path)
            if cause:
                parts.append(f"  first error in {name}'s log: {cause}")
        if self.stacks:
            parts.append("stacks of every process at the deadline:\n" + self.stacks)
        for name, path in self.logs.items():
            tail = log_tail(path, log_lines)
            if tail:
                parts.append(f"--- last lines of {name} ({path}):\n{tail}")
            else:
                parts.append(f"  log of {name}: {path}")
        return "\n".join(parts)


def describe_returncode(rc: int | None) -> str:
    if rc is None:
        return "killed by the watchdog (was still running)"
    if rc < 0:
        try:
            return f"died of signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"died of signal {-rc}"
    return f"exit code {rc}"


class ProcGroup:
    """Start ``specs`` in new sessions; ``wait()`` with a deadline; always
    leaves no process behind (``close()``, context manager, atexit)."""

    def __init__(
        self,
        label: str,
        specs: list[ProcSpec],
        timeout_s: float,
        grace_s: float = 20.0,
    ) -> None:
        self.label = label
        self.specs = specs
        self.timeout_s = timeout_s
        self.grace_s = grace_s  # how long peers may live on after one failed
        self.popens: dict[str, subprocess.Popen] = {}
        self.started = 0.0
        self._known: dict[int, int] = {}  # {pid: start time} ever seen in our sessions

    # -- start / stop
    def start(self) -> ProcGroup:
        _install_cleanup()
        with _LIVE_LOCK:
            _LIVE_GROUPS.add(self)
        self.started = time.monotonic()
        for spec in self.specs:
            spec.log.parent.mkdir(parents=True, exist_ok=True)
            env = dict(spec.env)
            # A segfault or abort prints every thread's Python stack to the log.
            env.setdefault("PYTHONFAULTHANDLER", "1")
            env.setdefault("PYTHONUNBUFFERED", "1")
            with open(spec.log, "wb") as log:
                self.popens[spec.name] = subprocess.Popen(
                    spec.argv,
                    env=env,
                    cwd=spec.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        return self

    def __enter__(self) -> ProcGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def leaders(self) -> set[int]:
        return {p.pid for p in self.popens.values()}

    def members(self) -> set[int]:
        """Live pids of our sessions and their descendants."""
        for pid in related_pids(self.leaders) - {os.getpid()}:
            info = read_proc(pid)
            if info is not None:
                self._known.setdefault(pid, info.start)
        return living(self._known)

    def survivors(self) -> set[int]:
        """Pids this group has seen (each ``members()`` call records them) that
        are still alive, without looking for new ones: after close(), what it
        left behind."""
        return living(self._known)

    def watch(self) -> set[int]:
        """The live pids of the group now, to ask ``died()`` about later."""
        return set(self.members())

    def died(self, watched: set[int]) -> set[int]:
        """Those of ``watched`` that are gone (e.g. a rank's engine core that
        died while its front-end waits for it)."""
        return watched - self.members()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def exited(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p in self.popens.items()}

    # -- waiting
    def wait(self, poll_s: float = 0.5, on_tick: Callable[[ProcGroup], object] | None = None) -> Outcome:
        """Block until every process exited, or one failed and the others did
        not follow within ``grace_s``, or the deadline passed. On a deadline
        or a stuck peer, dump all stacks, then kill everything."""
        first_failure: float | None = None
        while True:
            codes = self.exited()
            self.members()  # remember grandchildren while their parents live
            if all(rc is not None for rc in codes.values()):
                break
            if first_failure is None and any(rc not in (None, 0) for rc in codes.values()):
                first_failure = time.monotonic()
            now_late = self.elapsed() > self.timeout_s
            peers_stuck = first_failure is not None and time.monotonic() - first_failure > self.grace_s
            if now_late or peers_stuck:
                stacks = self.dump_stacks()
                codes = self.exited()
                self.close()
                return Outcome(
                    self.label,
                    codes,
                    timed_out=now_late or not any(rc not in (None, 0) for rc in codes.values()),
                    wall_s=self.elapsed(),
                    stacks=stacks,
                    logs={s.name: s.log for s in self.specs},
                )
            if on_tick is not None:
                on_tick(self)
            time.sleep(poll_s)
        wall = self.elapsed()
        self.close()
        return Outcome(self.label, codes, False, wall, logs={s.name: s.log for s in self.specs})

    def dump_stacks(self) -> str:
        return "\n".join(dump_stack(pid) for pid in sorted(self.members()))

    # -- cleanup
    def close(self, term_grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL, every process of our sessions and their
        descendants; reap our children. Idempotent."""
        for sig, pause in ((signal.SIGTERM, term_grace_s), (signal.SIGKILL, 0.0)):
            pids = self.members()
            if not pids:
                break
            for pgid in self.leaders:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline and self.members():
                self._reap()
                time.sleep(0.1)
        # SIGKILL is not instant: wait (bounded) until they are really gone.
        deadline = time.monotonic() + 10.0
        while True:
            self._reap()
            left = self.members()
            if not left or time.monotonic() > deadline:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        with _LIVE_LOCK:
            _LIVE_GROUPS.discard(self)

    def _reap(self) -> None:
        for p in self.popens.values():
            with contextlib.suppress(Exception):
                p.poll()
        # Grandchildren re-parented to us (we are a subreaper): reap by pid only,
        # never waitpid(-1), which would steal exit codes from other Popen users.
        for pid in list(self._known):
            if pid in self.leaders:
                continue
            info = read_proc(pid)
            if info is not None and info.start == self._known[pid] and info.ppid == os.getpid():
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)


def run_group(label: str, specs: list[ProcSpec], timeout_s: float, **kw: float) -> Outcome:  # kw: grace_s
    with ProcGroup(label, specs, timeout_s, **kw) as group:
        return group.wait()


# ------------------------------------------------------------ process-wide
def _install_cleanup() -> None:
    """Once per process: become a subreaper, kill every live group at exit
    and on SIGTERM/SIGHUP (Ctrl-C raises KeyboardInterrupt, which runs atexit)."""
    global _CLEANUP_INSTALLED
    if _CLEANUP_INSTALLED:
        return
    _CLEANUP_INSTALLED = True
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    atexit.register(close_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    close_all()
    raise SystemExit(128 + signum)


def close_all() -> None:
    with _LIVE_LOCK:
        groups = list(_LIVE_GROUPS)
    for group in groups:
        with contextlib.suppress(Exception):
            group.close(term_grace_s=1.0)
