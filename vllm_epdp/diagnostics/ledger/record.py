"""This process's ledger: one JSON line per collective call, written through at once.

``install(DIR)`` (vllm_epdp/diagnostics/plugin.py calls it in every vLLM process when
VLLM_EPDP_LEDGER=DIR is set) opens DIR/<pid>.jsonl (<pid>-2.jsonl, ... if
that name is taken) and puts the layers in place, each in its own module:

- vllm_layer.py: vLLM's ``GroupCoordinator`` methods, so every device
  communicator backend is seen (pynccl, custom all-reduce, symmetric memory,
  the CPU shared-memory all-reduce, the shm broadcast, the MoE all2all
  manager's dispatch/combine), and the model runner's steps;
- torch_layer.py: torch.distributed's collectives, for what bypasses the
  GroupCoordinator (the engine cores' stateless DP group, direct
  ``torch.distributed`` calls, torch's own helpers);
- graphs.py: CUDA/XPU graph capture and replay;
- watchdog.py: the stall watchdog (VLLM_EPDP_LEDGER_STALL_S=N).

Every layer records through ``call()``. The outermost call on a group is the
entry: a call made while a call on the same group is in progress on the same
thread (GroupCoordinator.all_reduce -> its communicator -> torch's
all_reduce on the group's device group; all_gather_object -> all_gather) is
not recorded again. A call nested in a call on *another* group is recorded
in its own group: an EP-group dispatch that gathers over the DP group is one
entry in each. vLLM groups of one member are not recorded (nothing to
disagree with; vLLM skips their collectives too).

The file, one JSON object per line, ``kind`` says which:

- ``process``: ``pid``, ``host``, ``argv``, ``t`` (first line of every file;
  a forked child, which gets a file of its own, has ``forked_from``)
- ``group``: a group's first use in this process: ``group`` (its key:
  ``<vLLM unique name>[<global ranks>]``, e.g. ``dp:0[0,1]``, for vLLM's
  groups; ``<backend>:<ranks>#<torch group name>`` for other torch groups;
  ``<backend>:unregistered:size=N:<name>`` for a stateless group), ``layer``,
  ``name``, ``ranks`` (null if unknown), ``member``
- ``op``: one call: ``seq`` (per process), ``t`` (Unix time), ``group``,
  ``member`` (global rank; the rank within the group for a stateless group),
  ``layer`` (``vllm``: GroupCoordinator; ``torch``: torch.distributed;
  ``graph``: a graph replay), ``op``, ``shapes``, ``dtypes``, and ``sizes``
  where the call passes them (all_gatherv, reduce_scatterv). A graph replay
  has ``graph`` (its id in this process) and ``groups``/``members`` (every
  group whose collectives the graph holds) instead of ``group``/``member``.
- ``graph``: a captured CUDA/XPU graph that holds collectives: ``graph``,
  ``ops`` (the calls made while capturing it; they are not ``op`` lines:
  capturing posts nothing, each replay does)
- ``step``: a model-runner step begins: ``step`` (per process), ``what``
  (``execute_model``, ``execute_dummy_batch``, ``_dummy_run``: warm-up,
  profiling and graph capture), ``tokens``, ``t``; entries that follow belong
  to it (those of the runner's ``sample_tokens`` too)
- ``stall``: written by the watchdog, see watchdog.py
- ``error``: a call the ledger failed to describe (the call itself ran)
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# How many of this process's last lines a stall dump repeats.
RECENT_LINES = 64

_lock = threading.Lock()  # seq, writes, the in-flight tables
_installed_dir: Path | None = None
_installed_path: Path | None = None
_out: int | None = None  # fd of this process's ledger file
_seq = 0
_recent: collections.deque[str] = collections.deque(maxlen=RECENT_LINES)
_tls = threading.local()  # .active: group keys of calls in progress; .graph; .step_depth
# Filled only while a watchdog runs: thread ident -> (monotonic start, line).
_inflight: dict[int, tuple[float, str]] = {}
_watching = False
_step_n = 0
# The step in progress: (monotonic start, its line); serving: a step of
# execute_model or execute_dummy_batch has begun (start-up is over).
_step_now: tuple[float, str] | None = None
_serving = False
_graph_ids = 0


class Group:
    """A group as the ledger names it; ``prefix`` is the start of its op lines."""

    __slots__ = ("key", "member", "layer", "name", "ranks", "prefix", "announced")

    def __init__(self, key: str, member: int, layer: str, name: str, ranks: list[int] | None) -> None:
        self.key, self.member, self.layer, self.name, self.ranks = key, member, layer, name, ranks
        self.prefix = f'"group":{json.dumps(key)},"member":{member}'
        self.announced = False


# ---------------------------------------------------------------- the file
def open_file(outdir: str | os.PathLike) -> tuple[Path, bool]:
    """Open this process's ledger file in ``outdir`` (once: later calls
    return the same file). Returns the file and whether this call opened it."""
    global _installed_dir, _installed_path, _out

    with _lock:
        if _installed_dir is not None:
            assert _installed_path is not None  # set together with _installed_dir
            return _installed_path, False
        directory = Path(outdir)
        directory.mkdir(parents=True, exist_ok=True)
        _out, _installed_path = _open_new(directory)
        _installed_dir = directory
    _write_process_line()
    atexit.register(_close)
    return _installed_path, True


def reopen_in_child() -> bool:
    """In a forked child (vLLM forks its engine cores and workers): a file,
    sequence numbers and steps of its own, never its parent's file. False if
    the parent had no ledger."""
    global _lock, _out, _installed_path, _seq, _step_n, _step_now, _tls
    if _installed_dir is None:
        return False
    _lock = threading.Lock()  # another thread of the parent may have held it
    _tls = threading.local()
    if _out is not None:
        os.close(_out)  # the parent's file
    _out, _installed_path = _open_new(_installed_dir)
    _seq = _step_n = 0
    _step_now = None
    _recent.clear()
    _inflight.clear()
    _write_process_line(parent=os.getppid())
    return True


def _write_process_line(parent: int | None = None) -> None:
    record = {"kind": "process", "pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv[:4]}
    if parent is not None:
        record["forked_from"] = parent
    record["t"] = round(time.time(), 6)
    write(record)


def _open_new(directory: Path) -> tuple[int, Path]:
    """DIR/<pid>.jsonl, or <pid>-2.jsonl ... if a file of that name exists:
    a process of another node (a shared directory) or an earlier process
    with the same pid (a restarted worker) wrote it."""
    for n in range(1, 1000):
        path = directory / (f"{os.getpid()}.jsonl" if n == 1 else f"{os.getpid()}-{n}.jsonl")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644), path
        except FileExistsError:
            continue
    raise OSError(f"no free ledger file name for pid {os.getpid()} in {directory}")


def installed() -> Path | None:
    """The ledger directory of this process, None if install() was not called."""
    return _installed_dir


def installed_file() -> Path | None:
    """This process's ledger file, None if install() was not called."""
    return _installed_path


