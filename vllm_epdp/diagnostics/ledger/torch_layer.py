"""The ledger's torch.distributed layer: every public collective and point-to-point function.

This is what the ledger sees of calls that bypass vLLM's GroupCoordinator:
the engine cores' stateless DP group, direct ``torch.distributed`` calls
(vLLM's DP coordination all-reduce, for one), torch's ``*_object`` helpers.
A call on a process group that belongs to a vLLM GroupCoordinator (its
``cpu_group`` or ``device_group``) is recorded under that coordinator's key,
so that a vLLM group's sequence holds its calls of both layers in the order
they were made; inside a GroupCoordinator call on the same group it is not
recorded again (record.call).

Other groups are named by backend, the tuple of global ranks and torch's
group name (creation order, which every member shares), e.g. ``gloo:0,1#0``
for the default group. A group that is not registered with the default
world (vLLM's stateless DP group of the engine cores) is named by backend,
size and group name, with the member's rank in that group.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from vllm_epdp.diagnostics.ledger import groups, record

# op -> positional index of its `group` parameter (torch 2.13 signatures).
WRAPPED_OPS: dict[str, int] = {
    "all_reduce": 2,
    "all_gather": 2,
    "all_gather_into_tensor": 2,
    # torch 2.13 names of the "into one tensor" forms; the packed MoE gather
    # of patch 0002 uses all_gather_single.
    "all_gather_single": 2,
    "reduce_scatter": 3,
    "reduce_scatter_tensor": 3,
    "reduce_scatter_single": 3,
    "broadcast": 2,
    "reduce": 3,
    "barrier": 0,
    "monitored_barrier": 0,
    "all_to_all": 2,
    "all_to_all_single": 4,
    "gather": 3,
    "scatter": 3,
    "send": 2,
    "recv": 2,
    "isend": 2,
    "irecv": 2,
    "all_gather_object": 2,
    "broadcast_object_list": 2,
    "gather_object": 3,
    "scatter_object_list": 3,
    "send_object_list": 2,
    "recv_object_list": 2,
}


def install() -> None:
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    for op, group_index in WRAPPED_OPS.items():
        original = getattr(c10d, op, None)
        if original is None or getattr(original, "_epdp_ledger", False):
            continue
        wrapper = _wrap(op, group_index, original)
        # Both names: vLLM calls `torch.distributed.X`, torch's own
        # *_object helpers call the c10d module globals.
        setattr(c10d, op, wrapper)
        if getattr(dist, op, None) is original:
            setattr(dist, op, wrapper)


def _wrap(op: str, group_index: int, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # First, before touching any state: under torch.compile's tracing
        # this must be a plain call (the compiled graph runs without us).
        if torch.compiler.is_compiling():
            return original(*args, **kwargs)
        try:
            pg = kwargs.get("group")
            if pg is None and len(args) > group_index:
                pg = args[group_index]
            group = groups.of_torch(pg)
        except Exception as exc:
            record.error(op, exc)
            return original(*args, **kwargs)
        return record.call("torch", op, group, original, args, kwargs)

    # Markers on the function object (mypy models no attributes set on functions).
    wrapper._epdp_ledger = True  # type: ignore[attr-defined]
    wrapper._epdp_original = original  # type: ignore[attr-defined]
    return wrapper
