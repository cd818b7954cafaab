#!/usr/bin/env bash
# vllm serve with TP x DP + expert parallel on NVIDIA GPUs (one node).
#
#   serve_dp_ep_cuda.sh MODEL [extra `vllm serve` args...]
#   TP=4 DP=2 serve_dp_ep_cuda.sh Qwen/Qwen3-30B-A3B      # 8 GPUs
#
# Layout: DP engine cores, each driving TP GPUs. GPUs are assigned in order:
# DP rank d uses GPUs d*TP .. d*TP+TP-1 of CUDA_VISIBLE_DEVICES; EP spans all
# TP*DP GPUs (ep_rank = dp_rank*TP + tp_rank).
# The NaN/'!!!!' output and the MoE collective hangs are fixed by the vllm-epdp
# series (check with `vllm-epdp status`); for the ~1 h deadlock of upstream
# #43547 see debug.md section 2 (run with VLLM_EPDP_LEDGER=DIR to catch it).
# Check answers: python client_check.py --url http://HOST:$PORT --wait 900 \
#                  --reference-url http://HOST:$REF_PORT --criterion close
# (bf16 models: use --criterion close; exact token equality needs fp32.)
set -euo pipefail
MODEL=${1:?usage: serve_dp_ep_cuda.sh MODEL [vllm serve args...]}
shift
TP=${TP:-1}
DP=${DP:-2}
PORT=${PORT:-8000}
VLLM=${VLLM:-vllm}
need=$(( TP * DP ))
have=$(nvidia-smi -L 2>/dev/null | wc -l || echo 0)
if [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && [ "$have" -lt "$need" ]; then
  echo "serve_dp_ep_cuda.sh: TP=$TP x DP=$DP needs $need GPUs, nvidia-smi lists $have" >&2
  exit 2
fi
echo "serve_dp_ep_cuda.sh: TP=$TP DP=$DP EP on ($need GPUs), port $PORT" >&2
exec "$VLLM" serve "$MODEL" \
  --tensor-parallel-size "$TP" \
  --data-parallel-size "$DP" \
  --enable-expert-parallel \
  --port "$PORT" \
  "$@"
