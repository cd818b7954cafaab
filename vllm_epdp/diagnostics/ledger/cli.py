"""Command line of the ledger report: ``python -m vllm_epdp.diagnostics.ledger`` and ``vllm-epdp ledger``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllm_epdp.diagnostics.ledger.report import report, stalls, summary

DESCRIPTION = """\
Read the collective ledgers written with VLLM_EPDP_LEDGER=DIR (one file per
process) and say where the members of a process group part.

  compare DIR   the first collective where the members of each group
                disagree: what each member posted there (op, shapes, dtypes,
                the layer: vLLM GroupCoordinator, torch.distributed or a graph
                replay) and the model-runner step it belongs to; the stall
                dumps (VLLM_EPDP_LEDGER_STALL_S); unreadable lines.
                Exit 0: every group agrees; 1: a disagreement, a stall, an
                unreadable line or no entry at all; 2: DIR is not a directory.
  summary DIR   entries per process and group, per op (a DP-group count that
                differs between ranks is a drift)
  stalls DIR    every stall dump in full: each thread's stack
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_epdp.diagnostics.ledger",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("compare", "summary", "stalls"):
        p = sub.add_parser(name)
        p.add_argument("directory")
    args = parser.parse_args(argv)
    if not Path(args.directory).is_dir():
        print(f"ledger: {args.directory} is not a directory", file=sys.stderr)
        return 2
    if args.cmd == "summary":
        print("\n".join(summary(args.directory)))
        return 0
    if args.cmd == "stalls":
        dumps = stalls(args.directory)
        print("\n\n".join(dumps) if dumps else f"ledger: no stall dump in {args.directory}")
        return 0
    result = report(args.directory)
    for note in result.notes:
        print(f"note: {note}")
    ledger = result.ledger
    sizes = f"{ledger.files} files, {len(ledger.groups)} groups, {ledger.entries} entries"
    if result.problems:
        print("\n".join(result.problems))
        print(f"ledger: {sizes}: {len(result.problems)} problem(s)")
        return 1
    print(f"ledger: {sizes}, all members agree")
    return 0
