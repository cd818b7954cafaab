"""The ledger's graph layer: a CUDA/XPU graph replay is one entry.

A collective captured into a graph is posted by every replay, without any
Python running: the GroupCoordinator and torch.distributed layers see it
once, while capturing, when nothing is posted. So while a graph is being
captured, the calls the other layers record on that thread go into the
graph's list instead of the ledger (record.capture_begin); at the end of the
capture a graph that holds collectives gets a ``graph`` line with that list,
and each of its replays one ``op`` line (``graph_replay``), which
vllm_epdp/diagnostics/ledger/read.py puts into the sequence of every group the graph
holds collectives of. Graphs without collectives are not recorded.

``instrument`` wraps ``capture_begin``, ``capture_end`` and ``replay`` of a
graph class: ``torch.cuda.CUDAGraph`` (what ``torch.cuda.graph`` and vLLM's
CUDA graph wrappers of both model runners use) and ``torch.xpu.XPUGraph``
(vLLM's XPU runner makes ``torch.cuda.CUDAGraph`` that class). CPU has no
graphs: the tests run this code with a stand-in graph class.
"""

from __future__ import annotations

import functools
from typing import Any

from vllm_epdp.diagnostics.ledger import record

# What a capture recorded: (graph id, its groups, this process's member in each).
GraphInfo = tuple[int, list[str], list[int]]

# Graphs that cannot carry an attribute: id -> (graph id, groups, members).
_by_id: dict[int, GraphInfo | None] = {}


def install() -> None:
    import torch

    for cls in (getattr(torch.cuda, "CUDAGraph", None), getattr(getattr(torch, "xpu", None), "XPUGraph", None)):
        if cls is not None:
            instrument(cls)


def instrument(cls: type[Any]) -> None:
    """Record the captures and replays of graph class ``cls``; idempotent."""
    begin, end, replay = cls.capture_begin, cls.capture_end, cls.replay
    if getattr(replay, "_epdp_ledger", False):
        return

    @functools.wraps(begin)
    def capture_begin(self: Any, *args: Any, **kwargs: Any) -> Any:
        record.capture_begin()
        try:
            return begin(self, *args, **kwargs)
        except BaseException:
            record.capture_end()
            raise

    @functools.wraps(end)
    def capture_end(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return end(self, *args, **kwargs)
        finally:
            _remember(self, record.capture_end())

    @functools.wraps(replay)
    def replay_recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        info = _recall(self)
        if info is not None:
            try:
                record.replay(*info)
            except Exception as exc:  # never break the run for a diagnostic
                record.error("graph_replay", exc)
        return replay(self, *args, **kwargs)

    for wrapper in (capture_begin, capture_end, replay_recorded):
        # A marker on the function object (mypy models no attributes set on functions).
        wrapper._epdp_ledger = True  # type: ignore[attr-defined]
    cls.capture_begin, cls.capture_end, cls.replay = capture_begin, capture_end, replay_recorded


def _remember(graph: Any, info: GraphInfo | None) -> None:
    try:
        graph._epdp_ledger_graph = info
    except AttributeError:
        _by_id[id(graph)] = info


def _recall(graph: Any) -> GraphInfo | None:
    info = getattr(graph, "_epdp_ledger_graph", None)
    return info if info is not None else _by_id.get(id(graph))


def instrumented(cls: type[Any]) -> bool:
    """Whether the captures and replays of graph class ``cls`` are recorded."""
    return bool(getattr(cls.replay, "_epdp_ledger", False))
