"""vLLM's own parallel state on the gloo world that vllm_epdp.harness.function_process created: DP =
world size, EP on, external-launcher style (no engine), so that the DP and EP
GroupCoordinators dispatch to the communicators vLLM builds itself."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def dp_ep_groups(rank: int, world_size: int):
    """Yields the VllmConfig, current while the groups are in use."""
    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )

    os.environ.setdefault("VLLM_DIST_IDENT", "collectives-test")
    config = VllmConfig(
        parallel_config=ParallelConfig(
            data_parallel_size=world_size,
            data_parallel_rank=rank,
            enable_expert_parallel=True,
            distributed_executor_backend="external_launcher",
        )
    )
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=world_size, rank=rank, local_rank=rank, backend="gloo")
        initialize_model_parallel(1, 1)
        yield config
