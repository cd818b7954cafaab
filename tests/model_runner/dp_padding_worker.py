"""One DP rank: agree on the step's token counts with each model runner's
own DP sync, EP on and off, eager:
  V1  vllm.v1.worker.dp_utils.coordinate_batch_across_dp (cudagraph mode 0)
  V2  vllm.v1.worker.gpu.dp_utils.dispatch_cg_and_sync_dp (no graphs: eager)
Writes, per runner and EP setting, [this rank's row count, every rank's
count in the forward context] for each step."""


def main() -> None:
    import vllm_dp_world
    from vllm.v1.worker.dp_utils import coordinate_batch_across_dp
    from vllm.v1.worker.gpu.dp_utils import dispatch_cg_and_sync_dp

    config = vllm_dp_world.init(enable_expert_parallel=True)
    pc = config.parallel_config
    rank, world = vllm_dp_world.rank(), vllm_dp_world.world_size()
    # The reported uneven step: 37 tokens on rank 0, 1 on rank 1; then an idle
    # rank's dummy step (1 token) against a long prefill.
    steps = [[37, 1], [1, 512], [5, 5]]
    result = {f"{runner}_{key}": [] for runner in ("v1", "v2") for key in ("ep", "no_ep")}
    for counts in steps:
        mine = counts[rank]
        for key, ep in (("ep", True), ("no_ep", False)):
            pc.enable_expert_parallel = ep
            _, across, _ = coordinate_batch_across_dp(
                num_tokens_unpadded=mine,
                allow_microbatching=False,
                parallel_config=pc,
                cudagraph_mode=0,
            )
            result[f"v1_{key}"].append([int(across[rank]), across.tolist()])
            desc, sync = dispatch_cg_and_sync_dp(None, 1, mine, None, world, rank, need_eager=True, parallel_config=pc)
            result[f"v2_{key}"].append([desc.num_tokens, sync.num_tokens_across_dp.tolist()])
    vllm_dp_world.write_result(result)


if __name__ == "__main__":
    main()
