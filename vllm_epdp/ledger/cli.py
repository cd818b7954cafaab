"""Command line of the ledger report: ``python -m vllm_epdp.ledger`` and ``vllm-epdp ledger``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllm_epdp.ledger.report import compare, load, summary


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
