"""The offline example (torchrun, external launcher) in its CPU form, as CI runs
it: DP=2 + EP on 2 gloo ranks with uneven load must give the DP=1 reference's
greedy tokens exactly (fp32 tiny Qwen3-MoE)."""

import json
import subprocess
import sys

import pytest
from example_runs import OFFLINE, torchrun_example, verdict


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_offline_dp2_ep_matches_dp1(example_env, tiny_moe, offline_reference, tmp_path):
    log = tmp_path / "dp2.log"
    out = tmp_path / "dp2.json"
    outcome = torchrun_example(
        example_env,
        2,
        [
            "--device",
            "cpu",
            "--dp",
            "2",
            "--tp",
            "1",
            "--model",
            str(tiny_moe),
            "--dtype",
            "float32",
            "--split",
            "uneven",
            "--reference",
            str(offline_reference),
            "--save",
            str(out),
        ],
        log,
    )
    assert outcome.ok, outcome.describe()
    text = log.read_text(errors="replace")
    # The layout the header documents is the one vLLM built.
    assert "rank 0: dp_rank=0 tp_rank=0 ep_rank=0" in text
    assert "rank 1: dp_rank=1 tp_rank=0 ep_rank=1" in text
    # uneven split: DP rank 1 gets one prompt, rank 0 the other seven
    assert "dp_rank 1 submits prompts [7]" in text
    n = len(json.loads(offline_reference.read_text())["prompts"])
    assert verdict(log).startswith(f"VERDICT: PASS dp=2 tp=1 ep matched reference on {n}/{n}"), text[-3000:]


def test_offline_example_refuses_wrong_world_size(example_env, tmp_path):
    """A mismatch between torchrun's process count and --dp x --tp is a clear
    one-line error before vLLM starts (it would otherwise hang in init)."""
    env = dict(example_env, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
    res = subprocess.run(
        [sys.executable, str(OFFLINE), "--device", "cpu", "--dp", "2", "--tp", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "torchrun started 2 processes but --dp 2 x --tp 2 needs 4" in res.stderr
    assert "Traceback" not in res.stderr
