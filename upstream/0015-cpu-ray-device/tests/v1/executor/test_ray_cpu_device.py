# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The CPU platform's Ray device: a worker is one logical Ray CPU.

Every Ray path (DP placement groups, the executors' placement group, the
bundles their workers go to) counts devices by the platform's
`ray_device_key`; an empty key stops `--data-parallel-backend ray` with "No
 found in Ray cluster." and the Ray executors with "current platform cpu
does not support ray". With the key "CPU", a worker asks for its CPUs as
`num_cpus` (Ray rejects "CPU" in `resources`), and holds no accelerator ids.
"""

import pytest

from vllm.platforms import current_platform
from vllm.platforms.cpu import CpuPlatform


def test_cpu_platform_names_a_ray_device():
    assert CpuPlatform.ray_device_key == "CPU"


@pytest.mark.skipif(not current_platform.is_cpu(), reason="CPU platform")
@pytest.mark.parametrize("num_devices", [1, 2])
def test_cpu_ray_worker_resources(num_devices: int):
    from vllm.v1.executor.ray_utils import (
        ray_accelerator_ids,
        ray_worker_resource_options,
    )

    assert ray_worker_resource_options(num_devices) == {
        "num_cpus": num_devices,
        "num_gpus": 0,
    }
    assert ray_accelerator_ids("CPU") == []


@pytest.mark.parametrize(
    "device_key,expected",
    [
        ("GPU", {"num_cpus": 0, "num_gpus": 1}),
        ("TPU", {"num_cpus": 0, "num_gpus": 0, "resources": {"TPU": 1}}),
    ],
)
def test_accelerator_ray_worker_resources_unchanged(
    monkeypatch, device_key: str, expected: dict
):
    """What the executors asked for before, on every other platform."""
    from vllm.v1.executor import ray_utils

    monkeypatch.setattr(
        ray_utils.current_platform, "ray_device_key", device_key, raising=False
    )
    assert ray_utils.ray_worker_resource_options(1) == expected
