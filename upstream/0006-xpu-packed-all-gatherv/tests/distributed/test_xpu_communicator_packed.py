# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""XpuCommunicator.all_gatherv gathers a whole list with one collective.

The MoE dispatch of the allgather-reducescatter all2all gathers hidden
states, top-k weights and top-k ids, with a different token count per rank
unless the ranks are padded. One collective per call (instead of one per
tensor) keeps every rank's sequence of collectives identical whatever the
list holds. The XPU test needs two XPUs; the communicator's code is
device-independent and runs on CPU over gloo in the CPU test.
"""

import functools

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
HIDDEN_SIZE = 16
TOPK = 2
# Uneven token counts, a rank without tokens, equal counts (given and not).
SIZES_CASES = [[3, 5], [0, 4], [4, 4], None]
GATHERS = ("all_gather", "all_gather_into_tensor", "all_gather_single")


def _tokens(rank: int, num_tokens: int, device: str) -> list[torch.Tensor]:
    """One rank's dispatch list, values naming the rank and row (exact in
    every dtype used)."""
    rows = torch.arange(num_tokens, dtype=torch.float32).unsqueeze(1)
    hidden = (100 * rank + rows + torch.arange(HIDDEN_SIZE) / 16).to(torch.bfloat16)
    weights = (rank + rows / 64).expand(num_tokens, TOPK).contiguous()
    ids = (10 * rank + rows + torch.arange(TOPK)).to(torch.int32)
    return [t.to(device) for t in (hidden, weights, ids)]


def _count_gathers(monkeypatch) -> list[str]:
    """Record each all-gather this process starts (an all-gather made of
    another counts once)."""
    calls: list[str] = []
    depth = [0]

    def counted(name, fn, *args, **kwargs):
        if depth[0] == 0:
            calls.append(name)
        depth[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            depth[0] -= 1

    for name in GATHERS:
        fn = getattr(dist, name, None)
        if fn is not None:
            monkeypatch.setattr(dist, name, functools.partial(counted, name, fn))
    return calls


def _check_all_gatherv(communicator, rank: int, device: str):
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = _count_gathers(monkeypatch)
        for sizes in SIZES_CASES:
            counts = sizes or [3] * WORLD_SIZE
            expected = [
                torch.cat(parts)
                for parts in zip(
                    *(_tokens(r, counts[r], device) for r in range(WORLD_SIZE))
                )
            ]
            calls.clear()
            gathered = communicator.all_gatherv(
                _tokens(rank, counts[rank], device), dim=0, sizes=sizes
            )
            assert len(calls) == 1, f"sizes {sizes}: {len(calls)} collectives {calls}"
            for got, want in zip(gathered, expected):
                assert got.dtype == want.dtype
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            # A single tensor gives a tensor.
            hidden = communicator.all_gatherv(
                _tokens(rank, counts[rank], device)[0], dim=0, sizes=sizes
            )
            torch.testing.assert_close(hidden, expected[0], rtol=0, atol=0)


def _xpu_worker(rank, world_size, port):
    torch.accelerator.set_device_index(rank)
    init_test_distributed_environment(world_size, 1, rank, str(port), local_rank=rank)
    try:
        group = get_tp_group()
        assert isinstance(group.device_communicator, XpuCommunicator)
        _check_all_gatherv(group.device_communicator, rank, f"xpu:{rank}")
    finally:
        cleanup_dist_env_and_memory()


@pytest.mark.skipif(
    not current_platform.is_xpu() or torch.xpu.device_count() < WORLD_SIZE,
    reason="Need two XPUs",
)
def test_xpu_all_gatherv_one_collective():
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
        _check_all_gatherv(communicator, rank, "cpu")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not current_platform.is_cpu(), reason="CPU equivalent")
def test_xpu_communicator_all_gatherv_one_collective_on_gloo():
    """The XPU communicator's code on CPU tensors and gloo groups."""
    torch.multiprocessing.start_processes(
        _gloo_worker,
        args=(WORLD_SIZE, get_open_port()),
        nprocs=WORLD_SIZE,
        start_method="fork",
    )
