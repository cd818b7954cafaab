"""Patch 0011: on XPU, async scheduling is off by default under EP with
DP > 1 (with a log line saying why) and honoured with a deadlock warning when
asked for; every other platform keeps vLLM's default."""

from pathlib import Path

import pytest

from vllm_epdp import model_runners
from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(300)
HERE = Path(__file__).parent
# vLLM's own line when async scheduling is on under DP (V1 moves its DP sync to gloo).
NCCL_OFF_FOR_DP_SYNC = ["INFO", "Disabling NCCL for DP synchronization when using async scheduling."]


def _decisions(env, platform, tmp_path):
    run = run_ranks(HERE / "async_config_worker.py", 1, tmp_path / platform, env=env, args=[platform], timeout_s=240)
    assert run.ok, run.describe()
    return run.results[0]


def _messages(case, level):
    return [msg for lvl, msg in case["log"] if lvl == level]


@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_async_off_by_default_under_ep_dp_on_xpu(series_env, tmp_path, runner):
    # The decision is VllmConfig's, before either runner exists: the same for
    # both (V2 here through the Triton stand-in, as on XPU by default).
    d = _decisions(model_runners.runner_env(runner, series_env), "xpu-like", tmp_path)
    assert {c["use_v2_model_runner"] for c in d.values()} == {runner == "v2"}
    case = d["ep_dp2_default"]
    assert case["async_scheduling"] is False
    (info,) = _messages(case, "INFO")
    assert "XPU" in info and "expert parallelism" in info and "--async-scheduling" in info
    # Without async scheduling the DP metadata all-reduce goes back to the
    # device group (vLLM's own rule).
    assert case["disable_nccl_for_dp_sync"] is False
    # Unchanged on XPU too: dense DP and EP without DP keep async scheduling.
    assert d["dense_dp2_default"]["async_scheduling"] is True
    assert d["ep_dp1_default"]["async_scheduling"] is True
    assert d["dense_dp2_default"]["log"] == d["ep_dp1_default"]["log"] == []


def test_explicit_async_honoured_with_deadlock_warning_on_xpu(series_env, tmp_path):
    case = _decisions(series_env, "xpu-like", tmp_path)["ep_dp2_explicit"]
    assert case["async_scheduling"] is True
    (warning,) = _messages(case, "WARNING")
    assert "deadlock" in warning and "--no-async-scheduling" in warning


def test_async_default_kept_elsewhere(series_env, tmp_path):
    # Off the XPU, async scheduling kept every group's order in the async
    # campaign (0016 in the series): vLLM's default stands, with no warning.
    d = _decisions(series_env, "cuda-like", tmp_path)
    assert d["ep_dp2_default"]["async_scheduling"] is True
    assert d["ep_dp2_default"]["log"] == [NCCL_OFF_FOR_DP_SYNC]
    assert d["ep_dp2_explicit"]["async_scheduling"] is True
    assert _messages(d["ep_dp2_explicit"], "WARNING") == []


def test_cpu_flow_runs_the_same_decision(series_env, tmp_path):
    # Real CPU platform, nothing faked: 0011's helper runs and finds no XPU,
    # so CPU's own default (off unless asked, 0014) decides, silently, and
    # an explicit request is kept without a warning.
    d = _decisions(series_env, "cpu", tmp_path)
    case = d["ep_dp2_default"]
    assert case["async_scheduling"] is False
    assert _messages(case, "INFO") == _messages(case, "WARNING") == []
    assert case["disable_nccl_for_dp_sync"] is False
    explicit = d["ep_dp2_explicit"]
    assert explicit["async_scheduling"] is True
    assert _messages(explicit, "WARNING") == []


def test_without_patch_async_on_under_ep_dp_on_xpu(series_without, tmp_path):
    d = _decisions(series_without("0011"), "xpu-like", tmp_path)
    case = d["ep_dp2_default"]
    # The known hazard: on by default, silently.
    assert case["async_scheduling"] is True
    assert case["log"] == [NCCL_OFF_FOR_DP_SYNC]
    assert _messages(d["ep_dp2_explicit"], "WARNING") == []
