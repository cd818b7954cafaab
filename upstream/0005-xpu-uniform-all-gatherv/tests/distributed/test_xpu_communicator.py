# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""XpuCommunicator.all_gatherv with the same token count on every rank.

Under data parallel + expert parallel with padding, every rank sends the same
number of tokens, and the MoE dispatch calls all_gatherv without sizes. The
XPU test needs two XPUs; the same communicator code runs on CPU over gloo
(only the process groups differ), which is what the CPU test does.
"""

import pytest
import torch
import torch.distributed as dist

from tests.utils import init_test_distributed_environment
from vllm.distributed import cleanup_dist_env_and_memory
from vllm.distributed.device_communicators.xpu_communicator import XpuCommunicator
from vllm.distributed.parallel_state import get_tp_group
from vllm.platforms import current_platform
from vllm.utils.network_utils import get_open_port

WORLD_SIZE = 2
NUM_TOKENS = 3
HIDDEN_SIZE = 16


def _tokens(rank: int, device: str) -> torch.Tensor:
    rows = torch.arange(NUM_TOKENS, dtype=torch.float32).unsqueeze(1)
    return (100 * rank + rows + torch.arange(HIDDEN_SIZE) / 16).to(device)


def _check_uniform_all_gatherv(communicator, rank: int, device: str):
    expected = torch.cat([_tokens(r, device) for r in range(WORLD_SIZE)])
    got = communicator.all_gatherv(_tokens(rank, device), dim=0, sizes=None)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _xpu_worker(rank, world_size, port):
    torch.accelerator.set_device_index(rank)
    init_test_distributed_environment(world_size, 1, rank, str(port), local_rank=rank)
    try:
        group = get_tp_group()
        assert isinstance(group.device_communicator, XpuCommunicator)
        _check_uniform_all_gatherv(group, group.rank_in_group, f"xpu:{rank}")
    finally:
        cleanup_dist_env_and_memory()


@pytest.mark.skipif(
    not current_platform.is_xpu() or torch.xpu.device_count() < WORLD_SIZE,
    reason="Need two XPUs",
)
def test_xpu_uniform_all_gatherv():
    torch.multiprocessing.spawn(
        _xpu_worker, args=(WORLD_SIZE, get_open_port()), nprocs=WORLD_SIZE
    )


def _gloo_worker(rank, world_size, port):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
    )
    try:
        communicator = XpuCommunicator(
            cpu_group=dist.new_group(backend="gloo"),
            device=torch.device("cpu"),
            device_group=dist.new_group(backend="gloo"),
            unique_name="ep:0",
        )
        _check_uniform_all_gatherv(communicator, rank, "cpu")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not current_platform.is_cpu(), reason="CPU equivalent")
def test_xpu_communicator_uniform_all_gatherv_on_gloo():
    """The XPU communicator's code on CPU tensors and gloo groups: the
    collectives are called the same way, and gloo checks their arguments."""
    torch.multiprocessing.start_processes(
        _gloo_worker,
        args=(WORLD_SIZE, get_open_port()),
        nprocs=WORLD_SIZE,
        start_method="fork",
    )
