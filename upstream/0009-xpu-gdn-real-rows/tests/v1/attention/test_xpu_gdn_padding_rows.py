# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The XPU GDN op hands its kernel the rows of requests only.

A step can run more token rows than the attention metadata describes (DP
padding under expert parallelism, piecewise-graph padding). Those rows belong
to no request, so the metadata leaves them out, and every backend slices its
token tensors to num_actual_tokens. The XPU GDN kernel requires exactly that:
its token tensors must hold num_actual_tokens rows.

The wrapper (`_gdn_attention_core_xpu_impl`) is host code, so it runs on
every platform here, with the SYCL kernel replaced by a stand-in that checks
the kernel's row contract and writes the rows it is given. On a build without
the XPU kernels, the two functions `vllm._xpu_ops` imports from
`vllm_xpu_kernels` (the GDN wrapper uses neither) are stubbed for the import.
"""

import sys
import types

import pytest
import torch

from vllm.forward_context import ForwardContext, override_forward_context
from vllm.platforms import current_platform
from vllm.v1.attention.backends.gdn_attn import GDNAttentionMetadata

if current_platform.is_xpu():
    from vllm import _xpu_ops
else:
    with pytest.MonkeyPatch.context() as mp:
        for name in (
            "vllm_xpu_kernels",
            "vllm_xpu_kernels.flash_attn_interface",
            "vllm_xpu_kernels.rotary",
        ):
            module = types.ModuleType(name)
            module.__path__ = []
            module.flash_attn_varlen_func = None
            module.apply_rotary_emb = None
            mp.setitem(sys.modules, name, module)
        from vllm import _xpu_ops

LAYER = "model.layers.0.linear_attn"
NUM_HEADS = 2
HEAD_DIM = 4
NUM_ACTUAL_TOKENS = 5  # 3 decodes and a 2-token prefill


def _gdn_layer() -> types.SimpleNamespace:
    """What the wrapper reads of a GatedDeltaNet layer."""
    return types.SimpleNamespace(
        prefix=LAYER,
        conv1d=types.SimpleNamespace(weight=torch.zeros(8, 1, 4), bias=None),
        kv_cache=[torch.zeros(1), torch.zeros(1)],
        num_k_heads=NUM_HEADS,
        num_v_heads=NUM_HEADS,
        head_k_dim=HEAD_DIM,
        head_v_dim=HEAD_DIM,
        activation="silu",
        A_log=torch.zeros(NUM_HEADS),
        dt_bias=torch.zeros(NUM_HEADS),
        tp_size=1,
        gqa_interleaved_layout=True,
    )


def _metadata() -> GDNAttentionMetadata:
    # The padding rows are in no request: query_start_loc ends at 5.
    return GDNAttentionMetadata(
        num_prefills=1,
        num_prefill_tokens=2,
        num_decodes=3,
        num_decode_tokens=3,
        num_spec_decodes=0,
        num_spec_decode_tokens=0,
        num_actual_tokens=NUM_ACTUAL_TOKENS,
        non_spec_query_start_loc=torch.tensor([0, 1, 2, 3, 5], dtype=torch.int32),
        non_spec_state_indices_tensor=torch.tensor([4, 5, 6, 7], dtype=torch.int32),
        has_initial_state=torch.tensor([True, True, True, False]),
    )


@pytest.fixture
def gdn_kernel_rows(monkeypatch) -> list[list[int]]:
    """Replace the SYCL kernel by one that enforces its row contract."""
    calls: list[list[int]] = []

    def gdn_attention(core_attn_out, z, qkvz, ba, *args, num_actual_tokens, **kw):
        rows = [t.shape[0] for t in (core_attn_out, z, qkvz, ba)]
        calls.append(rows)
        assert rows == [num_actual_tokens] * 4, (
            f"gdn_attention got {rows} rows for num_actual_tokens={num_actual_tokens}"
        )
        core_attn_out.fill_(1.0)
        z.fill_(1.0)

    monkeypatch.setattr(torch.ops._xpu_C, "gdn_attention", gdn_attention, raising=False)
    return calls


def _run_gdn(num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    core_attn_out = torch.zeros(num_rows, NUM_HEADS, HEAD_DIM)
    z = torch.zeros(num_rows, NUM_HEADS, HEAD_DIM)
    context = ForwardContext(
        no_compile_layers={LAYER: _gdn_layer()},
        attn_metadata={LAYER: _metadata()},
        slot_mapping={},
    )
    with override_forward_context(context):
        _xpu_ops._gdn_attention_core_xpu_impl(
            core_attn_out,
            z,
            torch.randn(num_rows, 16),
            torch.randn(num_rows, 4),
            LAYER,
        )
    return core_attn_out, z


def test_xpu_gdn_kernel_gets_rows_of_requests_only(gdn_kernel_rows):
    """12 rows, 5 of them tokens of requests: the kernel sees the 5, through
    views of the caller's buffers, and the padding rows stay as they were."""
    core_attn_out, z = _run_gdn(12)
    assert gdn_kernel_rows == [[NUM_ACTUAL_TOKENS] * 4]
    for out in (core_attn_out, z):
        assert torch.all(out[:NUM_ACTUAL_TOKENS] == 1.0)
        assert torch.all(out[NUM_ACTUAL_TOKENS:] == 0.0)


def test_xpu_gdn_unpadded_step_unchanged(gdn_kernel_rows):
    core_attn_out, z = _run_gdn(NUM_ACTUAL_TOKENS)
    assert gdn_kernel_rows == [[NUM_ACTUAL_TOKENS] * 4]
    assert torch.all(core_attn_out == 1.0) and torch.all(z == 1.0)
