"""Collective ledger: which torch.distributed collectives each process posted,
per process group, in order.

Why: a DP x EP run that hangs is almost always one rank posting a different
collective than its peers (a step it skipped, a dummy step it ran twice). The
hang shows up much later and far away; the ledger shows the first entry where
the members of a group disagree, long before anything deadlocks.

Use:
  VLLM_EPDP_LEDGER=DIR vllm serve ...      (vllm_epdp/plugin.py calls install)
  python -m vllm_epdp.ledger compare DIR   (exit 0: every group agrees)
  python -m vllm_epdp.ledger summary DIR   (entries per process and group)

What is recorded: every call of the public torch.distributed collectives and
point-to-point functions (``WRAPPED_OPS``), outermost call only (the *_object
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

import argparse
import atexit
import functools
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
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
# Point-to-point: peers post different ops (send vs recv), so these are
# recorded but not compared across members.
P2P_OPS = frozenset({"send", "recv", "isend", "irecv", "send_object_list", "recv_object_list"})
# Ops whose tensor shapes must agree on every member. For the others (rooted
# ops, uneven all_to_all, pickled objects) members legitimately pass different
# shapes, so only op and dtypes are compared.
SHAPE_CHECKED_OPS = frozenset(
    {
        "all_reduce",
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_single",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "reduce_scatter_single",
        "broadcast",
        "reduce",
        "barrier",
        "monitored_barrier",
    }
)

_state_lock = threading.Lock()
_installed_dir: Path | None = None
_out: int | None = None  # fd of this process's ledger file
_tls = threading.local()  # .depth: nesting of wrapped calls on this thread
_group_keys: dict[int, tuple[str, int]] = {}  # id(group) -> (key, member)
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

    cached = _group_keys.get(id(group))
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
    # Cache only real group objects; None means "the default group", whose
    # identity is fixed once the world exists.
    if group is not None or dist.is_initialized():
        _group_keys[id(group)] = (key, member)
    return key, member


# ---------------------------------------------------------------- comparing
@dataclass
class Entry:
    seq: int
    op: str
    shapes: list
    dtypes: list

    def signature(self) -> tuple:
        shapes = self.shapes if self.op in SHAPE_CHECKED_OPS else None
        return (self.op, json.dumps(shapes), tuple(self.dtypes))

    def __str__(self) -> str:
        return f"#{self.seq} {self.op} shapes={self.shapes} dtypes={self.dtypes}"


@dataclass
class Ledger:
    # group key -> member -> (file, entries)
    groups: dict[str, dict[int, tuple[str, list[Entry]]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # global rank -> file, for processes that used registered groups
    global_ranks: dict[int, str] = field(default_factory=dict)

    def fill_silent_members(self) -> None:
        """A process that recorded collectives but none in a registered group
        it belongs to (by the group's rank list) skipped every one of them:
        count it as a member with an empty sequence."""
        for key, members in self.groups.items():
            if ":unregistered:" in key:
                continue
            ranks = key.split(":", 1)[1].split("#", 1)[0]
            for r in (int(x) for x in ranks.split(",") if x):
                if r not in members and r in self.global_ranks:
                    members[r] = (self.global_ranks[r], [])


def load(directory: str | os.PathLike) -> Ledger:
    ledger = Ledger()
    files = sorted(Path(directory).glob("*.jsonl"))
    if not files:
        ledger.problems.append(f"no ledger files (*.jsonl) in {directory}")
    for path in files:
        per_key: dict[tuple[str, int], list[Entry]] = {}
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed process
            if rec.get("kind") != "op":
                continue
            entry = Entry(rec["seq"], rec["op"], rec["shapes"], rec["dtypes"])
            per_key.setdefault((rec["group"], rec["member"]), []).append(entry)
        ranks = {m for (key, m) in per_key if ":unregistered:" not in key}
        if len(ranks) == 1:
            ledger.global_ranks[ranks.pop()] = path.name
        for (key, member), entries in per_key.items():
            members = ledger.groups.setdefault(key, {})
            if member in members:
                ledger.problems.append(
                    f"group {key}: member {member} recorded by two processes "
                    f"({members[member][0]} and {path.name}); "
                    "use one ledger directory per run"
                )
                continue
            members[member] = (path.name, entries)
    return ledger


def compare(directory: str | os.PathLike) -> list[str]:
    """Mismatches between members of every group; empty list if all agree.

    Each mismatch names the group and, for every member, the first entry at
    which the members' sequences differ (or where one sequence ended).
    """
    ledger = load(directory)
    ledger.fill_silent_members()
    report = list(ledger.problems)
    for key, members in sorted(ledger.groups.items()):
        seqs = {m: [e for e in entries if e.op not in P2P_OPS] for m, (_, entries) in members.items()}
        if len(seqs) < 2:
            continue
        longest = max(len(s) for s in seqs.values())
        for i in range(longest):
            sigs = {m: (s[i].signature() if i < len(s) else None) for m, s in seqs.items()}
            if len(set(sigs.values())) > 1:
                lines = [f"group {key}: members disagree at collective #{i}"]
                for m in sorted(seqs):
                    s = seqs[m]
                    what = str(s[i]) if i < len(s) else f"<no entry: {len(s)} in all>"
                    lines.append(f"  member {m} ({members[m][0]}): {what}")
                report.append("\n".join(lines))
                break
    return report


def summary(directory: str | os.PathLike) -> list[str]:
    ledger = load(directory)
    lines = list(ledger.problems)
    for key, members in sorted(ledger.groups.items()):
        for m, (fname, entries) in sorted(members.items()):
            counts: dict[str, int] = {}
            for e in entries:
                counts[e.op] = counts.get(e.op, 0) + 1
            lines.append(f"{key} member {m} ({fname}): {len(entries)} {counts}")
    return lines


def counts(directory: str | os.PathLike) -> dict[str, dict[int, int]]:
    """group key -> member -> number of compared (non-p2p) entries."""
    ledger = load(directory)
    ledger.fill_silent_members()
    return {
        key: {m: sum(1 for e in entries if e.op not in P2P_OPS) for m, (_, entries) in members.items()}
        for key, members in ledger.groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_epdp.ledger",
        description="Compare the collective ledgers written with VLLM_EPDP_LEDGER=DIR.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("compare", "summary"):
        p = sub.add_parser(name)
        p.add_argument("directory")
    args = parser.parse_args(argv)
    if not Path(args.directory).is_dir():
        print(f"ledger: {args.directory} is not a directory", file=sys.stderr)
        return 2
    if args.cmd == "summary":
        print("\n".join(summary(args.directory)))
        return 0
    mismatches = compare(args.directory)
    if mismatches:
        print("\n".join(mismatches))
        return 1
    ledger = load(args.directory)
    total = sum(len(e) for m in ledger.groups.values() for _, e in m.values())
    print(f"ledger: {len(ledger.groups)} groups, {total} entries, all members agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
