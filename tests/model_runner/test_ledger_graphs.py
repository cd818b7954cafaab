"""A CUDA/XPU graph replay is one ledger entry, in every group whose
collectives the graph holds; what was posted while capturing is not an
entry; graphs without collectives leave nothing; a rank that replays another
graph than its peers is named at that replay and its step.

CPU has no graphs: the worker runs the ledger's graph layer on a stand-in
graph class with the same methods (the collectives posted while "capturing"
really run over gloo), and checks that torch.cuda.CUDAGraph and
torch.xpu.XPUGraph get the same instrumentation. 2 ranks, torch only."""

from pathlib import Path

import pytest

from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(120)
WORKER = str(Path(__file__).parent / "ledger_graph_worker.py")


def test_graph_replays_are_entries_and_a_different_graph_is_named(tmp_path):
    out = tmp_path / "ledger"
    run = run_ranks(f"{WORKER}:graph_replays", 2, tmp_path, kwargs={"ledger_dir": str(out)}, timeout_s=90)
    assert run.ok, run.describe()
    assert run.results[0]["instrumented"] == {"torch.cuda.CUDAGraph": True, "torch.xpu.XPUGraph": True}
    world, sub = "gloo:0,1#0", f"gloo:0,1#{run.results[0]['subgroup']}"
    loaded = ledger.load(out)
    assert set(loaded.groups) == {world, sub}
    for key in (world, sub):
        for member, (_, entries) in loaded.groups[key].items():
            # four replays, one per step; the captured calls are no entries
            assert [(e.op, e.step.n) for e in entries] == [("graph_replay", n) for n in range(1, 5)], (key, member)
    report = ledger.compare(out)
    assert len(report) == 2, report
    text = "\n".join(report)
    for key in (world, sub):
        assert f"group {key}: members disagree at collective #2\n" in text
    assert "all_reduce shapes=[[4, 16]] dtypes=['float32']" in report[0] + report[1]
    assert "all_reduce shapes=[[8, 16]] dtypes=['float32']" in report[0] + report[1]
    assert text.count("in step 3 (execute_model, 4 tokens)") == 4  # both members, both groups
