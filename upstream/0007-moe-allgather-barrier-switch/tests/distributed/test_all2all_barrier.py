# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""VLLM_MOE_ALLGATHER_BARRIER: a device-group barrier before each collective
of the allgather-reducescatter MoE all2all, where asked for.

"1" on, "0" off, "auto" (default) on for XPU only. The switch is read once,
when the manager is built. The test runs the manager's dispatch and combine
on one rank and records, in order, the barriers and the group collectives
they precede (a collective over one rank returns its input).
"""

import pytest
import torch
import torch.distributed as dist

from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager
from vllm.distributed.parallel_state import get_ep_group, get_pcp_group
from vllm.platforms import current_platform

NUM_TOKENS = 3
HIDDEN_SIZE = 16
NUM_EXPERTS = 8
TOPK = 2


def _manager(monkeypatch, setting: str | None, is_xpu: bool) -> AgRsAll2AllManager:
    if setting is None:
        monkeypatch.delenv("VLLM_MOE_ALLGATHER_BARRIER", raising=False)
    else:
        monkeypatch.setenv("VLLM_MOE_ALLGATHER_BARRIER", setting)
    config = VllmConfig(parallel_config=ParallelConfig(enable_expert_parallel=True))
    with set_current_vllm_config(config), monkeypatch.context() as m:
        m.setattr(current_platform, "is_xpu", lambda: is_xpu)
        manager = AgRsAll2AllManager(get_ep_group().cpu_group)
    # Read once: a later change of the variable changes nothing.
    monkeypatch.setenv("VLLM_MOE_ALLGATHER_BARRIER", "0" if setting == "1" else "1")
    return manager


def _moe_collectives(monkeypatch, manager) -> list[str]:
    """Dispatch router logits, dispatch, combine: what each posts, in order."""
    group = get_pcp_group()  # the group of a one-rank DP world
    events: list[str] = []
    real_barrier = dist.barrier

    def barrier(*args, group=None, **kwargs):
        events.append("barrier" if group is get_pcp_group().device_group else "?")
        return real_barrier(*args, group=group, **kwargs)

    def all_gatherv(input_, dim=0, sizes=None):
        events.append("all_gatherv")
        return input_

    def reduce_scatterv(input_, dim=0, sizes=None):
        events.append("reduce_scatterv")
        return input_

    monkeypatch.setattr(dist, "barrier", barrier)
    monkeypatch.setattr(group, "all_gatherv", all_gatherv)
    monkeypatch.setattr(group, "reduce_scatterv", reduce_scatterv)
    hidden_states = torch.randn(NUM_TOKENS, HIDDEN_SIZE)
    router_logits = torch.randn(NUM_TOKENS, NUM_EXPERTS)
    topk_weights = torch.rand(NUM_TOKENS, TOPK)
    topk_ids = torch.randint(0, NUM_EXPERTS, (NUM_TOKENS, TOPK), dtype=torch.int32)
    manager.dispatch_router_logits(hidden_states, router_logits)
    manager.dispatch(hidden_states, topk_weights, topk_ids)
    manager.combine(hidden_states)
    return events


@pytest.mark.parametrize("setting,is_xpu", [("1", False), ("auto", True), (None, True)])
def test_barrier_before_each_moe_collective(
    dist_init, monkeypatch, setting: str | None, is_xpu: bool
):
    manager = _manager(monkeypatch, setting, is_xpu)
    assert _moe_collectives(monkeypatch, manager) == [
        "barrier",
        "all_gatherv",
        "barrier",
        "all_gatherv",
        "barrier",
        "reduce_scatterv",
    ]


@pytest.mark.parametrize(
    "setting,is_xpu", [("0", True), ("auto", False), (None, False)]
)
def test_no_barrier_unless_asked(
    dist_init, monkeypatch, setting: str | None, is_xpu: bool
):
    manager = _manager(monkeypatch, setting, is_xpu)
    assert _moe_collectives(monkeypatch, manager) == [
        "all_gatherv",
        "all_gatherv",
        "reduce_scatterv",
    ]
