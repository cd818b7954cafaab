# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Uneven all-gather and reduce-scatter of the CPU communicator.

CPU data parallel + expert parallel runs the MoE all2all as an all-gather of
the tokens (hidden states, top-k weights, top-k ids) and a reduce-scatter of
the expert output, with a different token count on every rank
(AgRsAll2AllManager). Both go through the communicator's all_gatherv and
reduce_scatterv, over gloo.

Run `pytest tests/distributed/test_cpu_communicator.py`.
"""

import pytest
import torch

from tests.utils import init_test_distributed_environment
from vllm.distributed import cleanup_dist_env_and_memory
from vllm.distributed.parallel_state import get_ep_group
from vllm.platforms import current_platform
from vllm.utils.network_utils import get_open_port

if not current_platform.is_cpu():
    pytest.skip("skipping CPU-only tests", allow_module_level=True)

HIDDEN_SIZE = 16
TOPK = 2
WORLD_SIZE = 2


def _tokens(rank: int, num_tokens: int) -> list[torch.Tensor]:
    """What one rank's MoE dispatch gathers, with values that name the rank
    and the row (exact in every dtype used)."""
    rows = torch.arange(num_tokens, dtype=torch.float32).unsqueeze(1)
    hidden = (100 * rank + rows + torch.arange(HIDDEN_SIZE) / 16).to(torch.bfloat16)
    weights = (rank + rows / 64).expand(num_tokens, TOPK).contiguous()
    ids = (10 * rank + rows + torch.arange(TOPK)).to(torch.int32)
    return [hidden, weights, ids]


def _all_gatherv_worker(rank, world_size, port, dp_port, sizes_cases):
    init_test_distributed_environment(
        1,
        1,
        rank,
        str(port),
        local_rank=rank,
        data_parallel_size=world_size,
        data_parallel_master_port=dp_port,
    )
    try:
        group = get_ep_group()
        assert group.world_size == world_size
        me = group.rank_in_group
        for sizes in sizes_cases:
            expected = [
                torch.cat(parts)
                for parts in zip(*(_tokens(r, sizes[r]) for r in range(world_size)))
            ]
            gathered = group.all_gatherv(_tokens(me, sizes[me]), dim=0, sizes=sizes)
            assert len(gathered) == len(expected)
            for got, want in zip(gathered, expected):
                assert got.dtype == want.dtype
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            # The single-tensor form returns a tensor.
            hidden = group.all_gatherv(_tokens(me, sizes[me])[0], dim=0, sizes=sizes)
            torch.testing.assert_close(hidden, expected[0], rtol=0, atol=0)
    finally:
        cleanup_dist_env_and_memory()


def _reduce_scatterv_worker(rank, world_size, port, dp_port, sizes_cases):
    init_test_distributed_environment(
        1,
        1,
        rank,
        str(port),
        local_rank=rank,
        data_parallel_size=world_size,
        data_parallel_master_port=dp_port,
    )
    try:
        group = get_ep_group()
        me = group.rank_in_group
        for sizes in sizes_cases:
            rows = torch.arange(sum(sizes), dtype=torch.float32).unsqueeze(1)
            partials = [
                (r + 1) * (rows + torch.arange(HIDDEN_SIZE) / 16)
                for r in range(world_size)
            ]
            start = sum(sizes[:me])
            expected = sum(partials)[start : start + sizes[me]]
            out = group.reduce_scatterv(partials[me], dim=0, sizes=sizes)
            assert out.shape == (sizes[me], HIDDEN_SIZE)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
    finally:
        cleanup_dist_env_and_memory()


# Uneven batches, a rank with no tokens this step, equal sizes.
SIZES_CASES = [[3, 5], [0, 4], [4, 4]]


def _start(worker):
    # fork: CPU only, and the workers need nothing but this module's imports
    # (spawn would import vLLM again in every worker).
    torch.multiprocessing.start_processes(
        worker,
        args=(WORLD_SIZE, get_open_port(), get_open_port(), SIZES_CASES),
        nprocs=WORLD_SIZE,
        start_method="fork",
    )


def test_cpu_all_gatherv():
    _start(_all_gatherv_worker)


def test_cpu_reduce_scatterv():
    _start(_reduce_scatterv_worker)
