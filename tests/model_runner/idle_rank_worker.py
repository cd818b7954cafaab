"""One DP rank of the idle-rank test: vLLM's real CPU model runner on a tiny
dense model, DP = 2 over gloo, eager.

argv: MODEL_DIR LEDGER_DIR STEPS
Rank 0 is idle: it calls the runner's execute_model with an empty
SchedulerOutput STEPS times, as the engine does for a rank whose scheduler has
nothing to run. Rank 1 works: STEPS forward passes of 7 tokens through the
same runner (_dummy_run, which coordinates with the DP group exactly as a
real step's _determine_batch_execution_and_padding does). Done once per DP
backend value the runner distinguishes; the engine core is not involved.
Every torch.distributed collective is recorded (vllm_epdp.diagnostics.ledger).
"""

import datetime
import os
import sys

import torch

from vllm_epdp.diagnostics import ledger


def main() -> None:
    model_dir, ledger_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ledger.install(ledger_dir)
    import vllm_dp_world
    from vllm.config import set_current_vllm_config
    from vllm.distributed.kv_transfer.kv_connector.utils import (
        get_current_attn_backends,
    )
    from vllm.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.attention.backends.utils import (
        get_supported_kv_cache_layouts,
        record_kv_cache_layout,
        resolve_kv_cache_layout,
    )
    from vllm.v1.core.kv_cache_utils import get_kv_cache_configs
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    rank, world = vllm_dp_world.rank(), vllm_dp_world.world_size()
    args = EngineArgs(
        model=model_dir,
        dtype="float32",
        enforce_eager=True,
        skip_tokenizer_init=True,
        max_model_len=256,
        max_num_batched_tokens=256,
        max_num_seqs=8,
    )
    config = args.create_engine_config()
    # vLLM refuses DP for dense models at the engine level (it would run them as
    # independent engines); the runner's DP coordination does not care, so the
    # DP layout is set on the finished config, torchrun style.
    pc = config.parallel_config
    pc.data_parallel_size = world
    pc.data_parallel_rank = pc.data_parallel_rank_local = rank
    pc.distributed_executor_backend = "external_launcher"
    result: dict = {}
    with set_current_vllm_config(config):
        init_distributed_environment(
            world_size=world,
            rank=rank,
            local_rank=rank,
            backend="gloo",
            distributed_init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
            timeout=datetime.timedelta(seconds=int(os.environ.get("EPDP_GLOO_TIMEOUT", "60"))),
        )
        initialize_model_parallel(1, 1)
        runner = CPUModelRunner(config, torch.device("cpu"))
        runner.load_model()
        # What the engine core does before allocating the KV cache.
        specs = runner.get_kv_cache_spec()
        layouts = get_supported_kv_cache_layouts(get_current_attn_backends(config))
        layout = resolve_kv_cache_layout(config, [[layout.name for layout in layouts]], specs.values())
        record_kv_cache_layout(config.cache_config, layout.name)
        (kv_cache_config,) = get_kv_cache_configs(config, [specs], [64 << 20])
        runner.initialize_kv_cache(kv_cache_config)
        # Phase "external_launcher" (torchrun): the runner itself joins the DP
        # step when it has no tokens. Phase "mp" (vllm serve / offline DP): it
        # does not; DPEngineCoreProc runs a dummy batch for that step instead,
        # which this runner-level test leaves out on purpose. mp runs last: a
        # rank left waiting in gloo cannot go on.
        for backend in ("external_launcher", "mp"):
            config.parallel_config.distributed_executor_backend = backend
            done = 0
            try:
                for _ in range(steps):
                    if rank == 0:
                        out = runner.execute_model(SchedulerOutput.make_empty())
                        assert out is not None  # the empty output, no sampling step
                    else:
                        runner._dummy_run(7)
                    done += 1
            except Exception as exc:  # the peer never joined: gloo times out
                result[backend + "_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            result[backend] = done
    vllm_dp_world.write_result(result)
    os._exit(0)  # a timed-out gloo group cannot be torn down cleanly


if __name__ == "__main__":
    main()
