"""Padding rows of one step, checked at the custom ops that own per-token
output buffers (single process; the ops are what every DP rank runs).

Checks (each reported separately, so one run serves the tests of patches 0009
and 0010 in either state):
  xpu_gdn      vllm._xpu_ops GDN wrapper: rows handed to the kernel, z tail
  attn_dummy   unified_attention_with_output with vLLM's real CPU attention
               backend and no metadata (an idle DP rank's dummy step)
  attn_padded  unified_attention_with_output on a DP-padded step (12 rows,
               num_actual_tokens 5) with a backend that, like all of them,
               writes rows [:num_actual_tokens]
  mamba_dummy  the mamba_mixer2 op without metadata
Buffers start as NaN, standing in for torch.empty garbage.

The XPU kernel is absent here: a stand-in enforces its contract (token
tensors hold exactly num_actual_tokens rows, as 0009 requires) and writes ones.
"""

import json
import os
import sys
import types

import torch

ROWS, ACTUAL, H, D = 12, 5, 2, 4
NAN = float("nan")


def stand_in_xpu_kernels() -> None:
    """vllm._xpu_ops imports vllm_xpu_kernels at module level; the two names
    it takes are not used by the GDN wrapper."""
    pkg = types.ModuleType("vllm_xpu_kernels")
    pkg.__path__ = []
    fa = types.ModuleType("vllm_xpu_kernels.flash_attn_interface")
    fa.flash_attn_varlen_func = None
    rot = types.ModuleType("vllm_xpu_kernels.rotary")
    rot.apply_rotary_emb = None
    sys.modules.update(
        {"vllm_xpu_kernels": pkg, "vllm_xpu_kernels.flash_attn_interface": fa, "vllm_xpu_kernels.rotary": rot}
    )


def ctx(layers: dict, metadata):
    from vllm.forward_context import ForwardContext

    return ForwardContext(no_compile_layers=layers, attn_metadata=metadata, slot_mapping={})


def rows_state(t: torch.Tensor) -> dict:
    return {
        "real_ones": bool((t[:ACTUAL] == 1).all()),
        "tail_zero": bool((t[ACTUAL:] == 0).all()),
        "tail_finite": bool(torch.isfinite(t[ACTUAL:]).all()),
    }


# ------------------------------------------------------------ XPU GDN wrapper
seen: dict = {}


def xpu_kernel(core_attn_out, z, qkvz, ba, *args, num_actual_tokens, **kwargs):
    seen["rows"] = [t.shape[0] for t in (core_attn_out, z, qkvz, ba)]
    for t in (core_attn_out, z, qkvz, ba):
        if t.shape[0] != num_actual_tokens:
            raise AssertionError(f"gdn_attention: tensor has {t.shape[0]} rows, num_actual_tokens={num_actual_tokens}")
    core_attn_out.fill_(1.0)
    z.fill_(1.0)


