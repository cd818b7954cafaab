"""The launcher must turn hangs and dead peers into quick, explained failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from gloo_ranks import describe, run_ranks

CHECKS = str(Path(__file__).parent / "rank_launcher_checks.py")


@pytest.mark.timeout(120)  # a launcher that ignored its deadline fails here
def test_hang_dumps_stacks_and_kills():
    results = run_ranks(f"{CHECKS}:rank1_skips_collective", 2, timeout_s=20)
    assert not any(r.ok for r in results), describe(results)
    # Both ranks' Python stacks are in the report: the waiting collective and
    # the sleeping peer.
    assert "all_reduce" in results[0].stderr, results[0].stderr[-2000:]
    assert "rank1_skips_collective" in results[1].stderr, results[1].stderr[-2000:]


def test_dead_peer_fails_fast():
    results = run_ranks(f"{CHECKS}:rank1_raises", 2, timeout_s=120)
    assert "rank 1 failed on purpose" in results[1].stderr
    # Rank 0 ended because its peer died (gloo saw the connection close, or
    # the launcher killed it after its stack dump), not at its own hang timer
    # (faulthandler's "Timeout (...)!") nor at the deadline (returncode None).
    assert results[0].returncode not in (0, None), describe(results)
    assert "Timeout (" not in results[0].stderr, describe(results)
