# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Async scheduling's default under expert parallelism with DP > 1 on XPU.

Under EP every DP rank must post the same collectives in the same order each
step. A DP + EP run on XPU (XCCL) hung with its ranks in different
collectives until async scheduling was turned off. So on XPU, when the user
did not choose, EP with DP > 1 runs without it (with a line saying why and
how to turn it on); when the user asked for it, it stays on, with a warning.
Other platforms keep the default.

The decision is VllmConfig's. The test runs it as an XPU or a CUDA host
would: the platform answers is_xpu() as asked, and on CPU the platform's own
"async scheduling off" override is kept out of the way.
"""

import pytest

from vllm.config import ParallelConfig, SchedulerConfig, VllmConfig
from vllm.platforms import current_platform


@pytest.fixture
def decide_as(monkeypatch):
    def platform(name: str) -> None:
        monkeypatch.setattr(current_platform, "is_xpu", lambda: name == "xpu")
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

    return platform


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


def test_async_off_by_default_under_ep_dp_on_xpu(decide_as, caplog_vllm):
    decide_as("xpu")
    assert _async_scheduling(True, 2, None) is False
    assert "--async-scheduling to enable it" in caplog_vllm.text


def test_explicit_async_kept_with_warning_under_ep_dp_on_xpu(decide_as, caplog_vllm):
    decide_as("xpu")
    assert _async_scheduling(True, 2, True) is True
    assert "--no-async-scheduling" in caplog_vllm.text


@pytest.mark.parametrize(
    "enable_expert_parallel,data_parallel_size",
    [(False, 2), (True, 1)],
    ids=["dense_dp2", "ep_dp1"],
)
def test_async_default_unchanged_without_ep_dp_on_xpu(
    decide_as, enable_expert_parallel, data_parallel_size
):
    decide_as("xpu")
    assert _async_scheduling(enable_expert_parallel, data_parallel_size, None)


def test_async_default_unchanged_off_xpu(decide_as, caplog_vllm):
    decide_as("cuda")
    assert _async_scheduling(True, 2, None) is True
    assert _async_scheduling(True, 2, True) is True
    assert "--no-async-scheduling" not in caplog_vllm.text
