"""The ledger's stall watchdog (VLLM_EPDP_LEDGER_STALL_S=N): a hang leaves every thread's stack in the ledger.

A thread of its own looks every second at what this process has in flight
(record.in_flight). It writes one ``stall`` line when

- a recorded collective has not returned for N seconds (gloo, the CPU shm
  all-reduce, any blocking call), or
- a model-runner step (``execute_model``, its ``sample_tokens``, or
  ``execute_dummy_batch``; the start-up's ``_dummy_run`` steps are not
  watched) has not ended for N seconds while no collective is in flight: on
  NCCL/XCCL a collective returns as soon as it is queued, and the host waits
  at the next synchronisation (``.item()``, ``.cpu()``, a stream sync)
  instead.

Once per stalled call, and once per step: a step stalled in a collective
dumps once. Since the peers of a mismatched collective are stuck too, every
rank of the group ends up writing its own dump. The process goes on waiting
as before; the watchdog only writes. Pick N well above your slowest step
(the first steps after start-up compile and allocate): 120 s is a good
start; it must be below the collective timeout of the groups
(``--distributed-timeout-seconds``, torch's 10/30 min defaults), or the
timeout ends the wait first.

The ``stall`` record (one JSON line in the process's ledger file):
``pid``, ``t`` (Unix time of the dump), ``stall_s`` (N), ``waited_s``,
``waiting`` (``{"entry": <the op line still in flight>, "thread": name}``,
or ``{"step": <the step line>}`` when no collective is in flight), ``last``
(the process's last op and step lines, oldest first, at most
record.RECENT_LINES) and ``threads``: every thread of the process but the
watchdog's, each ``{"name", "ident", "daemon", "stack"}`` with ``stack``
the thread's Python frames, outermost first, as ``"file:line in function"``.
``vllm-epdp ledger compare DIR`` reports every dump; ``vllm-epdp ledger
stalls DIR`` prints the stacks.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

from vllm_epdp.diagnostics.ledger import record

THREAD_NAME = "vllm-epdp-ledger-watchdog"

_thread: threading.Thread | None = None
_stall_s: float | None = None


def start(stall_s: float) -> None:
    """Start the watchdog of this process; once."""
    global _thread, _stall_s
    if _thread is not None:
        return
    _stall_s = float(stall_s)
    record.watch()
    _thread = threading.Thread(target=_run, args=(float(stall_s),), name=THREAD_NAME, daemon=True)
    _thread.start()


def restart_in_child() -> None:
    """In a forked child: the parent's watchdog thread did not come along."""
    global _thread
    if _thread is not None and _stall_s is not None:
        _thread = None
        start(_stall_s)


def _run(stall_s: float) -> None:
    poll_s = min(1.0, stall_s / 4)
    dumped: set[str] = set()  # lines (calls, steps) already dumped for
    while True:
        time.sleep(poll_s)
        try:
            _check(stall_s, dumped)
        except Exception as exc:  # keep watching; say what went wrong once
            record.error("watchdog", exc)


def _check(stall_s: float, dumped: set[str]) -> None:
    calls, step, serving = record.in_flight()
    now = time.monotonic()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, (since, line) in calls.items():
        if now - since >= stall_s and line not in dumped:
            dumped.add(line)
            if step is not None:
                dumped.add(step[1])  # this step's stall is this dump
            dump(now - since, {"entry": json.loads(line), "thread": names.get(ident, str(ident))})
    if step is not None and serving and not calls and now - step[0] >= stall_s and step[1] not in dumped:
        dumped.add(step[1])
        dump(now - step[0], {"step": json.loads(step[1])})


def dump(waited_s: float, waiting: dict) -> None:
    """Write a stall record: what is waiting, the last lines, every thread's stack."""
    own = threading.get_ident()
    threads = {t.ident: t for t in threading.enumerate()}
    stacks = []
    for ident, frame in sys._current_frames().items():
        if ident == own:
            continue
        thread = threads.get(ident)
        stacks.append(
            {
                "name": thread.name if thread else f"<thread {ident}>",
                "ident": ident,
                "daemon": thread.daemon if thread else None,
                "stack": [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_stack(frame)],
            }
        )
    last = []
    for line in record.recent():
        try:
            last.append(json.loads(line))
        except ValueError:
            last.append(line)
    record.write(
        {
            "kind": "stall",
            "pid": os.getpid(),
            "t": round(time.time(), 6),
            "stall_s": _stall_s,
            "waited_s": round(waited_s, 3),
            "waiting": waiting,
            "last": last,
            "threads": stacks,
        }
    )
    what = waiting.get("entry", waiting.get("step", {}))
    label = f"{what.get('op')} on {what.get('group')}" if "entry" in waiting else f"step {what.get('step')}"
    print(
        f"[vllm-epdp ledger] pid {os.getpid()}: {label} has not finished after {waited_s:.0f} s; "
        f"every thread's stack written to {record.installed_file()}",
        file=sys.stderr,
        flush=True,
    )
