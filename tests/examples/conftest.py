"""Fixtures for the example tests: the tiny fp32 Qwen3-MoE, the CPU environment
of the examples, and one DP=1 reference run of the offline example shared by the
offline and the online test (one engine start instead of two)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from example_runs import torchrun_example, verdict

from vllm_epdp.harness import tiny_models


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory) -> Path:
    return tiny_models.build_qwen3_moe(tmp_path_factory.mktemp("examples") / "qwen3-moe")


@pytest.fixture(scope="session")
def example_env(vllm_patched) -> dict:
    env = dict(vllm_patched)
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_NUM_OF_RESERVED_CPU="0",
        HF_HUB_OFFLINE="1",
        # the scripts and vllm's own CLI must come from this venv
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    return env


@pytest.fixture(scope="session")
def offline_reference(example_env, tiny_moe, tmp_path_factory) -> Path:
    """DP=1, TP=1 run of the offline example: the reference for both tests."""
    out = tmp_path_factory.mktemp("reference")
    ref, log = out / "ref.json", out / "dp1.log"
    outcome = torchrun_example(
        example_env,
        1,
        [
            "--device",
            "cpu",
            "--dp",
            "1",
            "--tp",
            "1",
            "--model",
            str(tiny_moe),
            "--dtype",
            "float32",
            "--save",
            str(ref),
        ],
        log,
    )
    assert outcome.ok, outcome.describe()
    assert verdict(log).startswith("VERDICT: PASS"), log.read_text()[-3000:]
    return ref
