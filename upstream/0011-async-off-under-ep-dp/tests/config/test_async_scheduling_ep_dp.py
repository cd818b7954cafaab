# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Async scheduling's default under expert parallelism with DP > 1.

Under EP every DP rank must post the same collectives in the same order each
step; async scheduling overlaps one step's scheduling with the previous
step's execution, and a DP + EP run on XPU (XCCL) hung until it was turned
off. So when the user did not choose, EP with DP > 1 runs without it (with a
line saying why and how to turn it on); when the user asked for it, it stays
on, with a warning.

The decision is VllmConfig's, on every platform. The CPU platform keeps async
scheduling off for its own reasons, so on CPU the test makes the platform
leave VllmConfig's decision alone, as CUDA, ROCm and XPU do.
"""

import pytest

from vllm.config import ParallelConfig, SchedulerConfig, VllmConfig
from vllm.platforms import current_platform


@pytest.fixture
def platform_keeps_async_decision(monkeypatch):
    if not current_platform.is_cpu():
        return
    platform_cls = type(current_platform)
    check_and_update_config = platform_cls.check_and_update_config

    def keep_decision(cls, vllm_config):
        decided = vllm_config.scheduler_config.async_scheduling
        check_and_update_config.__func__(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = decided

    monkeypatch.setattr(
        platform_cls, "check_and_update_config", classmethod(keep_decision)
    )
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)


def _async_scheduling(
    enable_expert_parallel: bool, data_parallel_size: int, requested: bool | None
) -> bool:
    parallel_config = ParallelConfig(
        data_parallel_size=data_parallel_size,
        enable_expert_parallel=enable_expert_parallel,
    )
    scheduler_config = SchedulerConfig(
        max_model_len=2048, is_encoder_decoder=False, async_scheduling=requested
    )
    config = VllmConfig(
        parallel_config=parallel_config, scheduler_config=scheduler_config
    )
    return config.scheduler_config.async_scheduling


def test_async_off_by_default_under_ep_dp(platform_keeps_async_decision, caplog_vllm):
    assert _async_scheduling(True, 2, None) is False
    assert "--async-scheduling to enable it" in caplog_vllm.text


def test_explicit_async_kept_with_warning_under_ep_dp(
    platform_keeps_async_decision, caplog_vllm
):
    assert _async_scheduling(True, 2, True) is True
    assert "--no-async-scheduling" in caplog_vllm.text


@pytest.mark.parametrize(
    "enable_expert_parallel,data_parallel_size",
    [(False, 2), (True, 1)],
    ids=["dense_dp2", "ep_dp1"],
)
def test_async_default_unchanged_without_ep_dp(
    platform_keeps_async_decision, enable_expert_parallel, data_parallel_size
):
    assert _async_scheduling(enable_expert_parallel, data_parallel_size, None)
