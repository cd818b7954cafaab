# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Async scheduling on CPU: off unless asked for, and kept when asked for.

The CPU platform used to set `async_scheduling = False` after VllmConfig had
resolved the option, dropping an explicit `--async-scheduling` without a
word. The CPU default now lives in VllmConfig's default chain, where a value
the user set is kept.
"""

import pytest

from vllm.config import SchedulerConfig, VllmConfig
from vllm.platforms import current_platform

if not current_platform.is_cpu():
    pytest.skip("CPU platform behaviour", allow_module_level=True)


def _async_scheduling(requested: bool | None) -> bool:
    scheduler_config = SchedulerConfig(
        max_model_len=2048,
        is_encoder_decoder=False,
        async_scheduling=requested,
    )
    config = VllmConfig(scheduler_config=scheduler_config)
    return config.scheduler_config.async_scheduling


def test_explicit_async_scheduling_kept_on_cpu():
    assert _async_scheduling(True) is True


@pytest.mark.parametrize("requested", [None, False], ids=["default", "off"])
def test_async_scheduling_off_on_cpu_unless_asked(requested: bool | None):
    assert _async_scheduling(requested) is False
