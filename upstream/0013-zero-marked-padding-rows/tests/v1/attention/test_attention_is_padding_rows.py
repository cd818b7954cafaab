# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Rows the model runner marks as padding leave the attention op as zeros.

Model Runner V2 runs an idle DP rank's step as a dummy batch whose attention
metadata describes its rows: one dummy request per token, its block table at
the null block, its slot mapping PAD_SLOT_ID. Nothing writes those keys and
values, so attention reads whatever the null block holds; in a hybrid model
that is storage the linear-attention layers write their state into, and the
rows can come out NaN. The runner marks such rows in
`ForwardContext.is_padding`; after the backend, the attention op zeroes them.
"""

from types import SimpleNamespace

import torch

from vllm.forward_context import ForwardContext, override_forward_context
from vllm.model_executor.layers.attention.attention import (
    unified_attention_with_output,
)

NUM_ROWS = 8
NUM_HEADS = 2
HEAD_SIZE = 4
LAYER = "model.layers.3.self_attn.attn"


class _UnwrittenKVBackend:
    """Writes every row the metadata describes: ones for rows of requests,
    NaN for the rows whose keys and values nobody wrote."""

    def __init__(self, unwritten: torch.Tensor):
        self.unwritten = unwritten

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, **_):
        output[: attn_metadata.num_actual_tokens] = 1.0
        output[self.unwritten] = float("nan")
        return output


def _attention(is_padding: torch.Tensor | None) -> torch.Tensor:
    unwritten = (
        is_padding if is_padding is not None else torch.zeros(NUM_ROWS, dtype=bool)
    )
    layer = SimpleNamespace(impl=_UnwrittenKVBackend(unwritten), kv_cache=None)
    # The dummy batch's metadata describes all of its rows.
    metadata = SimpleNamespace(num_actual_tokens=NUM_ROWS)
    context = ForwardContext(
        no_compile_layers={LAYER: layer},
        attn_metadata={LAYER: metadata},
        slot_mapping={},
        is_padding=is_padding,
    )
    query = torch.randn(NUM_ROWS, NUM_HEADS, HEAD_SIZE)
    output = torch.empty(NUM_ROWS, NUM_HEADS, HEAD_SIZE)
    with override_forward_context(context):
        unified_attention_with_output(query, query, query, output, LAYER)
    return output


def test_dummy_batch_rows_marked_padding_are_zero():
    """An idle rank's dummy batch: every row is marked."""
    output = _attention(torch.ones(NUM_ROWS, dtype=torch.bool))
    torch.testing.assert_close(output, torch.zeros_like(output), rtol=0, atol=0)


def test_marked_rows_zero_and_rows_of_requests_kept():
    is_padding = torch.zeros(NUM_ROWS, dtype=torch.bool)
    is_padding[5:] = True
    output = _attention(is_padding)
    expected = torch.ones_like(output)
    expected[5:] = 0.0
    torch.testing.assert_close(output, expected, rtol=0, atol=0)


def test_unmarked_rows_untouched():
    """No mask (a runner that sets none): the backend's rows stand."""
    output = _attention(None)
    torch.testing.assert_close(output, torch.ones_like(output), rtol=0, atol=0)
