"""The ledger's stall watchdog on a real stalled collective: two ranks post
different collectives on vLLM's groups (gloo), both wait; every rank writes a
stall record with its last entries and the stack of every thread, and
``ledger compare`` names where the members part (what each posted, in which
step) and the dumps. The groups time out after a few seconds and the ranks
exit; run_ranks kills whatever is left."""

import subprocess
import sys
from pathlib import Path

import pytest

from vllm_epdp.diagnostics import ledger, plugin
from vllm_epdp.errors import EpdpError
from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(180)
WORKER = str(Path(__file__).parent / "ledger_stall_worker.py")
STALL_S = 2.0


def test_every_rank_dumps_every_thread_and_compare_names_the_parting(vllm_patched, tmp_path):
    out = tmp_path / "ledger"
    run = run_ranks(
        f"{WORKER}:stalled_collective", 2, tmp_path, env=vllm_patched,
        kwargs={"ledger_dir": str(out), "stall_s": STALL_S}, timeout_s=120,
    )  # fmt: skip
    assert run.ok, run.describe()
    assert all(r.get("error") for r in run.results), run.results  # the groups timed out
    loaded = ledger.load(out)
    by_op = {}
    for stall in loaded.stalls:
        rec = stall.record
        assert rec["stall_s"] == STALL_S and rec["waited_s"] >= STALL_S
        entry = rec["waiting"]["entry"]
        by_op[(entry["group"].split(":")[0], entry["op"])] = rec
        threads = {t["name"]: t["stack"] for t in rec["threads"]}
        assert "MainThread" in threads and "ledger-test-sleeper" in threads, sorted(threads)
        assert any("stalled_collective" in frame for frame in threads["MainThread"])
        assert any(" in wait" in frame for frame in threads["ledger-test-sleeper"])
        assert rec["last"][-1]["op"] == entry["op"]  # its last entries end with the stalled one
    # one dump per rank, each in the collective it posted
    assert sorted(by_op) == [("dp", "all_reduce"), ("ep", "all_gather")], sorted(by_op)
    report = ledger.compare(out)
    parted = [p for p in report if "members disagree" in p]
    assert len(parted) == 2 and sum(p.startswith("stall: ") for p in report) == 2, report
    dp_part = next(p for p in parted if p.startswith("group dp:"))
    assert "members disagree at collective #2\n" in dp_part
    assert "all_reduce shapes=[[4]] dtypes=['float32'] via vLLM GroupCoordinator; in step 3 (execute_model" in dp_part
    assert "<no entry: 2 in all>; its last step: step 3 (execute_model, 4 tokens)" in dp_part
    stacks = subprocess.run(
        [sys.executable, "-m", "vllm_epdp.diagnostics.ledger", "stalls", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stacks.returncode == 0 and stacks.stdout.count("thread ledger-test-sleeper") == 2, stacks.stdout


def test_the_stall_threshold_is_read_or_refused_with_a_reason(monkeypatch):
    monkeypatch.delenv("VLLM_EPDP_LEDGER_STALL_S", raising=False)
    assert plugin.stall_seconds() is None
    monkeypatch.setenv("VLLM_EPDP_LEDGER_STALL_S", "120")
    assert plugin.stall_seconds() == 120.0
    for bad in ("2m", "0", "-5"):
        monkeypatch.setenv("VLLM_EPDP_LEDGER_STALL_S", bad)
        with pytest.raises(EpdpError, match="give the stall threshold in seconds"):
            plugin.stall_seconds()
