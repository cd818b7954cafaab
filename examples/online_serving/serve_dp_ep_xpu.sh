#!/usr/bin/env bash
# vllm serve with TP x DP + expert parallel on Intel GPUs (e.g. 4x Arc Pro B60).
#
#   serve_dp_ep_xpu.sh MODEL [extra `vllm serve` args...]
#   TP=2 DP=2 serve_dp_ep_xpu.sh Qwen/Qwen3.5-35B-A3B       # 4 B60s
#
# Layout: DP engine cores, each driving TP GPUs; DP rank d uses the devices
# d*TP .. d*TP+TP-1 of those listed in ZE_AFFINITY_MASK; EP spans all TP*DP
# devices (ep_rank = dp_rank*TP + tp_rank). Collectives use XCCL (oneCCL
# through torch.distributed, torch >= 2.8 XPU build).
# NOT verified on real XPU by us (no Intel GPU here): the variables below are
# the ones vLLM's XPU worker and the reference report use; see debug.md for
# what is unknown on XPU.
set -euo pipefail
MODEL=${1:?usage: serve_dp_ep_xpu.sh MODEL [vllm serve args...]}
shift
TP=${TP:-2}
DP=${DP:-2}
PORT=${PORT:-8000}
VLLM=${VLLM:-vllm}
need=$(( TP * DP ))
# Which GPUs this server may use; xpu:i is the i-th listed device.
export ZE_AFFINITY_MASK=${ZE_AFFINITY_MASK:-$(seq -s, 0 $(( need - 1 )))}
# vLLM's XPU worker defaults this to ofi when unset; stated for clarity.
export CCL_ATL_TRANSPORT=${CCL_ATL_TRANSPORT:-ofi}
export VLLM_WORKER_MULTIPROC_METHOD=${VLLM_WORKER_MULTIPROC_METHOD:-spawn}
# Device barrier before each MoE dispatch/combine: patch 0007's switch
# VLLM_MOE_ALLGATHER_BARRIER=auto|1|0 (auto, the default: on for XPU only).
# Set 0 to measure without it, once the run is known to be correct.
python3 - <<'PY' || { echo "serve_dp_ep_xpu.sh: this torch has no XPU/XCCL support" >&2; exit 2; }
import torch, torch.distributed as dist
assert torch.xpu.is_available() and dist.is_xccl_available()
PY
echo "serve_dp_ep_xpu.sh: TP=$TP DP=$DP EP on, ZE_AFFINITY_MASK=$ZE_AFFINITY_MASK, port $PORT" >&2
exec "$VLLM" serve "$MODEL" \
  --tensor-parallel-size "$TP" \
  --data-parallel-size "$DP" \
  --enable-expert-parallel \
  --port "$PORT" \
  "$@"
