"""Read the ledgers of a run and find where the members of a process group disagree.

Each member's sequence of collectives (point-to-point ops left out: peers
post different ones) is compared entry by entry: the op, the dtypes, and for
the ops whose shapes must agree on every member (``SHAPE_CHECKED_OPS``) the
shapes. The first differing entry of a group is where a rank went its own way.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def wait_quiet(directory: str | os.PathLike, quiet_s: float = 3.0, limit_s: float = 60.0) -> bool:
    """Wait until no ledger file in ``directory`` has grown for ``quiet_s``:
    every engine ended its wave, so nothing is in flight and the ledgers can
    be compared (mid-step, one rank is an entry ahead of its peer for a
    moment). False if that took longer than ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        sizes = sorted((p.name, p.stat().st_size) for p in Path(directory).glob("*.jsonl"))
        if sizes != last:
            last, since = sizes, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
        time.sleep(0.2)
    return False
