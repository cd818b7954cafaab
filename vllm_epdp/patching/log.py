"""Progress lines for the user (the patching steps, verify, fuzz): a callable per line, stderr by default."""

from __future__ import annotations

import sys
from collections.abc import Callable

Log = Callable[[str], None]


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
