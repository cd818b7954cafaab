"""What a run's ledgers say: where the members of a group part, the stall dumps, counts.

Each member's sequence of collectives (point-to-point ops left out: peers
post different ones) is compared entry by entry: the op, the layer it was
recorded at, the dtypes, the ``sizes`` list where there is one, and for the
ops whose shapes must agree on every member (read.SHAPE_CHECKED_OPS) the
shapes; a graph replay by what the graph holds on that group. The first
differing entry of a group is where a rank went its own way; the report
names what each member posted there and the model-runner step it belongs to.

``report(DIR)`` is everything (for the command line); ``compare(DIR)`` the
list of problems only (empty: every group agrees, every line was read, no
stall was dumped), which is what verify and the fuzzer check.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vllm_epdp.diagnostics.ledger.read import LAYERS, P2P_OPS, Entry, Ledger, Stall, load


@dataclass
class Report:
    ledger: Ledger
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def report(directory: str | os.PathLike) -> Report:
    ledger = load(directory)
    ledger.fill_silent_members()
    out = Report(ledger, list(ledger.problems), list(ledger.notes))
    parted = []
    for key, members in ledger.groups.items():
        found = _parting(ledger, key, members)
        if found is not None:
            parted.append(found)
    # The earliest parting first: later ones are often its consequences.
    parted.sort(key=lambda p: p[0])
    out.problems += [text for _, text in parted]
    out.problems += [_stall_line(s, directory) for s in ledger.stalls]
    return out


def compare(directory: str | os.PathLike) -> list[str]:
    """Problems: members of a group that disagree (the first differing entry
    of each group, each member's entry and step), unreadable lines, stall
    dumps, no entry at all. Empty list if all agree."""
    return report(directory).problems


def _parting(ledger: Ledger, key: str, members: dict) -> tuple[float, str] | None:
    seqs = {m: [e for e in entries if e.op not in P2P_OPS] for m, (_, entries) in members.items()}
    if len(seqs) < 2:
        return None
    longest = max(len(s) for s in seqs.values())
    for i in range(longest):
        sigs = {m: (s[i].signature() if i < len(s) else None) for m, s in seqs.items()}
        if len(set(sigs.values())) == 1:
            continue
        lines = [f"group {key}: members disagree at collective #{i}"]
        info = ledger.info.get(key)
        what = f"{LAYERS.get(info.layer, info.layer)} group {info.name}, ranks {info.ranks}" if info else "group"
        lines.append(f"  {what}; entries per member: " + ", ".join(f"{m}: {len(seqs[m])}" for m in sorted(seqs)))
        times = []
        for m in sorted(seqs):
            fname = members[m][0]
            s = seqs[m]
            if i < len(s):
                e = s[i]
                times.append(e.t or 0.0)
                lines.append(f"  member {m} ({fname} line {e.line}): {e}; {_step_text(e)}")
            else:
                last = ledger.last_steps.get(fname)
                after = f"its last step: {last}" if last else "no model-runner step recorded"
                lines.append(f"  member {m} ({fname}): <no entry: {len(s)} in all>; {after}")
        return (min(times) if times else 0.0), "\n".join(lines)
    return None


def _step_text(entry: Entry) -> str:
    return f"in {entry.step}" if entry.step else "before any model-runner step"


def _stall_line(stall: Stall, directory: str | os.PathLike) -> str:
    rec = stall.record
    return (
        f"stall: {stall.file} line {stall.line} (pid {rec.get('pid')}): {stall.waiting()} had not finished "
        f"after {rec.get('waited_s')} s; {len(rec.get('threads', []))} threads' stacks dumped: "
        f"vllm-epdp ledger stalls {directory}"
    )


def stalls(directory: str | os.PathLike) -> list[str]:
    """Every stall dump in full: what waited, the last entries, each thread's stack."""
    ledger = load(directory)
    out = []
    for stall in ledger.stalls:
        rec = stall.record
        lines = [_stall_line(stall, directory), "  last entries (oldest first):"]
        for last in rec.get("last", [])[-12:]:
            lines.append(f"    {json.dumps(last)}")
        for thread in rec.get("threads", []):
            lines.append(f"  thread {thread.get('name')} ({thread.get('ident')}):")
            lines += [f"    {frame}" for frame in thread.get("stack", [])]
        out.append("\n".join(lines))
    return out


def summary(directory: str | os.PathLike) -> list[str]:
    ledger = load(directory)
    lines = list(ledger.problems) + [f"note: {n}" for n in ledger.notes]
    for key, members in sorted(ledger.groups.items()):
        for m, (fname, entries) in sorted(members.items()):
            counts: dict[str, int] = {}
            for e in entries:
                counts[e.op] = counts.get(e.op, 0) + 1
            lines.append(f"{key} member {m} ({fname}): {len(entries)} {counts}")
    lines += [_stall_line(s, directory) for s in ledger.stalls]
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
        sizes = sorted((str(p), p.stat().st_size) for p in Path(directory).rglob("*.jsonl"))
        if sizes != last:
            last, since = sizes, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
        time.sleep(0.2)
    return False
