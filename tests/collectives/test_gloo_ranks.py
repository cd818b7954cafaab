"""The launcher must turn hangs and dead peers into quick, explained failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_epdp.harness.ranks import run_ranks

WORKER = str(Path(__file__).parent / "gloo_ranks_worker.py")


@pytest.mark.timeout(120)  # a launcher that ignored its deadline fails here
def test_hang_dumps_stacks_and_kills(tmp_path):
    run = run_ranks(f"{WORKER}:rank1_skips_collective", 2, tmp_path, timeout_s=20)
    assert not any(rc == 0 for rc in run.returncodes), run.describe()
    # Both ranks' Python stacks are in the report: the waiting collective and
    # the sleeping peer.
    assert "all_reduce" in run.outputs[0], run.outputs[0][-2000:]
    assert "rank1_skips_collective" in run.outputs[1], run.outputs[1][-2000:]


def test_dead_peer_fails_fast(tmp_path):
    run = run_ranks(f"{WORKER}:rank1_raises", 2, tmp_path, timeout_s=120)
    assert "rank 1 failed on purpose" in run.outputs[1]
    # Rank 0 ended because its peer died (gloo saw the connection close, or
    # the launcher killed it after its stack dump), not at its own hang timer
    # (faulthandler's "Timeout (...)!") nor at the deadline (returncode None).
    assert run.returncodes[0] not in (0, None), run.describe()
    assert "Timeout (" not in run.outputs[0], run.describe()