def _close() -> None:
    global _out
    with _lock:
        if _out is not None:
            os.close(_out)
            _out = None


# ---------------------------------------------------------------- writing
def write(obj: dict) -> None:
    write_line(json.dumps(obj, separators=(",", ":")))


def write_line(line: str) -> None:
    # One unbuffered write per line: a process killed while stuck in a
    # collective still leaves every entry up to that collective on disk.
    with _lock:
        _write_locked(line)


def _write_locked(line: str) -> None:
    if _out is not None:
        os.write(_out, (line + "\n").encode())


def recent() -> list[str]:
    """This process's last lines (op and step lines), oldest first."""
    with _lock:
        return list(_recent)


def error(op: str, exc: BaseException) -> None:
    """A call the ledger could not describe: said in the file, never raised."""
    try:
        write({"kind": "error", "op": op, "error": repr(exc)[:500]})
    except Exception:
        pass


# ---------------------------------------------------------------- recording
def _active() -> list[str]:
    try:
        return _tls.active
    except AttributeError:
        _tls.active = []
        return _tls.active


def call(
    layer: str, op: str, group: Group, original: Callable[..., Any], args: tuple, kwargs: dict, extra: str = ""
) -> Any:
    """Run ``original(*args, **kwargs)``; record it as one entry of ``group``
    unless a call on that group is already in progress on this thread.
    ``extra``: more fields for the op line, pre-rendered (``,"sizes":[..]``)."""
    active = _active()
    if group.key in active:
        return original(*args, **kwargs)
    ident = None
    try:
        ident = _post(layer, op, group, args, kwargs, extra)
    except Exception as exc:  # never break the run for a diagnostic
        error(op, exc)
    active.append(group.key)
    try:
        return original(*args, **kwargs)
    finally:
        active.pop()
        if ident is not None:
            _inflight.pop(ident, None)


def _post(layer: str, op: str, group: Group, args: tuple, kwargs: dict, extra: str) -> int | None:
    global _seq
    shapes: list = []
    dtypes: list = []
    for value in args:
        describe(value, shapes, dtypes)
    if kwargs:
        for value in kwargs.values():
            describe(value, shapes, dtypes)
    capture = getattr(_tls, "graph", None)
    if capture is not None:
        # Captured into a graph: nothing is posted now, each replay posts it.
        capture.append({"group": group.key, "member": group.member, "layer": layer, "op": op,
                        "shapes": shapes, "dtypes": dtypes})  # fmt: skip
        _announce(group)
        return None
    # Hand-built JSON (keys and group names are escaped once, in Group; a
    # list of ints prints as JSON): json.dumps of the whole entry was half
    # of the per-call cost.
    names = '","'.join(dtypes)
    body = f'"layer":"{layer}","op":"{op}","shapes":{shapes},"dtypes":{f"""["{names}"]""" if dtypes else "[]"}'
    with _lock:
        if not group.announced:
            _announce_locked(group)
        _seq += 1
        line = f'{{"kind":"op","seq":{_seq},"t":{time.time():.6f},{group.prefix},{body}{extra}}}'
        _write_locked(line)
        _recent.append(line)
        if _watching:
            ident = threading.get_ident()
            _inflight[ident] = (time.monotonic(), line)
            return ident
    return None


