"""Record, inside a process, which torch.distributed collectives it posts, per process group, in order.

``install(DIR)`` (called by vllm_epdp/plugin.py when VLLM_EPDP_LEDGER=DIR is
set) wraps every public torch.distributed collective and point-to-point
function (``WRAPPED_OPS``); the outermost call only is recorded (the *_object
variants call other collectives inside; those are not counted twice). One JSON
line per call in DIR/<pid>.jsonl, written through at once so that a process
killed in a hang still leaves its ledger behind. Not recorded: collectives that
bypass torch.distributed (vLLM's CPU shared-memory all-reduce, custom NCCL/XCCL
communicators, graph-captured collectives replayed by CUDA graphs).

Groups are named by backend, the tuple of global ranks and torch's group name
(creation order), e.g. ``gloo:0,1#0`` for the default group.
A group that is not registered with the default world (vLLM's stateless DP
group of the engine cores) is named by backend, size and group name, with the
member's rank in that group.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time
import weakref
from pathlib import Path

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
_state_lock = threading.Lock()
_installed_dir: Path | None = None
_out: int | None = None  # fd of this process's ledger file
_tls = threading.local()  # .depth: nesting of wrapped calls on this thread
# group object -> (key, member). Weak keys: an entry goes with its group, so a
# group made after one was destroyed never inherits its key (Python often
# gives the new one the old one's memory, and so its id()).
_group_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_seq = 0


# ---------------------------------------------------------------- recording
def install(outdir: str | os.PathLike) -> Path:
    """Wrap torch.distributed's collectives in this process; idempotent.

    Returns the file this process writes to.
    """
    global _installed_dir, _out
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    with _state_lock:
        path = Path(outdir) / f"{os.getpid()}.jsonl"
        if _installed_dir is not None:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        _out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _write({"kind": "process", "pid": os.getpid(), "argv": sys.argv[:4]})
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
        _installed_dir = path.parent
        atexit.register(_close)
        return path


def _close() -> None:
    global _out
    with _state_lock:
        if _out is not None:
            os.close(_out)
            _out = None


def _write(obj: dict) -> None:
    _write_line(json.dumps(obj, separators=(",", ":")))


def _write_line(line: str) -> None:
    # One unbuffered write per entry: a rank killed while stuck in a
    # collective still leaves every entry up to that collective on disk.
    if _out is not None:
        os.write(_out, (line + "\n").encode())


def _wrap(op: str, group_index: int, original):
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        depth = getattr(_tls, "depth", 0)
        if depth == 0 and not _compiling():
            try:
                _record(op, group_index, args, kwargs)
            except Exception as exc:  # never break the run for a diagnostic
                _write({"kind": "error", "op": op, "error": repr(exc)})
        _tls.depth = depth + 1
        try:
            return original(*args, **kwargs)
        finally:
            _tls.depth = depth

    wrapper._epdp_ledger = True
    wrapper._epdp_original = original
    return wrapper


def _compiling() -> bool:
    import torch

    return torch.compiler.is_compiling()


def _record(op: str, group_index: int, args: tuple, kwargs: dict) -> None:
    global _seq
    group = kwargs.get("group")
    if group is None and len(args) > group_index:
        group = args[group_index]
    key, member = _group_key(group)
    shapes, dtypes = [], []
    for value in args:
        _describe(value, shapes, dtypes)
    for value in kwargs.values():
        _describe(value, shapes, dtypes)
    # Hand-built JSON (keys and group names need no escaping): json.dumps
    # was half of the per-call cost.
    with _state_lock:
        _seq += 1
        _write_line(
            f'{{"kind":"op","seq":{_seq},"t":{time.time():.6f},"group":"{key}",'
            f'"member":{member},"op":"{op}","shapes":{shapes},'
            f'"dtypes":{dtypes}}}'.replace("'", '"')
        )


def _describe(value, shapes: list, dtypes: list) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        shapes.append(list(value.shape))
        dtypes.append(str(value.dtype)[6:])  # "torch.float32" -> "float32"
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        for item in value:
            _describe(item, shapes, dtypes)


def _group_key(group) -> tuple[str, int]:
    import torch.distributed as dist

    # None means the default group: cache by the world's own group object,
    # which a destroyed and re-initialised world replaces.
    pg = group if group is not None else dist.group.WORLD  # None before init_process_group
    try:
        cached = _group_keys.get(pg) if pg is not None else None
    except TypeError:  # an object without weak references: never cached
        cached = None
    if cached is not None:
        return cached
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
        member = dist.get_rank()
    except Exception:
        # Not in the default world's registry (e.g. a stateless group).
        name = getattr(group, "group_name", "") or ""
        size = group.size() if group is not None else -1
        key = f"{backend}:unregistered:size={size}:{name}"
        member = group.rank() if group is not None else -1
    if pg is not None:
        try:
            _group_keys[pg] = (key, member)
        except TypeError:  # no weak references: named anew on every call
            pass
    return key, member
