"""One rank of the EP MoE layer test.

vLLM's real FusedMoE layer (FusedMoEFactory, as Qwen3-MoE builds it) with
TP = WORLD_SIZE and expert parallelism over all ranks, so each rank holds
NUM_EXPERTS / WORLD_SIZE experts: the TP=2+EP case, on CPU, over gloo. The
layer all-reduces its output itself, so every rank's output must equal the
full-expert result. Writes, per case (dtype, experts class, scenario), the
layer output and a dense float64 torch reference to EPDP_RESULT (torch.save).

Which kernels run is chosen, not left to the machine:
  EPDP_CPU_LEVEL  x86 level to run at (vllm_epdp.harness.cpu_isa.emulate; default the
                  CPU's own): decides the kernel build vLLM loads
  EPDP_EXPERTS    "all" (default): each unquantized CPU experts class this
                  level can run, in turn; or one class name
  EPDP_DTYPES     comma-separated dtypes (default float32,bfloat16)
Each result says which build was mapped into the process and which class ran.

Started by tests/moe/test_cpu_moe_expert_map.py (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, EPDP_RESULT set); PYTHONPATH selects pristine or
patched vLLM. A segfault in the CPU MoE kernel kills this process
(PYTHONFAULTHANDLER=1 prints the Python stack first).
"""

import contextlib
import os
import sys

import torch

from vllm_epdp.harness.ranks import init_vllm_world

NUM_EXPERTS, TOP_K, HIDDEN, INTER = 8, 2, 128, 64


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


def build_layer(dtype: torch.dtype, w13: torch.Tensor, w2: torch.Tensor, index: int):
    from vllm.model_executor.layers.fused_moe import FusedMoEFactory
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    moe = FusedMoEFactory(
        num_experts=NUM_EXPERTS,
        top_k=TOP_K,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        params_dtype=dtype,
        renormalize=True,
        prefix=f"model.layers.{index}.mlp.experts",  # unique per layer built
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


def experts_classes() -> list[type]:
    """vLLM's unquantized CPU experts classes, in its own order of preference."""
    from vllm.model_executor.layers.fused_moe.oracle.unquantized import (
        UnquantizedMoeBackend,
        backend_to_kernel_cls,
    )

    return backend_to_kernel_cls(UnquantizedMoeBackend.CPU)


@contextlib.contextmanager
def preferring(chosen: type):
    """vLLM picks the first class that supports the device and the layer:
    the classes it prefers to ``chosen`` say they do not support this device
    while the layer is built (vLLM has no switch for the experts class)."""
    ahead = experts_classes()[: experts_classes().index(chosen)]
    saved = {c: c.__dict__.get("_supports_current_device") for c in ahead}
    for c in ahead:
        c._supports_current_device = staticmethod(lambda: False)
    try:
        yield
    finally:
        for c, original in saved.items():
            if original is None:
                del c._supports_current_device
            else:
                c._supports_current_device = original


def main() -> None:
    from vllm_epdp.harness import cpu_isa

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    level = os.environ.get("EPDP_CPU_LEVEL") or cpu_isa.native_level()
    cpu_isa.emulate(level)  # before vLLM loads its kernels
    # What vLLM's CPU worker sets: the TP all-reduce then takes the shared-
    # memory path on the builds that have it (_C, _C_AVX512), as in an engine.
    os.environ.setdefault("VLLM_DIST_IDENT", f"epdp-ep-layer-{os.environ['MASTER_PORT']}")

    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed.parallel_state import initialize_model_parallel
    from vllm.forward_context import set_forward_context

    config = VllmConfig(
        parallel_config=ParallelConfig(
            tensor_parallel_size=world,
            enable_expert_parallel=True,
            distributed_executor_backend="external_launcher",
        )
    )
    wanted = os.environ.get("EPDP_EXPERTS", "all")
    classes = [c for c in experts_classes() if c._supports_current_device()]
    runnable = [c.__name__ for c in classes]
    if wanted != "all":
        classes = [c for c in experts_classes() if c.__name__ == wanted]
    dtypes = [getattr(torch, d) for d in os.environ.get("EPDP_DTYPES", "float32,bfloat16").split(",")]
    results = {}
    with set_current_vllm_config(config):
        init_vllm_world()
        initialize_model_parallel(tensor_model_parallel_size=world)

        w13, w2 = full_weights()
        built = 0
        for dtype in dtypes:
            for chosen in classes:
                with preferring(chosen):
                    moe = build_layer(dtype, w13, w2, built)
                built += 1
                routed = moe.routed_experts
                ran = type(routed.quant_method.moe_kernel.fused_experts)
                if ran is not chosen:
                    # The layer is not one this class takes (the arch-specific
                    # kernels need bf16): vLLM fell back, already covered.
                    print(
                        f"rank {rank} {dtype}: {chosen.__name__} does not take it, vLLM chose {ran.__name__}",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                emap = routed.expert_map
                info = {
                    "level": level,
                    "runnable_classes": runnable,
                    "local_experts": routed.local_num_experts,
                    "expert_map": None if emap is None else emap.tolist(),
                    "experts_class": ran.__name__,
                    "isa": ran.isa,
                }
                print(f"rank {rank} {dtype}: {info}", file=sys.stderr, flush=True)
                for name, (x, logits) in scenarios().items():
                    with set_forward_context(None, config, num_tokens=x.size(0)):
                        out = moe(x.to(dtype), logits.to(dtype))
                    dname = str(dtype).removeprefix("torch.")
                    results[f"{dname}/{ran.__name__}/{name}"] = {
                        "out": out.float(),
                        "ref": dense_reference(w13, w2, x, logits).float(),
                        # What the kernels really were: read after they ran.
                        "kernel_builds": cpu_isa.loaded_kernel_builds(),
                        **info,
                    }
                    print(f"rank {rank} {dtype}: {name} done", file=sys.stderr, flush=True)
    torch.save(results, os.environ["EPDP_RESULT"])


if __name__ == "__main__":
    main()
