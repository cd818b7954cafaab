# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The unquantized CPU MoE experts under expert parallelism.

With EP each rank holds only its local experts, and the router's top-k ids are
global: the experts must map them through expert_map and let the pairs of
other ranks' experts add nothing, as the other backends do. Each test runs in
a process of its own, so a kernel that reads past its experts fails the test
instead of the test session.
"""

import pytest
import torch

import vllm.model_executor.layers.fused_moe.modular_kernel as mk
from tests.kernels.allclose_default import get_default_atol, get_default_rtol
from tests.kernels.moe.test_cpu_fused_moe import (
    ISA,
    _make_moe_config,
    _StubMoELayer,
    ref_fused_moe,
)
from tests.utils import create_new_process_for_each_test
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.config import FusedMoEQuantConfig
from vllm.model_executor.layers.fused_moe.experts.cpu_moe import (
    CPUUnquantizedExperts,
    X86CPUUnquantizedExperts,
)
from vllm.model_executor.layers.fused_moe.router.cpu_router import _softmax_topk
from vllm.platforms import current_platform
from vllm.utils.torch_utils import set_random_seed

if not current_platform.is_cpu():
    pytest.skip("skipping CPU-only tests", allow_module_level=True)

EXPERT_NUM = 8
EP_SIZE = 2
TOPK = 2


def _expert_map(ep_rank: int) -> torch.Tensor:
    """Global expert id -> local slot on ep_rank, -1 for another rank's."""
    local = EXPERT_NUM // EP_SIZE
    expert_map = torch.full((EXPERT_NUM,), -1, dtype=torch.int32)
    expert_map[ep_rank * local : (ep_rank + 1) * local] = torch.arange(
        local, dtype=torch.int32
    )
    return expert_map


@create_new_process_for_each_test()
@pytest.mark.parametrize("batch_size", [1, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("isa", [i for i in ISA if i in ("vec", "amx")])
def test_cpu_fused_moe_expert_map(
    default_vllm_config, batch_size: int, dtype: torch.dtype, isa: str
):
    """Each EP rank's output is the sum over its own experts' pairs, and the
    ranks' outputs add up to the output of all experts on one rank."""
    if isa == "amx" and dtype != torch.bfloat16:
        pytest.skip("the AMX kernel takes bf16")
    set_random_seed(0)
    hidden_size = intermediate_size = 128
    act = MoEActivation.SILU
    hidden_states = torch.randn((batch_size, hidden_size), dtype=dtype) / 8
    w13 = torch.randn((EXPERT_NUM, 2 * intermediate_size, hidden_size), dtype=dtype)
    w2 = torch.randn((EXPERT_NUM, hidden_size, intermediate_size), dtype=dtype)
    w13, w2 = w13 / (0.5 * hidden_size**0.5), w2 / (0.5 * intermediate_size**0.5)
    router_logits = torch.randn((batch_size, EXPERT_NUM), dtype=dtype)
    topk_weights, topk_ids = _softmax_topk(router_logits, TOPK, False)

    experts_cls = {"vec": CPUUnquantizedExperts, "amx": X86CPUUnquantizedExperts}[isa]
    local = EXPERT_NUM // EP_SIZE
    moe_config = _make_moe_config(
        local, hidden_size, intermediate_size, TOPK, dtype, act
    )
    total = torch.zeros((batch_size, hidden_size), dtype=torch.float32)
    for ep_rank in range(EP_SIZE):
        expert_map = _expert_map(ep_rank)
        mine = expert_map[topk_ids.long()] >= 0
        ref_output = ref_fused_moe(
            hidden_states,
            w13,
            w2,
            None,
            None,
            topk_weights * mine,
            topk_ids,
            act,
        )
        layer = _StubMoELayer(
            w13[ep_rank * local : (ep_rank + 1) * local].clone(),
            w2[ep_rank * local : (ep_rank + 1) * local].clone(),
            act,
        )
        experts = experts_cls(moe_config, FusedMoEQuantConfig.make())
        assert experts.isa == isa
        experts.process_weights_after_loading(layer)
        supported, reason = experts_cls.is_supported_config(
            experts_cls, moe_config, None, None, mk.FusedMoEActivationFormat.Standard
        )
        assert supported, reason

        output = torch.full_like(hidden_states, float("nan"))
        experts.apply(
            output=output,
            hidden_states=hidden_states,
            w1=layer.w13_weight,
            w2=layer.w2_weight,
            topk_weights=topk_weights,
            topk_ids=topk_ids,
            activation=act,
            global_num_experts=EXPERT_NUM,
            expert_map=expert_map,
            a1q_scale=None,
            a2_scale=None,
            workspace13=torch.empty(0),
            workspace2=torch.empty(0),
            expert_tokens_meta=None,
            apply_router_weight_on_input=False,
        )
        atol, rtol = get_default_atol(output), get_default_rtol(output)
        torch.testing.assert_close(output, ref_output, atol=atol, rtol=rtol)
        total += output.float()

    full = ref_fused_moe(
        hidden_states, w13, w2, None, None, topk_weights, topk_ids, act
    )
    atol, rtol = get_default_atol(full), get_default_rtol(full)
    torch.testing.assert_close(total.to(dtype), full, atol=2 * atol, rtol=rtol)