def check_xpu_gdn(result: dict) -> None:
    from vllm import _xpu_ops
    from vllm.forward_context import override_forward_context
    from vllm.v1.attention.backends.gdn_attn import GDNAttentionMetadata

    torch.ops._xpu_C.gdn_attention = xpu_kernel
    gdn = types.SimpleNamespace(
        prefix="layers.0.linear_attn",
        conv1d=types.SimpleNamespace(weight=torch.zeros(8, 1, 4), bias=None),
        kv_cache=[torch.zeros(1), torch.zeros(1)],
        num_k_heads=H,
        num_v_heads=H,
        head_k_dim=D,
        head_v_dim=D,
        activation="silu",
        A_log=torch.zeros(H),
        dt_bias=torch.zeros(H),
        tp_size=1,
        gqa_interleaved_layout=True,
    )
    # 3 decode requests + one 2-token prefill = 5 real tokens, padded to 12 rows:
    # what the V1 runner builds in eager mode (padding rows not in the metadata).
    gdn_md = GDNAttentionMetadata(
        num_prefills=1,
        num_prefill_tokens=2,
        num_decodes=3,
        num_decode_tokens=3,
        num_spec_decodes=0,
        num_spec_decode_tokens=0,
        num_actual_tokens=ACTUAL,
        non_spec_query_start_loc=torch.tensor([0, 1, 2, 3, 5], dtype=torch.int32),
        non_spec_state_indices_tensor=torch.tensor([4, 5, 6, 7], dtype=torch.int32),
        has_initial_state=torch.tensor([True, True, True, False]),
    )
    core = torch.zeros(ROWS, H, D)  # forward_xpu allocates it with torch.zeros
    z = torch.full((ROWS, H, D), NAN)  # ... and z with torch.empty_like
    try:
        with override_forward_context(ctx({gdn.prefix: gdn}, {gdn.prefix: gdn_md})):
            _xpu_ops._gdn_attention_core_xpu_impl(core, z, torch.randn(ROWS, 16), torch.randn(ROWS, 4), gdn.prefix)
        error = None
    except AssertionError as exc:
        error = str(exc)
    result["xpu_gdn"] = {"error": error, "rows_seen": seen.get("rows"), "core": rows_state(core), "z": rows_state(z)}
    z = torch.full((ROWS, H, D), NAN)
    with override_forward_context(ctx({gdn.prefix: gdn}, None)):
        _xpu_ops._gdn_attention_core_xpu_impl(core, z, torch.randn(ROWS, 16), torch.randn(ROWS, 4), gdn.prefix)
    result["xpu_gdn_dummy_z_zero"] = bool((z == 0).all())


# ------------------------------------------------------------ attention op
class RealRowsBackend:
    """Writes rows [:num_actual_tokens], as every attention backend does."""

    def forward(self, layer, query, key, value, kv_cache, md, output, **kw):
        output[: md.num_actual_tokens] = 1.0
        return output


def check_attention(result: dict) -> None:
    from vllm.forward_context import override_forward_context
    from vllm.model_executor.layers.attention import attention as attn_mod
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    name = "model.layers.0.self_attn.attn"
    # Its __init__ wants a model config; the no-metadata path of forward() reads
    # no attribute, so an uninitialised instance runs the real code path.
    impl = object.__new__(CPUAttentionBackendImpl)
    layer = types.SimpleNamespace(impl=impl, kv_cache=torch.zeros(1))
    q = torch.randn(ROWS, H, D)
    out = torch.full((ROWS, H, D), NAN)
    with override_forward_context(ctx({name: layer}, None)):
        attn_mod.unified_attention_with_output(q, q, q, out, name)
    result["attn_dummy"] = {"all_zero": bool((out == 0).all()), "finite": bool(torch.isfinite(out).all())}
    layer = types.SimpleNamespace(impl=RealRowsBackend(), kv_cache=torch.zeros(1))
    out = torch.full((ROWS, H, D), NAN)
    md = types.SimpleNamespace(num_actual_tokens=ACTUAL)
    with override_forward_context(ctx({name: layer}, {name: md})):
        attn_mod.unified_attention_with_output(q, q, q, out, name)
    result["attn_padded"] = rows_state(out)
    out = torch.full((ACTUAL, H, D), NAN)  # unpadded step: nothing to zero
    with override_forward_context(ctx({name: layer}, {name: md})):
        attn_mod.unified_attention_with_output(q[:ACTUAL], q[:ACTUAL], q[:ACTUAL], out, name)
    result["attn_unpadded_real_ones"] = bool((out == 1).all())


# ------------------------------------------------------------ mamba_mixer2 op
def check_mamba(result: dict) -> None:
    from vllm.forward_context import override_forward_context
    from vllm.model_executor.layers.mamba import mamba_mixer2

    mname = "model.layers.1.mixer"
    mixer = types.SimpleNamespace(prefix=mname, conv_ssm_forward=lambda **kw: None)
    out = torch.full((ROWS, 8), NAN)
    with override_forward_context(ctx({mname: mixer}, None)):
        mamba_mixer2.mamba_mixer2(torch.randn(ROWS, 16), out, mname)
    result["mamba_dummy_zero"] = bool((out == 0).all())


def main() -> None:
    stand_in_xpu_kernels()
    result: dict = {}
    check_xpu_gdn(result)
    check_attention(result)
    check_mamba(result)
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
