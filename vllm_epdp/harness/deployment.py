"""What a `vllm serve` deployment is: model, parallel layout, model runner,
topology and the options of its command line.

Its own module so that serving.py (which starts deployments) and the
topologies it delegates to (topology_netns.py, topology_ray.py) all read it
without importing each other.
"""

from __future__ import annotations

import dataclasses
import sys

TOPOLOGIES = ("mp", "multinode", "ray", "ray-executor", "ray-multinode")
RAY_TOPOLOGIES = ("ray", "ray-executor", "ray-multinode")


@dataclasses.dataclass(frozen=True)
class Deployment:
    model: str
    dtype: str = "float32"
    dp: int = 2
    tp: int = 1
    ep: bool = True
    runner: str = "auto"  # vllm_epdp.model_runners: "v1", "v2" or vLLM's own pick
    topology: str = "mp"
    max_model_len: int = 512
    max_logprobs: int = 5
    # Force a KV cache this small (blocks per rank) so that preemption must
    # happen under load; None: vLLM sizes it from VLLM_CPU_KVCACHE_SPACE.
    num_kv_blocks: int | None = None
    # True/False: --async-scheduling / --no-async-scheduling; None: vLLM's
    # default (off on CPU, on elsewhere unless a patch or option says otherwise).
    async_scheduling: bool | None = None
    extra_args: tuple[str, ...] = ()
    # Ray topologies: "v2" (RayExecutorV2, vLLM 0.32.0's default) or
    # "legacy" (RayDistributedExecutor: VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0).
    ray_executor: str = "v2"
    # HF_HUB_OFFLINE=1: the model is a local directory (ours always are).
    hub_offline: bool = True

    def describe(self) -> str:
        parts = [f"DP={self.dp}", f"TP={self.tp}"] + (["EP"] if self.ep else [])
        ray = f" executor={self.ray_executor}" if self.topology in RAY_TOPOLOGIES else ""
        asked = "" if self.async_scheduling is None else f" async={'on' if self.async_scheduling else 'off'}"
        return f"{'+'.join(parts)} {self.topology}{ray} runner={self.runner}{asked}"

    def serve_args(self) -> list[str]:
        """The `vllm serve` arguments every topology shares."""
        args = [
            self.model,
            "--tensor-parallel-size", str(self.tp),
            "--enforce-eager",
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-logprobs", str(self.max_logprobs),
            "--seed", "0",
        ]  # fmt: skip
        if self.ep:
            args.append("--enable-expert-parallel")
        if self.num_kv_blocks is not None:
            args += ["--num-gpu-blocks-override", str(self.num_kv_blocks)]
        if self.async_scheduling is not None:
            args.append("--async-scheduling" if self.async_scheduling else "--no-async-scheduling")
        return args + list(self.extra_args)

    def one_host_argv(self, port: int) -> list[str]:
        """The whole `vllm serve` command of a one-host deployment on 127.0.0.1:port."""
        argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *self.serve_args()]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--data-parallel-size", str(self.dp)]
        return argv + ["--api-server-count", "1"]
