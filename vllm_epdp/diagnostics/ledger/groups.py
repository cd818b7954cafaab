"""How the ledger names a group: one key per vLLM GroupCoordinator, one per other torch process group.

Both layers name groups here (vllm_layer.py for a coordinator's own calls,
torch_layer.py for torch.distributed calls, which land under the coordinator
that owns their process group), so a vLLM group's sequence holds its calls of
both layers under one key. The caches have weak keys: an entry goes with its
group, so a group made after one was destroyed never inherits its key (Python
often gives the new one the old one's memory, and so its id()).
"""

from __future__ import annotations

import sys
import weakref
from typing import Any  # process groups and vLLM coordinators: not typed here

from vllm_epdp.diagnostics.ledger import record

_torch_groups: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # process group -> record.Group
_coordinator_groups: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # coordinator -> record.Group


def forget_torch() -> None:
    """Name every process group anew at its next call (a GroupCoordinator
    was just made: some groups now belong to it)."""
    _torch_groups.clear()


def forget_coordinators() -> None:
    """Name every coordinator anew (a forked child: its file has no group line yet)."""
    _coordinator_groups.clear()


def of_coordinator(coordinator: Any) -> record.Group | None:
    """The ledger's Group of a GroupCoordinator (None while it has no ranks:
    half-way through its __init__)."""
    group = _coordinator_groups.get(coordinator)
    if group is None:
        ranks = getattr(coordinator, "ranks", None)
        if ranks is None:
            return None
        name = coordinator.unique_name
        key = f"{name}[{','.join(str(r) for r in ranks)}]"
        group = record.Group(key, int(coordinator.rank), "vllm", name, [int(r) for r in ranks])
        _coordinator_groups[coordinator] = group
    return group


def of_torch(pg: Any) -> record.Group:
    """The ledger's Group for a torch process group (None: the default group)."""
    import torch.distributed as dist

    # None means the default group: cache by the world's own group object,
    # which a destroyed and re-initialised world replaces.
    key_obj = pg if pg is not None else dist.group.WORLD  # None before init_process_group
    if key_obj is not None:
        try:
            cached = _torch_groups.get(key_obj)
        except TypeError:  # an object without weak references: never cached
            cached = None
        if cached is not None:
            return cached
    group = _coordinator_group(key_obj) or _torch_group(pg)
    if key_obj is not None:
        try:
            _torch_groups[key_obj] = group
        except TypeError:
            pass
    return group


def _coordinator_group(pg: Any) -> record.Group | None:
    """The Group of the vLLM GroupCoordinator whose cpu_group or
    device_group is ``pg``; None if vLLM's parallel state is not loaded in
    this process or no coordinator owns ``pg``."""
    parallel_state = sys.modules.get("vllm.distributed.parallel_state")
    if parallel_state is None or pg is None:
        return None
    for ref in list(getattr(parallel_state, "_groups", {}).values()):
        coordinator = ref()
        if coordinator is None:
            continue
        if getattr(coordinator, "cpu_group", None) is pg or getattr(coordinator, "device_group", None) is pg:
            return of_coordinator(coordinator)
    return None


def _torch_group(group: Any) -> record.Group:
    import torch.distributed as dist

    try:
        backend = str(dist.get_backend(group))
    except Exception:
        backend = "unknown"
    try:
        pg = group or dist.group.WORLD
        ranks = dist.get_process_group_ranks(pg)
        # Several groups can hold the same ranks (with TP=1, vLLM's world, DP
        # and EP groups are all [0..N)); torch names groups in creation order,
        # which every member shares, so the name tells them apart.
        name = getattr(pg, "group_name", "") or ""
        key = f"{backend}:" + ",".join(str(r) for r in ranks) + f"#{name}"
        return record.Group(key, dist.get_rank(), "torch", name, list(ranks))
    except Exception:
        # Not in the default world's registry (e.g. a stateless group).
        name = getattr(group, "group_name", "") or ""
        size = group.size() if group is not None else -1
        member = group.rank() if group is not None else -1
        return record.Group(f"{backend}:unregistered:size={size}:{name}", member, "torch", name, None)
