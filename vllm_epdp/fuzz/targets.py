"""The deployments the fuzzer drives: the serving topologies users run, each
with its DP=1 reference (same model, same model runner, no EP)."""

from __future__ import annotations

import dataclasses

from vllm_epdp.errors import EpdpError
from vllm_epdp.harness.serving import Deployment

MAX_MODEL_LEN = 512
# Blocks of 128 tokens per DP rank. vLLM admits a request once its prompt's
# blocks are free, so 6 blocks take three prompts of two blocks each; when
# their decode crosses into a third block none is free and vLLM must preempt
# (a single long prompt only waits: no preemption).
SMALL_KV_BLOCKS = 6
CPU_BLOCK_TOKENS = 128  # vLLM's default KV block size on CPU


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    summary: str
    dp: int
    tp: int
    topology: str  # serving: vllm_epdp.harness.serving.TOPOLOGIES; offline: "offline" (VLLM_DP_* per rank), "torchrun"
    small_kv: bool = False
    ray_executor: str = "v2"  # Ray topologies: "v2" (RayExecutorV2) or "legacy"

    @property
    def offline(self) -> bool:
        return self.topology in ("offline", "torchrun")

    def deployment(self, model: str, runner: str, async_scheduling: bool | None = None) -> Deployment:
        return Deployment(
            model,
            dp=self.dp,
            tp=self.tp,
            ep=True,
            runner=runner,
            topology=self.topology,
            max_model_len=MAX_MODEL_LEN,
            num_kv_blocks=SMALL_KV_BLOCKS if self.small_kv else None,
            async_scheduling=async_scheduling,
            ray_executor=self.ray_executor,
        )

    def reference(self, model: str, runner: str) -> Deployment:
        # vLLM's default scheduling (synchronous on CPU) for the reference,
        # whatever the target runs: async scheduling must not change a greedy
        # answer, so the target is held against the plainest run there is.
        return Deployment(model, dp=1, tp=1, ep=False, runner=runner, topology="mp", max_model_len=MAX_MODEL_LEN)


TARGETS = {
    t.name: t
    for t in (
        Target("serve-dp2-ep", "vllm serve, DP=2 + EP, one host (mp backend)", 2, 1, "mp"),
        Target("serve-dp2-ep-small-kv", "the same with a KV cache small enough to preempt", 2, 1, "mp", True),
        Target("serve-tp2-dp2-ep", "TP=2 x DP=2 with EP over 4 ranks, the reporters' layout", 2, 2, "mp"),
        Target("serve-multinode-dp2-ep", "two nodes (network namespaces), DP rank 1 headless", 2, 1, "multinode"),
        Target("offline-dp2-ep", "offline DP=2 + EP, one LLM per DP rank (VLLM_DP_* environment)", 2, 1, "offline"),
        Target("offline-torchrun-dp2-ep", "offline DP=2 + EP under torchrun (external launcher)", 2, 1, "torchrun"),
        # Ray on CPU (patch 0015): a Ray cluster of the session's own.
        Target("serve-ray-dp2-ep", "vllm serve --data-parallel-backend ray, DP=2 + EP, one host", 2, 1, "ray"),
        Target(
            "serve-ray-tp2-dp2-ep",
            "Ray DP backend, TP=2 x DP=2 + EP, TP workers as Ray actors (RayExecutorV2)",
            2,
            2,
            "ray",
        ),
        Target(
            "serve-ray-legacy-tp2-dp2-ep",
            "the same with the legacy Ray executor (compiled graph; VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0); "
            "--async off: vLLM 0.32.0 refuses async scheduling for it",
            2,
            2,
            "ray",
            ray_executor="legacy",
        ),
        Target(
            "serve-ray-multinode-dp2-ep",
            "Ray head + Ray worker node in two network namespaces, Ray places DP rank 1 on the worker node",
            2,
            1,
            "ray-multinode",
        ),
    )
}


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise EpdpError(f"unknown fuzz target '{name}': use one of {', '.join(TARGETS)}") from None
