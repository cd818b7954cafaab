"""Run the series' pure-Python pieces on the vLLM tree first on PYTHONPATH
(a release's own Python files, 0.33.0 or 0.34.0, no compiled kernels) and write what they did as
JSON to $EPDP_RESULT. A piece missing from the tree (pristine) is reported as
its error, so the caller can tell "not there" from "wrong"."""

import json
import os
import queue
import traceback
from types import SimpleNamespace

import torch

CHECKS = {}  # name -> function, run in this order by main()


def check(name):
    def register(fn):
        CHECKS[name] = fn
        return fn

    return register


@check("ep_requires_dp_padding")
def _():
    from vllm.v1.worker.dp_utils import ep_requires_dp_padding

    cases = [(ep, dp) for ep in (False, True) for dp in (1, 2, 4)]
    return {
        f"ep={ep} dp={dp}": ep_requires_dp_padding(SimpleNamespace(enable_expert_parallel=ep, data_parallel_size=dp))
        for ep, dp in cases
    }


@check("local_expert_pairs")
def _():
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import local_expert_pairs

    # 8 global experts, this rank holds 4..7 as local 0..3.
    expert_map = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3])
    hidden = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    ids = torch.tensor([[0, 5], [3, -1], [6, 7]])
    weights = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.3, 0.7]])
    rows, w, local, token = local_expert_pairs(hidden, weights, ids, expert_map)
    return {
        "rows": rows.tolist(),
        "weights": w.squeeze(1).tolist(),
        "local_ids": local.squeeze(1).tolist(),
        "local_dtype": str(local.dtype),
        "token_of_row": token.tolist(),
    }


@check("offline_dp_wave")
def _():
    from vllm.v1.engine import core, core_client

    # The engine side, without an engine: EngineCoreProc.add_request (the
    # scheduler) is not what is tested here.
    core.EngineCoreProc.add_request = lambda self, request, request_wave=0: None
    engine = object.__new__(core.DPEngineCoreProc)
    engine.has_coordinator = False
    engine.frontend_adding = False
    engine.current_wave = 0
    seen = {}
    engine.add_request(object(), 0)
    seen["engine_after_add"] = engine.frontend_adding
    engine.frontend_batch_added()
    seen["engine_after_batch_added"] = engine.frontend_adding
    coordinated = object.__new__(core.DPEngineCoreProc)
    coordinated.has_coordinator = True
    coordinated.frontend_adding = False
    coordinated.current_wave = 3
    coordinated.engines_running = True
    coordinated.add_request(object(), 3)
    seen["coordinated_after_add"] = coordinated.frontend_adding

    # The front-end side: the first get_output after requests were added
    # tells the engine, once, before it waits for outputs.
    client = object.__new__(core_client.SyncMPClient)
    calls = []
    client.is_dp = True
    client.batch_open = False
    client.engines_running = False
    client._send_input = lambda kind, request: calls.append(("send", str(kind)))
    client.call_utility = lambda method, *args: calls.append(("utility", method))
    client.outputs_queue = queue.Queue()
    # 0.34.0 sends a copy with the prompt ids packed (_with_packed_prompt),
    # which reads them: none here.
    client.add_request(SimpleNamespace(prompt_token_ids=None))
    client.add_request(SimpleNamespace(prompt_token_ids=None))
    for _ in range(2):
        client.outputs_queue.put(core.EngineCoreOutputs())
        client.get_output()
    seen["client_calls"] = [c[1] if c[0] == "utility" else c[0] for c in calls]
    return seen


@check("ray_on_cpu")
def _():
    # Patch 0015: what the CPU platform tells Ray, and what a CPU worker asks
    # Ray for (VLLM_TARGET_DEVICE=cpu: current_platform is the CPU one).
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.executor import ray_utils

    return {
        "device_key": CpuPlatform.ray_device_key,
        "worker_options": ray_utils.ray_worker_resource_options(1.0),
        "accelerator_ids": ray_utils.ray_accelerator_ids("CPU"),
    }


def main() -> None:
    import vllm

    result = {"vllm_file": vllm.__file__}
    for name, fn in CHECKS.items():
        try:
            result[name] = fn()
        except Exception as exc:  # the caller asserts on it
            result[name] = {"error": f"{type(exc).__name__}: {exc}", "where": traceback.format_exc().splitlines()[-3:]}
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
