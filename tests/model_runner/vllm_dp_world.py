"""Set up vLLM's real distributed state (world, DP, EP groups over gloo) in a
rank started by vllm_epdp.harness.ranks.run_ranks: DP = WORLD_SIZE, TP = 1, launched the
torchrun way (external_launcher), so no engine is needed."""

import json
import os
from pathlib import Path

import vllm
from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
from vllm.distributed.parallel_state import initialize_model_parallel

from vllm_epdp import model_runners
from vllm_epdp.harness.ranks import init_vllm_world

if not model_runners.has_v1(Path(vllm.__file__).parent):
    # 0.34.0 on: the x86 CPU platform refuses to configure without Triton
    # (CPUModelRunner needs it); these ranks build no runner and run no kernel.
    import vllm.triton_utils

    vllm.triton_utils.HAS_TRITON = True


def rank() -> int:
    """This rank, as run_ranks set it."""
    return int(os.environ["RANK"])


def world_size() -> int:
    return int(os.environ["WORLD_SIZE"])


def init(enable_expert_parallel: bool = True, **parallel_kwargs) -> VllmConfig:
    pc = ParallelConfig(
        data_parallel_size=world_size(),
        data_parallel_rank=rank(),
        enable_expert_parallel=enable_expert_parallel,
        distributed_executor_backend="external_launcher",
        **parallel_kwargs,
    )
    config = VllmConfig(parallel_config=pc)
    with set_current_vllm_config(config):
        init_vllm_world()
        initialize_model_parallel(1, 1)
    return config


def write_result(result: dict) -> None:
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(result, f)
