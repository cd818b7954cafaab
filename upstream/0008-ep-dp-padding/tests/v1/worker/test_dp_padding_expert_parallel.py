# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""DP padding of eager steps under expert parallelism.

With expert parallelism and data parallel size > 1, every MoE layer exchanges
all DP ranks' tokens (dispatch and combine), so every rank must run the same
token count each step, eager steps included, as CUDA graphs already make
them. Dense DP keeps its unpadded eager steps. Both model runners' DP syncs
run here over two gloo ranks: V1 (coordinate_batch_across_dp) and V2
(dispatch_cg_and_sync_dp).
"""

import pytest
import torch

from tests.utils import init_test_distributed_environment
from vllm.config import ParallelConfig
from vllm.distributed import cleanup_dist_env_and_memory
from vllm.platforms import current_platform
from vllm.utils.network_utils import get_open_port
from vllm.v1.worker.dp_utils import coordinate_batch_across_dp
from vllm.v1.worker.gpu.dp_utils import dispatch_cg_and_sync_dp

if not current_platform.is_cpu():
    # The sync runs on the DP group's gloo (CPU) group on every platform.
    pytest.skip("runs its DP ranks on CPU (gloo)", allow_module_level=True)

DP_SIZE = 2
# Token counts per DP rank in one step: uneven, an idle rank's one-token dummy
# step against a long prefill, equal.
STEPS = [[37, 1], [1, 512], [5, 5]]


def _v1_counts(rank: int, num_tokens: int, parallel_config) -> list[int]:
    _, num_tokens_across_dp, _ = coordinate_batch_across_dp(
        num_tokens_unpadded=num_tokens,
        allow_microbatching=False,
        parallel_config=parallel_config,
        cudagraph_mode=0,
    )
    return num_tokens_across_dp.tolist()


def _v2_counts(rank: int, num_tokens: int, parallel_config) -> list[int]:
    batch_desc, sync = dispatch_cg_and_sync_dp(
        None,
        1,
        num_tokens,
        None,
        DP_SIZE,
        rank,
        need_eager=True,
        parallel_config=parallel_config,
    )
    counts = sync.num_tokens_across_dp.tolist()
    # The row count this rank runs is the one the forward context reports.
    assert batch_desc.num_tokens == counts[rank], (batch_desc, counts)
    return counts


def _worker(rank, port, dp_port, runner, enable_expert_parallel):
    init_test_distributed_environment(
        1,
        1,
        rank,
        str(port),
        local_rank=rank,
        data_parallel_size=DP_SIZE,
        data_parallel_master_port=dp_port,
    )
    try:
        parallel_config = ParallelConfig(
            data_parallel_size=DP_SIZE,
            data_parallel_rank=rank,
            enable_expert_parallel=enable_expert_parallel,
        )
        sync = {"v1": _v1_counts, "v2": _v2_counts}[runner]
        for step in STEPS:
            counts = sync(rank, step[rank], parallel_config)
            expected = [max(step)] * DP_SIZE if enable_expert_parallel else list(step)
            assert counts == expected, (
                f"{runner} eager step {step}, expert parallel "
                f"{enable_expert_parallel}: DP ranks run {counts} tokens, "
                f"expected {expected}"
            )
    finally:
        cleanup_dist_env_and_memory()


def _run(runner: str, enable_expert_parallel: bool):
    # fork: CPU only, the workers need nothing but this module's imports.
    torch.multiprocessing.start_processes(
        _worker,
        args=(get_open_port(), get_open_port(), runner, enable_expert_parallel),
        nprocs=DP_SIZE,
        start_method="fork",
    )


@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_expert_parallel_eager_steps_pad_every_dp_rank(runner: str):
    _run(runner, enable_expert_parallel=True)


@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_dense_dp_eager_steps_stay_unpadded(runner: str):
    _run(runner, enable_expert_parallel=False)
