"""Whether async scheduling really ran: count, inside vLLM's engine core, the
steps it took with and without its batch queue, and how often it scheduled a
batch while an earlier batch with tokens was still executing.

vLLM's engine core steps synchronously (``EngineCore.step``: schedule, run,
wait, update) unless async scheduling gives it a batch queue of two or more
(``EngineCore.step_with_batch_queue``): then step N+1 is scheduled before
step N's output is back. A configuration flag says what was asked; these
counts say what happened, so a run that asked for async scheduling and was
silently given the synchronous loop (vLLM's CPU platform used to force it
off) is caught.

``install(DIR)`` (vllm_epdp/diagnostics/plugin.py, when VLLM_EPDP_ASYNC_PROBE=DIR is set)
counts the step function of every engine core a vLLM process makes, so only
engine cores write ``DIR/engine-<pid>.json``: at the first
step, at the first overlap, every ``WRITE_EVERY`` steps and at exit.
``read(DIR)`` and ``problems(DIR, expect_async)`` are for tests and the
fuzzer.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any  # vLLM's EngineCore and its batch queue entries

WRITE_EVERY = 256
_lock = threading.Lock()
_dir: Path | None = None
_counts: dict[str, Any] = {
    "sync_steps": 0,
    "queued_steps": 0,
    "overlapped": 0,
    "batch_queue_size": None,
    "dp_rank": None,
}


def install(outdir: str | os.PathLike) -> None:
    """Count the steps of every engine core this process makes; idempotent.

    vLLM picks the engine core's step function once, in ``EngineCore.__init__``
    (``self.step_fn``: ``step``, or ``step_with_batch_queue`` when async
    scheduling gave it a batch queue), after it has loaded the plugins (and
    so this). The probe counts through that attribute rather than by patching
    the two methods: a Ray actor (the engine cores of the Ray DP backend)
    copies its methods into the actor's own class when Ray creates it, before
    any plugin runs, so a patch of ``EngineCore``'s methods never reaches it."""
    global _dir
    from vllm.v1.engine.core import EngineCore

    with _lock:
        if _dir is not None:
            return
        _dir = Path(outdir)
        _dir.mkdir(parents=True, exist_ok=True)
        EngineCore.step_fn = property(_get_step_fn, _set_step_fn)
        atexit.register(_write)


def _has_tokens(entry: Any) -> bool:
    # A batch queue entry is (future, scheduler_output, exec_future).
    return entry[1].total_num_scheduled_tokens > 0


def _get_step_fn(engine: Any) -> Callable[[], Any]:
    return engine.__dict__["_epdp_counted_step_fn"]


def _set_step_fn(engine: Any, step_fn: Callable[[], Any]) -> None:
    # vLLM's own rule for which one step_fn is: a batch queue means
    # step_with_batch_queue (its name may be hidden by a Ray wrapper).
    if engine.batch_queue is None:

        def counted() -> Any:
            _count(engine, "sync_steps", overlapped=False)
            return step_fn()

    else:

        def counted() -> Any:
            # A batch with tokens already in flight when this call schedules
            # another one with tokens: the two overlap.
            in_flight = any(_has_tokens(entry) for entry in engine.batch_queue)
            outputs, model_executed = step_fn()
            _count(engine, "queued_steps", overlapped=in_flight and model_executed)
            return outputs, model_executed

    engine.__dict__["_epdp_counted_step_fn"] = counted


def _count(engine: Any, kind: str, overlapped: bool) -> None:
    with _lock:
        first = _counts["sync_steps"] + _counts["queued_steps"] == 0
        _counts[kind] += 1
        if first:
            _counts["batch_queue_size"] = engine.batch_queue_size
            _counts["dp_rank"] = engine.vllm_config.parallel_config.data_parallel_rank
        first_overlap = overlapped and _counts["overlapped"] == 0
        _counts["overlapped"] += overlapped
        steps = _counts["sync_steps"] + _counts["queued_steps"]
    if first or first_overlap or steps % WRITE_EVERY == 0:
        _write()


def _write() -> None:
    with _lock:
        if _dir is None or _counts["sync_steps"] + _counts["queued_steps"] == 0:
            return
        data = dict(_counts, pid=os.getpid())
    path = _dir / f"engine-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # a reader never sees half a file


def read(outdir: str | os.PathLike) -> list[dict]:
    """Every engine core's counts in ``outdir`` (one dict each)."""
    return [json.loads(p.read_text()) for p in sorted(Path(outdir).glob("engine-*.json"))]


def problems(outdir: str | os.PathLike, expect_async: bool) -> list[str]:
    """Why the engine cores of a run did not run as asked (empty: they did).

    Async asked: every engine core stepped through its batch queue only, and
    at least one scheduled a batch while another was executing (an engine
    core that only ran dummy batches never overlaps, so one is enough).
    Not asked: no engine core used a batch queue."""
    engines = read(outdir)
    if not engines:
        return [f"no engine core stepped with the async probe on ({outdir})"]
    out = []
    for e in engines:
        name = f"engine core pid {e['pid']} (DP rank {e['dp_rank']})"
        if expect_async and e["sync_steps"]:
            out.append(f"{name}: {e['sync_steps']} synchronous step(s): async scheduling was not in effect")
        if not expect_async and e["queued_steps"]:
            out.append(f"{name}: {e['queued_steps']} step(s) through a batch queue of {e['batch_queue_size']}")
    if expect_async and not out and not any(e["overlapped"] for e in engines):
        out.append("no engine core scheduled a step while another was executing: nothing was pipelined")
    return out
