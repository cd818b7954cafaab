"""Read a run's ledger files (the format is in vllm_epdp/diagnostics/ledger/record.py) into per-group sequences.

Nothing is skipped in silence: a line that cannot be read is a problem
(file and line number), and so is an ``error`` line (an entry the ledger
failed to write, which makes a false disagreement possible). The one
exception is a last line without its newline: the process was killed while
writing it, which is how a hung run usually ends; it is a note, not a
problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# Point-to-point: peers post different ops (send vs recv), so these are
# recorded but not compared across members.
P2P_OPS = frozenset(
    {
        "send",
        "recv",
        "isend",
        "irecv",
        "send_object_list",
        "recv_object_list",
        # vLLM GroupCoordinator
        "send_object",
        "recv_object",
        "isend_object",
        "send_tensor_dict",
        "isend_tensor_dict",
        "recv_tensor_dict",
        "irecv_tensor_dict",
    }
)
# Ops whose tensor shapes must agree on every member. For the others (rooted
# ops, uneven all_to_all, pickled objects, vLLM's uneven all_gatherv /
# reduce_scatterv and MoE dispatch/combine) members legitimately pass
# different shapes, so only op, dtypes and the sizes list are compared.
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
        "gather",
        # vLLM's fused TP all-reduce + RMSNorm (FlashInfer)
        "flashinfer_allreduce_fusion",
    }
)
LAYERS = {"vllm": "vLLM GroupCoordinator", "torch": "torch.distributed", "graph": "graph replay"}


@dataclass
class Step:
    n: int
    what: str
    tokens: int

    def __str__(self) -> str:
        return f"step {self.n} ({self.what}, {self.tokens} token{'' if self.tokens == 1 else 's'})"


@dataclass
class Captured:
    """One call captured into a graph, as a replay of it posts it."""

    op: str
    shapes: list
    dtypes: list
    layer: str

    def signature(self) -> tuple:
        return (
            self.op,
            self.layer,
            json.dumps(self.shapes if self.op in SHAPE_CHECKED_OPS else None),
            tuple(self.dtypes),
        )

    def __str__(self) -> str:
        return f"{self.op} shapes={self.shapes} dtypes={self.dtypes}"


@dataclass
class Entry:
    seq: int
    op: str
    shapes: list
    dtypes: list
    layer: str = "torch"
    sizes: list | None = None
    step: Step | None = None
    t: float | None = None
    line: int = 0
    graph: int | None = None
    captured: list[Captured] = field(default_factory=list)  # a replay's calls on this entry's group

    def signature(self) -> tuple:
        if self.op == "graph_replay":
            return (self.op, tuple(c.signature() for c in self.captured))
        shapes = self.shapes if self.op in SHAPE_CHECKED_OPS else None
        return (self.op, self.layer, json.dumps(shapes), tuple(self.dtypes), json.dumps(self.sizes))

    def __str__(self) -> str:
        if self.op == "graph_replay":
            held = "; ".join(str(c) for c in self.captured)
            return f"#{self.seq} graph_replay of graph {self.graph} (holds here: {held})"
        sizes = f" sizes={self.sizes}" if self.sizes is not None else ""
        layer = LAYERS.get(self.layer, self.layer)
        return f"#{self.seq} {self.op} shapes={self.shapes} dtypes={self.dtypes}{sizes} via {layer}"


@dataclass
class Stall:
    file: str
    line: int
    record: dict

    def waiting(self) -> str:
        waiting = self.record.get("waiting", {})
        if "entry" in waiting:
            e = waiting["entry"]
            return f"{e.get('op')} on {e.get('group')} (#{e.get('seq')}, thread {waiting.get('thread')})"
        s = waiting.get("step", {})
        return f"step {s.get('step')} ({s.get('what')}, {s.get('tokens')} tokens) with no collective in flight"


@dataclass
class GroupInfo:
    layer: str
    name: str
    ranks: list[int] | None


@dataclass
class Ledger:
    # group key -> member -> (file, entries)
    groups: dict[str, dict[int, tuple[str, list[Entry]]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stalls: list[Stall] = field(default_factory=list)
    info: dict[str, GroupInfo] = field(default_factory=dict)
    # global rank -> file, for processes that used groups with known ranks
    global_ranks: dict[int, str] = field(default_factory=dict)
    # file -> the last step it began (None: none)
    last_steps: dict[str, Step | None] = field(default_factory=dict)
    # file -> step kind (Step.what) -> how many began
    steps: dict[str, dict[str, int]] = field(default_factory=dict)
    files: int = 0
    entries: int = 0

    def ranks_of(self, key: str) -> list[int] | None:
        info = self.info.get(key)
        if info is not None:
            return info.ranks
        if ":unregistered:" in key or ":" not in key:
            return None
        # Ledgers written before group lines existed: "backend:0,1#name".
        ranks = key.split(":", 1)[1].split("#", 1)[0]
        try:
            return [int(x) for x in ranks.split(",") if x]
        except ValueError:
            return None

    def fill_silent_members(self) -> None:
        """A process that recorded collectives but none in a group it belongs
        to (by the group's rank list) skipped every one of them: count it as
        a member with an empty sequence."""
        for key, members in self.groups.items():
            for r in self.ranks_of(key) or []:
                if r not in members and r in self.global_ranks:
                    members[r] = (self.global_ranks[r], [])


def load(directory: str | os.PathLike) -> Ledger:
    ledger = Ledger()
    # Subdirectories too: the ledger directories of several nodes, copied
    # into one directory each, are read as one run.
    files = sorted(Path(directory).rglob("*.jsonl"))
    ledger.files = len(files)
    if not files:
        ledger.problems.append(f"no ledger files (*.jsonl) in {directory}")
    for path in files:
        _load_file(path, path.relative_to(directory).as_posix(), ledger)
    if files and not ledger.entries:
        ledger.problems.append(
            f"no readable collective entry in {directory} ({len(files)} file(s)): nothing to compare; "
            "was VLLM_EPDP_LEDGER set for the processes that ran the model?"
        )
    return ledger


def _load_file(path: Path, name: str, ledger: Ledger) -> None:
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        # No newline after the last line: cut short by a killed process.
        ledger.notes.append(
            f"{name} line {len(lines)}: last line cut short (the process was killed while writing it); not read"
        )
        lines.pop()
    step: Step | None = None
    graphs: dict[int, list[dict]] = {}
    per_key: dict[tuple[str, int], list[Entry]] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            kind = rec["kind"]
            if kind == "op":
                if "groups" in rec:
                    _add_replay(rec, number, step, graphs, per_key, ledger, name)
                else:
                    entry = Entry(
                        rec["seq"], rec["op"], rec["shapes"], rec["dtypes"], rec.get("layer", "torch"),
                        rec.get("sizes"), step, rec.get("t"), number,
                    )  # fmt: skip
                    per_key.setdefault((rec["group"], rec["member"]), []).append(entry)
                ledger.entries += 1
            elif kind == "step":
                step = Step(rec["step"], rec["what"], rec["tokens"])
                kinds = ledger.steps.setdefault(name, {})
                kinds[step.what] = kinds.get(step.what, 0) + 1
            elif kind == "group":
                ledger.info.setdefault(rec["group"], GroupInfo(rec["layer"], rec["name"], rec["ranks"]))
            elif kind == "graph":
                graphs[rec["graph"]] = rec["ops"]
            elif kind == "stall":
                ledger.stalls.append(Stall(name, number, rec))
            elif kind == "error":
                ledger.problems.append(
                    f"{name} line {number}: the ledger failed to record a call ({rec.get('op')}: "
                    f"{rec.get('error')}); entries after it may look like a disagreement"
                )
            elif kind != "process":
                ledger.notes.append(f"{name} line {number}: record kind {kind!r} not known to this version; not read")
        except (ValueError, KeyError, TypeError) as exc:
            text = raw[:80].decode(errors="replace")
            ledger.problems.append(
                f"{name} line {number}: unreadable ledger line ({type(exc).__name__}: {exc}): {text}"
            )
    ledger.last_steps[name] = step
    ranks = {m for (key, m) in per_key if ledger.ranks_of(key) is not None}
    if len(ranks) == 1:
        ledger.global_ranks[ranks.pop()] = name
    for (key, member), entries in per_key.items():
        members = ledger.groups.setdefault(key, {})
        if member in members:
            ledger.problems.append(
                f"group {key}: member {member} recorded by two processes "
                f"({members[member][0]} and {name}); use one ledger directory per run"
            )
            continue
        members[member] = (name, entries)


def _add_replay(
    rec: dict, number: int, step: Step | None, graphs: dict, per_key: dict, ledger: Ledger, name: str
) -> None:
    ops = graphs.get(rec["graph"])
    if ops is None:
        raise KeyError(f"graph {rec['graph']} replayed before its graph line")
    for key, member in zip(rec["groups"], rec["members"]):
        captured = [Captured(o["op"], o["shapes"], o["dtypes"], o["layer"]) for o in ops if o["group"] == key]
        entry = Entry(
            rec["seq"], "graph_replay", [], [], "graph", None, step, rec.get("t"), number, rec["graph"], captured
        )
        per_key.setdefault((key, member), []).append(entry)
