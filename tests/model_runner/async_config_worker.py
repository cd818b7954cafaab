"""Construct real VllmConfigs for DP/EP combinations and report the async
scheduling decision and the log lines that explain it.

platform "cuda-like": the decision a CUDA platform gets. Unpatched, the
CPU platform forces async scheduling off *after* VllmConfig's own decision
(platforms/cpu.py check_and_update_config), so that one override is undone;
patched (0014), VllmConfig itself keeps it off by default on CPU, so
VllmConfig is told the platform is not a CPU. platform "xpu-like": the same,
and the platform says it is an XPU (0011 decides by that). platform "cpu":
the real CPU flow, untouched.
"""

import json
import logging
import os
import sys

CASES = {
    "ep_dp2_default": dict(ep=True, dp=2, async_=None),
    "ep_dp2_explicit": dict(ep=True, dp=2, async_=True),
    "dense_dp2_default": dict(ep=False, dp=2, async_=None),
    "ep_dp1_default": dict(ep=True, dp=1, async_=None),
}


class Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__(level=logging.INFO)
        self.records = records

    def emit(self, record):
        self.records.append(record)


def decide_as_gpu(xpu: bool) -> None:
    """The decision a CUDA or an XPU platform gets, on this CPU."""
    # A CUDA/XPU host has Triton. (0.34.0's CPU platform refuses to configure
    # an x86 CPU without it; the CPU flow keeps that check.)
    import vllm.triton_utils
    from vllm.platforms import current_platform

    vllm.triton_utils.HAS_TRITON = True
    original = type(current_platform).check_and_update_config

    def keep_async_decision(cls, vllm_config):
        decided = vllm_config.scheduler_config.async_scheduling
        original.__func__(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = decided

    type(current_platform).check_and_update_config = classmethod(keep_async_decision)
    current_platform.is_cpu = lambda: False  # VllmConfig's CPU default (patch 0014) stays out
    current_platform.is_xpu = lambda: xpu


def main(platform: str) -> None:
    from vllm.config import ParallelConfig, SchedulerConfig, VllmConfig

    records: list[logging.LogRecord] = []
    logging.getLogger("vllm").addHandler(Keep(records))
    logging.getLogger("vllm").setLevel(logging.INFO)
    if platform in ("cuda-like", "xpu-like"):
        decide_as_gpu(xpu=platform == "xpu-like")
    result = {}
    for name, case in CASES.items():
        records.clear()
        pc = ParallelConfig(
            data_parallel_size=case["dp"],
            enable_expert_parallel=case["ep"],
        )
        sc = SchedulerConfig(max_model_len=2048, is_encoder_decoder=False, async_scheduling=case["async_"])
        config = VllmConfig(parallel_config=pc, scheduler_config=sc)
        result[name] = {
            # 0.34.0 has no V1 and no such field: V2 is all there is.
            "use_v2_model_runner": getattr(config, "use_v2_model_runner", True),
            "async_scheduling": config.scheduler_config.async_scheduling,
            "disable_nccl_for_dp_sync": config.parallel_config.disable_nccl_for_dp_synchronization,
            "log": [(r.levelname, r.getMessage()) for r in records if "sync scheduling" in r.getMessage()],
        }
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
