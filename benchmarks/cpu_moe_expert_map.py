"""Cost of patch 0004 (CPU MoE experts honour expert_map) on one EP rank.

Times, per MoE call, on the CPU unquantized kernel (cpu_fused_moe):
  full      all experts on this rank, all (token, expert) pairs: no EP
  ep        patched EP path: this rank's experts, only its local pairs
            (local_expert_pairs + top-1 kernel call + sum_rows_per_token)
  ep_zero   the alternative we did not take: every pair kept, remote pairs
            sent to a local expert with weight 0 (same compute as `full`)
  helpers   the patch's own tensor ops alone (no kernel)

Run with the patched vLLM first on PYTHONPATH, e.g.
  PYTHONPATH=$(python -c 'from vllm_epdp.patching.overlay import overlay_env; \
print(overlay_env("patched")["PYTHONPATH"])') python benchmarks/cpu_moe_expert_map.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, reps: int) -> float:
    fn()  # warm-up (scratchpad allocation)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--ep", type=int, default=2, help="EP ranks (this is rank 0)")
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()

    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import (
        local_expert_pairs,
        sum_rows_per_token,
    )
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    from vllm._custom_ops import cpu_fused_moe, cpu_prepack_moe_weight

    dtype = getattr(torch, args.dtype)
    E, H, INTER, K = args.experts, args.hidden, args.inter, args.topk
    n_local = E // args.ep
    g = torch.Generator().manual_seed(0)
    w13 = (torch.randn(E, 2 * INTER, H, generator=g) * 0.02).to(dtype)
    w2 = (torch.randn(E, H, INTER, generator=g) * 0.02).to(dtype)
    full13, full2 = cpu_prepack_moe_weight(w13, "vec"), cpu_prepack_moe_weight(w2, "vec")
    loc13 = cpu_prepack_moe_weight(w13[:n_local].contiguous(), "vec")
    loc2 = cpu_prepack_moe_weight(w2[:n_local].contiguous(), "vec")
    expert_map = torch.full((E,), -1, dtype=torch.int32)
    expert_map[:n_local] = torch.arange(n_local, dtype=torch.int32)

    print(
        f"E={E} (local {n_local}, EP={args.ep}) top-{K} H={H} INTER={INTER} {args.dtype}, "
        f"{torch.get_num_threads()} threads; median us per call over {args.reps}"
    )
    print(f"{'tokens':>6} {'local pairs':>11} {'full':>9} {'ep':>9} {'ep_zero':>9} {'helpers':>8}")
    for T in args.tokens:
        x = torch.randn(T, H, generator=g).to(dtype)
        logits = torch.randn(T, E, generator=g)
        weights, ids = torch.topk(torch.softmax(logits, -1), K, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).contiguous()
        ids = ids.to(torch.int32).contiguous()
        out = torch.empty_like(x)

        def full():
            cpu_fused_moe(out, x, full13, full2, None, None, weights, ids, "silu", "vec")

        def ep():
            rows, rw, rid, tok = local_expert_pairs(x, weights, ids, expert_map)
            rows_out = torch.empty_like(rows)
            cpu_fused_moe(rows_out, rows, loc13, loc2, None, None, rw, rid, "silu", "vec")
            sum_rows_per_token(out, rows_out, tok)

        local = expert_map[ids.long()]
        remote = local < 0
        zero_ids = torch.where(remote, ids % n_local, local).to(torch.int32).contiguous()
        zero_w = weights.masked_fill(remote, 0.0).contiguous()

        def ep_zero():
            cpu_fused_moe(out, x, loc13, loc2, None, None, zero_w, zero_ids, "silu", "vec")

        def helpers():
            rows, rw, rid, tok = local_expert_pairs(x, weights, ids, expert_map)
            sum_rows_per_token(out, rows, tok)

        n_pairs = int((~remote).sum())
        print(
            f"{T:>6} {n_pairs:>11} {timed(full, args.reps):>9.0f} {timed(ep, args.reps):>9.0f} "
            f"{timed(ep_zero, args.reps):>9.0f} {timed(helpers, args.reps):>8.0f}"
        )


if __name__ == "__main__":
    main()
