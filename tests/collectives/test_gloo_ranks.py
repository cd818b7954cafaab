"""The launcher must turn hangs and dead peers into quick, explained failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gloo_ranks import describe, run_ranks

CHECKS = str(Path(__file__).parent / "rank_launcher_checks.py")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_hang_dumps_stacks_and_kills():
    t0 = time.monotonic()
    results = run_ranks(f"{CHECKS}:rank1_skips_collective", 2, timeout_s=20)
    elapsed = time.monotonic() - t0
    assert elapsed < 30, elapsed
    assert not any(r.ok for r in results), describe(results)
    # Both ranks' Python stacks are in the report: the waiting collective and
    # the sleeping peer.
    assert "all_reduce" in results[0].stderr, results[0].stderr[-2000:]
    assert "rank1_skips_collective" in results[1].stderr, results[1].stderr[-2000:]


def test_dead_peer_fails_fast():
    t0 = time.monotonic()
    results = run_ranks(f"{CHECKS}:rank1_raises", 2, timeout_s=120)
    assert time.monotonic() - t0 < 60
    assert "rank 1 failed on purpose" in results[1].stderr
    assert not results[0].ok
