"""The collective ledger records what each rank posted and finds the first
entry where the members of a group disagree."""

import subprocess
import sys
from pathlib import Path

import pytest

from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(180)
HERE = Path(__file__).parent


def test_ledger_agreeing_ranks(tmp_path):
    out = tmp_path / "ledger"
    run = run_ranks(HERE / "ledger_worker.py", 2, tmp_path, args=["agree", str(out)])
    assert run.ok, run.describe()
    assert ledger.compare(out) == []
    counts = ledger.counts(out)
    # all_reduce, broadcast and all_gather_object on the world; the *_object
    # helper's inner gathers are not counted twice.
    assert counts["gloo:0,1#0"] == {0: 3, 1: 3}
    # all_gather_into_tensor, all_gather_single and barrier on the subgroup.
    assert counts["gloo:0,1#1"] == {0: 3, 1: 3}
    for cmd in (["-m", "vllm_epdp.diagnostics.ledger"], ["-m", "vllm_epdp.cli", "ledger"]):
        cli = subprocess.run(
            [sys.executable, *cmd, "compare", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "all members agree" in cli.stdout


def test_ledger_finds_the_extra_collective(tmp_path):
    out = tmp_path / "ledger"
    run = run_ranks(HERE / "ledger_worker.py", 2, tmp_path, args=["diverge", str(out)])
    assert run.ok, run.describe()
    assert run.results[1].get("timed_out"), "rank 1's extra all_reduce should time out"
    report = ledger.compare(out)
    assert len(report) == 1, report
    text = report[0]
    assert "gloo:0,1#0" in text and "collective #3" in text
    assert "member 0" in text and "<no entry: 3 in all>" in text
    assert "member 1" in text and "all_reduce shapes=[[2]] dtypes=['int32']" in text
    cli = subprocess.run(
        [sys.executable, "-m", "vllm_epdp.diagnostics.ledger", "compare", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1 and "members disagree" in cli.stdout


def test_a_destroyed_and_recreated_group_gets_its_own_key(tmp_path):
    """A hundred subgroups, each destroyed before the next is made (some get
    the id() of an earlier one): every one is its own group in the ledger,
    with its one all_reduce, not counted as an earlier group's."""
    out = tmp_path / "ledger"
    run = run_ranks(HERE / "ledger_regroup_worker.py", 2, tmp_path, args=[str(out)])
    assert run.ok, run.describe()
    names = run.results[0]["names"]
    assert names == run.results[1]["names"] and len(set(names)) == 100
    assert run.results[0]["reused_ids"] + run.results[1]["reused_ids"] > 0, "no id() was reused: the test shows nothing"
    counts = ledger.counts(out)
    assert {key: n for key, n in counts.items() if key != "gloo:0,1#0"} == {
        f"gloo:0,1#{name}": {0: 1, 1: 1} for name in names
    }
