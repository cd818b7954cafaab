"""One rank of the EP MoE layer test.

vLLM's real FusedMoE layer (FusedMoEFactory, as Qwen3-MoE builds it) with
TP = WORLD_SIZE and expert parallelism over all ranks, so each rank holds
NUM_EXPERTS / WORLD_SIZE experts: the TP=2+EP case, on CPU, over gloo. The
layer all-reduces its output itself, so every rank's output must equal the
full-expert result. Writes, per dtype and scenario, the layer output and a
dense float64 torch reference to EPDP_RESULT (torch.save).

Started by tests/moe/test_cpu_moe_expert_map.py (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, EPDP_RESULT set); PYTHONPATH selects pristine or
patched vLLM. A segfault in the CPU MoE kernel kills this process
(PYTHONFAULTHANDLER=1 prints the Python stack first).
"""

import os
import sys

import torch

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
NUM_EXPERTS, TOP_K, HIDDEN, INTER = 8, 2, 128, 64
DTYPES = (torch.float32, torch.bfloat16)


def full_weights(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same global expert weights on every rank (same seed)."""
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(NUM_EXPERTS, 2 * INTER, HIDDEN, generator=g) * 0.1
    w2 = torch.randn(NUM_EXPERTS, HIDDEN, INTER, generator=g) * 0.1
    return w13, w2


def scenarios(seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (hidden states, router logits), identical on every rank."""
    g = torch.Generator().manual_seed(seed)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, HIDDEN, generator=g), torch.randn(n, NUM_EXPERTS, generator=g)

    out = {
        # Prefill-sized: most tokens use experts of both ranks, some of one.
        "mixed": batch(37),
        # One decode token.
        "one_token": batch(1),
    }
    # Every token routed to the first half of the experts: with 2 ranks the
    # second rank has no (token, expert) pair at all and must add zeros.
    x, logits = batch(9)
    logits[:, NUM_EXPERTS // 2 :] -= 100.0
    out["first_half_only"] = (x, logits)
    return out


def dense_reference(w13, w2, x, logits) -> torch.Tensor:
    """Plain torch MoE in float64: softmax top-k, renormalised, SiLU-gated."""
    w13, w2, x = w13.double(), w2.double(), x.double()
    weights, ids = torch.topk(torch.softmax(logits.double(), dim=-1), TOP_K, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for k in range(TOP_K):
        h = torch.einsum("th,tnh->tn", x, w13[ids[:, k]])
        act = torch.nn.functional.silu(h[:, :INTER]) * h[:, INTER:]
        out += weights[:, k : k + 1] * torch.einsum("tn,thn->th", act, w2[ids[:, k]])
    return out


def build_layer(dtype: torch.dtype, w13: torch.Tensor, w2: torch.Tensor):
    from vllm.model_executor.layers.fused_moe import FusedMoEFactory
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    moe = FusedMoEFactory(
        num_experts=NUM_EXPERTS,
        top_k=TOP_K,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        params_dtype=dtype,
        renormalize=True,
        prefix=f"model.layers.{DTYPES.index(dtype)}.mlp.experts",
    )
    # Checkpoint names relative to the layer; each rank keeps its own experts.
    named = []
    for e in range(NUM_EXPERTS):
        named += [
            (f"{e}.gate_proj.weight", w13[e, :INTER].to(dtype)),
            (f"{e}.up_proj.weight", w13[e, INTER:].to(dtype)),
            (f"{e}.down_proj.weight", w2[e].to(dtype)),
        ]
    list(moe.load_weights(named))
    # What the model loader does next: let each quant method repack its
    # weights (the CPU experts prepack theirs for the kernel).
    for module in moe.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase):
            method.process_weights_after_loading(module)
    return moe


def main() -> None:
    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from vllm.forward_context import set_forward_context

    config = VllmConfig(
        parallel_config=ParallelConfig(
            tensor_parallel_size=WORLD,
            enable_expert_parallel=True,
            distributed_executor_backend="external_launcher",
        )
    )
    results = {}
    with set_current_vllm_config(config):
        init_distributed_environment(
            world_size=WORLD,
            rank=RANK,
            distributed_init_method=(
                f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            ),
            local_rank=RANK,
            backend="gloo",
        )
        initialize_model_parallel(tensor_model_parallel_size=WORLD)

        w13, w2 = full_weights()
        for dtype in DTYPES:
            moe = build_layer(dtype, w13, w2)
            routed = moe.routed_experts
            emap = routed.expert_map
            info = {
                "local_experts": routed.local_num_experts,
                "expert_map": None if emap is None else emap.tolist(),
                "experts_class": type(routed.quant_method.moe_kernel.fused_experts).__name__,
            }
            print(f"rank {RANK} {dtype}: {info}", file=sys.stderr, flush=True)
            for name, (x, logits) in scenarios().items():
                with set_forward_context(None, config, num_tokens=x.size(0)):
                    out = moe(x.to(dtype), logits.to(dtype))
                results[f"{str(dtype).removeprefix('torch.')}/{name}"] = {
                    "out": out.float(),
                    "ref": dense_reference(w13, w2, x, logits).float(),
                    **info,
                }
                print(f"rank {RANK} {dtype}: {name} done", file=sys.stderr, flush=True)
    torch.save(results, os.environ["EPDP_RESULT"])


if __name__ == "__main__":
    main()