def _announce(group: Group) -> None:
    with _lock:
        if not group.announced:
            _announce_locked(group)


def _announce_locked(group: Group) -> None:
    group.announced = True
    record = {"kind": "group", "group": group.key, "layer": group.layer, "name": group.name,
              "ranks": group.ranks, "member": group.member}  # fmt: skip
    _write_locked(json.dumps(record, separators=(",", ":")))


def describe(value: Any, shapes: list, dtypes: list) -> None:
    """Shapes and dtypes of a tensor, or of a list/tuple of tensors."""
    tensor = _tensor or _tensor_type()
    if isinstance(value, tensor):
        shapes.append(list(value.shape))
        dtype = value.dtype
        name = _dtype_names.get(dtype)
        if name is None:
            name = _dtype_names[dtype] = str(dtype).removeprefix("torch.")
        dtypes.append(name)
    elif type(value) in (list, tuple) and value and isinstance(value[0], tensor):
        for item in value:
            describe(item, shapes, dtypes)


_tensor: type[torch.Tensor] | None = None
_dtype_names: dict = {}  # torch.float32 -> "float32"


def _tensor_type() -> type[torch.Tensor]:
    # torch is imported by whoever records; the ledger's readers never need it.
    global _tensor
    if _tensor is None:
        import torch

        _tensor = torch.Tensor
    return _tensor


# ---------------------------------------------------------------- graphs
def capture_begin() -> None:
    """Calls from now on, on this thread, are captured into a graph."""
    _tls.graph = []


def capture_end() -> tuple[int, list[str], list[int]] | None:
    """The capture on this thread ends: (graph id, its groups, this process's
    member in each) if it holds collectives, else None."""
    global _graph_ids
    ops = getattr(_tls, "graph", None)
    _tls.graph = None
    if not ops:
        return None
    with _lock:
        _graph_ids += 1
        graph_id = _graph_ids
    write({"kind": "graph", "graph": graph_id, "ops": ops})
    keys, members = [], []
    for op in ops:
        if op["group"] not in keys:
            keys.append(op["group"])
            members.append(op["member"])
    return graph_id, keys, members


def replay(graph_id: int, keys: list[str], members: list[int]) -> None:
    """One entry for a replay of a graph that holds collectives."""
    global _seq
    groups = json.dumps(keys, separators=(",", ":"))
    with _lock:
        _seq += 1
        line = (
            f'{{"kind":"op","seq":{_seq},"t":{time.time():.6f},"layer":"graph","op":"graph_replay",'
            f'"graph":{graph_id},"groups":{groups},"members":{members}}}'
        )
        _write_locked(line)
        _recent.append(line)


# ---------------------------------------------------------------- steps
def step_begin(what: str, tokens: int) -> bool:
    """A model-runner step begins on this thread; False (and nothing
    written) if one is already in progress here: the outermost is the step.
    Every call is paired with one step_end(its result)."""
    global _step_n, _step_now, _serving
    depth = getattr(_tls, "step_depth", 0)
    _tls.step_depth = depth + 1
    if depth:
        return False
    try:
        with _lock:
            _step_n += 1
            line = f'{{"kind":"step","step":{_step_n},"what":"{what}","tokens":{int(tokens)},"t":{time.time():.6f}}}'
            _write_locked(line)
            _recent.append(line)
            if what != "_dummy_run":
                _serving = True
            if _watching:
                _step_now = (time.monotonic(), line)
    except Exception as exc:  # never break the run for a diagnostic
        error("step", exc)
    return True


def step_resume() -> bool:
    """The step in progress goes on on this thread (the runner's
    sample_tokens after execute_model): watched again, no new line. Paired
    with step_end like step_begin."""
    global _step_now
    depth = getattr(_tls, "step_depth", 0)
    _tls.step_depth = depth + 1
    if depth:
        return False
    if _watching:
        with _lock:
            last = next((line for line in reversed(_recent) if line.startswith('{"kind":"step"')), None)
            if last is not None:
                _step_now = (time.monotonic(), last)
    return True


def step_end(outermost: bool) -> None:
    global _step_now
    _tls.step_depth = getattr(_tls, "step_depth", 1) - 1
    if outermost:
        _step_now = None


class step:
    """``with ledger.step(what, tokens):`` marks a step by hand (a script's
    own loop; the model runner's steps are marked by vllm_layer.py)."""

    def __init__(self, what: str, tokens: int = 0) -> None:
        self.what, self.tokens = what, tokens

    def __enter__(self) -> step:
        self.outermost = step_begin(self.what, self.tokens)
        return self

    def __exit__(self, *exc: object) -> None:
        step_end(self.outermost)


# ---------------------------------------------------------------- watchdog's view
def watch() -> None:
    """From now on, keep the in-flight tables the watchdog reads."""
    global _watching
    _watching = True


def in_flight() -> tuple[dict[int, tuple[float, str]], tuple[float, str] | None, bool]:
    """(calls in flight per thread, the step in flight, serving has begun)."""
    with _lock:
        return dict(_inflight), _step_now, _serving
