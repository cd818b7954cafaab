"""A forked child of a process with the ledger installed (vLLM forks its
engine cores and workers on Linux) writes a ledger file of its own, with its
own steps and its own stall watchdog, and nothing into its parent's."""

import json
from pathlib import Path

import pytest

from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(120)
WORKER = Path(__file__).parent / "ledger_fork_worker.py"


def test_a_forked_child_gets_its_own_ledger_file(tmp_path):
    out = tmp_path / "ledger"
    child_threads = tmp_path / "child-threads.json"
    run = run_ranks(WORKER, 1, tmp_path, args=[str(out), str(child_threads)], timeout_s=60)
    assert run.ok, run.describe()
    pids = run.results[0]
    parent, child = out / f"{pids['parent']}.jsonl", out / f"{pids['child']}.jsonl"
    assert ledger.load(out).steps == {parent.name: {"parent": 2}, child.name: {"child": 1}}
    first = json.loads(child.read_text().splitlines()[0])
    assert first["kind"] == "process" and first["forked_from"] == pids["parent"]
    threads = json.loads(child_threads.read_text())["threads"]
    assert "vllm-epdp-ledger-watchdog" in threads
