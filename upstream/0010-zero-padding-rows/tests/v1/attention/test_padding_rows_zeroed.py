# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Padding rows of per-token output buffers come out zero.

A step can run more token rows than its attention metadata describes: DP
padding (every DP rank runs the same count under expert parallelism),
piecewise-graph padding, and an idle DP rank's dummy step, which has no
metadata at all. The attention and mamba_mixer2 ops allocate their output
with torch.empty for all rows, and backends write rows [:num_actual_tokens]
only. The rest must not stay uninitialised memory: it flows into the
residual stream, the router and the MoE collectives (NaN * 0 is NaN).

Outputs start as NaN here, standing in for what torch.empty may return.
The XPU GDN op's host code runs on every platform, with the SYCL kernel
replaced by a stand-in that writes the rows of requests; on a build without
the XPU kernels, the two functions `vllm._xpu_ops` imports from
`vllm_xpu_kernels` (unused by the GDN op) are stubbed for the import.
"""

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from vllm.forward_context import ForwardContext, override_forward_context
from vllm.model_executor.layers.attention.attention import (
    unified_attention_with_output,
)
from vllm.model_executor.layers.mamba.mamba_mixer2 import mamba_mixer2
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

NUM_ROWS = 12
NUM_ACTUAL_TOKENS = 5
NUM_HEADS = 2
HEAD_SIZE = 4
ATTN_LAYER = "model.layers.0.self_attn.attn"
MAMBA_LAYER = "model.layers.1.mixer"
GDN_LAYER = "model.layers.2.linear_attn"


class _RealRowsBackend:
    """Writes rows [:num_actual_tokens] as every attention backend does, and
    nothing for a step without metadata (as the CPU backend does)."""

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, **_):
        if attn_metadata is not None:
            output[: attn_metadata.num_actual_tokens] = 1.0
        return output


def _assert_rows(output: torch.Tensor, num_tokens: int) -> None:
    """Rows of requests as the backend wrote them (ones), the rest zero."""
    expected = torch.zeros_like(output)
    expected[:num_tokens] = 1.0
    torch.testing.assert_close(output, expected, rtol=0, atol=0)


def _context(layer_name: str, layer, attn_metadata) -> ForwardContext:
    metadata = None if attn_metadata is None else {layer_name: attn_metadata}
    return ForwardContext(
        no_compile_layers={layer_name: layer},
        attn_metadata=metadata,
        slot_mapping={},
    )


def _attention(num_rows: int, attn_metadata) -> torch.Tensor:
    layer = SimpleNamespace(impl=_RealRowsBackend(), kv_cache=torch.zeros(1))
    query = torch.randn(num_rows, NUM_HEADS, HEAD_SIZE)
    output = torch.full((num_rows, NUM_HEADS, HEAD_SIZE), float("nan"))
    with override_forward_context(_context(ATTN_LAYER, layer, attn_metadata)):
        unified_attention_with_output(query, query, query, output, ATTN_LAYER)
    return output


def test_attention_dp_padding_rows_are_zero():
    """12 rows, 5 of them tokens of requests: the other 7 come out zero."""
    metadata = SimpleNamespace(num_actual_tokens=NUM_ACTUAL_TOKENS)
    output = _attention(NUM_ROWS, metadata)
    _assert_rows(output, NUM_ACTUAL_TOKENS)


def test_attention_dummy_step_output_is_zero():
    """An idle DP rank's dummy step: no metadata, every row is padding."""
    _assert_rows(_attention(NUM_ROWS, None), 0)


def test_attention_rows_of_requests_untouched():
    """Without padding nothing is zeroed: the backend's rows stand as written."""
    metadata = SimpleNamespace(num_actual_tokens=NUM_ACTUAL_TOKENS)
    _assert_rows(_attention(NUM_ACTUAL_TOKENS, metadata), NUM_ACTUAL_TOKENS)


def _mamba(attn_metadata) -> torch.Tensor:
    def conv_ssm_forward(projected_states, output):
        # The SSM writes the rows of real tokens; there are none without
        # metadata.
        if attn_metadata is not None:
            num_tokens = attn_metadata.num_prefill_tokens
            num_tokens += attn_metadata.num_decode_tokens
            output[:num_tokens] = 1.0

    mixer = SimpleNamespace(prefix=MAMBA_LAYER, conv_ssm_forward=conv_ssm_forward)
    output = torch.full((NUM_ROWS, 8), float("nan"))
    with override_forward_context(_context(MAMBA_LAYER, mixer, attn_metadata)):
        mamba_mixer2(torch.randn(NUM_ROWS, 16), output, MAMBA_LAYER)
    return output


@pytest.mark.parametrize("padded", [False, True], ids=["dummy_step", "dp_padded"])
def test_mamba_mixer2_padding_rows_are_zero(padded: bool):
    metadata = (
        SimpleNamespace(num_prefill_tokens=2, num_decode_tokens=3) if padded else None
    )
    _assert_rows(_mamba(metadata), NUM_ACTUAL_TOKENS if padded else 0)


def _gdn_metadata() -> GDNAttentionMetadata:
    # 3 decodes and a 2-token prefill; the padding rows are in no request.
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


@pytest.mark.parametrize("padded", [False, True], ids=["dummy_step", "dp_padded"])
def test_xpu_gdn_gate_padding_rows_are_zero(monkeypatch, padded: bool):
    """`z` gates the GDN output in the gated RMSNorm, where 0 * NaN is NaN."""

    def gdn_attention(core_attn_out, z, *args, num_actual_tokens, **kwargs):
        # As the SYCL kernel: the rows of requests are written.
        core_attn_out[:num_actual_tokens] = 1.0
        z[:num_actual_tokens] = 1.0

    monkeypatch.setattr(torch.ops._xpu_C, "gdn_attention", gdn_attention, raising=False)
    layer = SimpleNamespace(
        prefix=GDN_LAYER,
        conv1d=SimpleNamespace(weight=torch.zeros(8, 1, 4), bias=None),
        kv_cache=[torch.zeros(1), torch.zeros(1)],
        num_k_heads=NUM_HEADS,
        num_v_heads=NUM_HEADS,
        head_k_dim=HEAD_SIZE,
        head_v_dim=HEAD_SIZE,
        activation="silu",
        A_log=torch.zeros(NUM_HEADS),
        dt_bias=torch.zeros(NUM_HEADS),
        tp_size=1,
        gqa_interleaved_layout=True,
    )
    core_attn_out = torch.zeros(NUM_ROWS, NUM_HEADS, HEAD_SIZE)
    z = torch.full((NUM_ROWS, NUM_HEADS, HEAD_SIZE), float("nan"))
    metadata = _gdn_metadata() if padded else None
    with override_forward_context(_context(GDN_LAYER, layer, metadata)):
        _xpu_ops._gdn_attention_core_xpu_impl(
            core_attn_out,
            z,
            torch.randn(NUM_ROWS, 16),
            torch.randn(NUM_ROWS, 4),
            GDN_LAYER,
        )
    _assert_rows(z, NUM_ACTUAL_TOKENS if padded else 0)
