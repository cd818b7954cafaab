"""verify's judgement of finished runs and its table (fast: no vLLM; the
runs are made up, the way runner.run_offline returns them)."""

from __future__ import annotations

import json

from vllm_epdp.verify.assess import assess, ran_runner
from vllm_epdp.verify.offline import RunResult
from vllm_epdp.verify.plan import Config, Model
from vllm_epdp.verify.table import format_table

MODEL = Model("qwen3-moe", "/nowhere", "float32", "exact")
REF = Config("ref-moe", "qwen3-moe", 1, 1, False, "mp", (), reference=True, runner="v1")
TARGET = Config("dp2-ep", "qwen3-moe", 2, 1, True, "mp", ("even",), runner="v1")
JUDGE = {"deep": False, "ledger": False, "tolerance": 1e-3}


def output(tokens: list[int]) -> dict:
    return {"token_ids": tokens, "logprobs": [{str(t): -1.0} for t in tokens]}


def run(config: Config, tmp_path, tokens: list[int], runner: str = "V1", error: str = "") -> RunResult:
    workdir = tmp_path / config.key
    (workdir / "nan_watch").mkdir(parents=True)
    watch = {"info": {"runner": runner}, "steps": 4, "padded_steps": 1, "padded_rows": 3, "modules": {}}
    (workdir / "nan_watch" / "nan_watch-1.json").write_text(json.dumps(watch))
    outputs = {} if error else {"even": {"even-r0-0": output(tokens)}}
    return RunResult(config, ["even"], outputs, None, 12.0, 5.0, workdir, error)


def test_matching_target_passes_and_the_table_says_so(tmp_path):
    ref = run(REF, tmp_path, [1, 2, 3])
    rows = [assess(ref, MODEL, None, **JUDGE), assess(run(TARGET, tmp_path, [1, 2, 3]), MODEL, ref, **JUDGE)]
    assert [r["verdict"] for r in rows] == ["PASS", "PASS"]
    assert rows[1]["tokens_matched"] == rows[1]["tokens_total"] == 3 and rows[1]["runner"] == "V1"
    assert rows[1]["padding"]["padded_rows"] == 3
    report = {"ok": True, "vllm": {"version": "0.32.0", "location": "/v"}, "tolerance": 1e-3}
    table = format_table({**report, "deep": False, "wall_s": 30.0, "configs": rows})
    assert "dp2-ep (DP=2+TP=1+EP offline, qwen3-moe float32)" in table
    assert "3/3" in table and "3 in 1 steps" in table
    assert table.endswith("total 30 s: all configurations match DP=1")


def test_a_token_mismatch_fails_with_the_place(tmp_path):
    ref = run(REF, tmp_path, [1, 2, 3])
    row = assess(run(TARGET, tmp_path, [1, 9, 3]), MODEL, ref, **JUDGE)
    assert row["verdict"] == "FAIL" and row["tokens_matched"] == 1
    assert row["problems"][0].startswith("even: ")


def test_a_fallback_to_the_other_runner_fails(tmp_path):
    ref = run(REF, tmp_path, [1, 2])
    row = assess(run(TARGET, tmp_path, [1, 2], runner="V2"), MODEL, ref, **JUDGE)
    assert row["verdict"] == "FAIL"
    assert "asked for model runner V1, but vLLM ran V2" in row["problems"][0]
    assert ran_runner(tmp_path / TARGET.key, None) is None  # no vLLM log line either


def test_a_crashed_run_is_an_error_and_a_target_without_reference_too(tmp_path):
    crashed = assess(run(TARGET, tmp_path, [], error="rank0: exit code 1"), MODEL, None, **JUDGE)
    assert crashed["verdict"] == "ERROR" and "rank0: exit code 1" in crashed["problems"]
    orphan = assess(
        run(Config("tp2-ep", "qwen3-moe", 1, 2, True, "mp", ("even",)), tmp_path, [1]), MODEL, None, **JUDGE
    )
    assert orphan["verdict"] == "ERROR" and "no usable DP=1 reference run (see its row)" in orphan["problems"]
