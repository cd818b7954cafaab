"""One of three DP ranks (EP on, eager) agreeing on each step's token count
with Model Runner V2's DP sync (v1/worker/gpu/dp_utils.py
dispatch_cg_and_sync_dp) of a release with fault tolerance (0.34.0 on):
first with every rank alive, then with fault tolerance on and DP rank 2
marked dead the way the worker sentinel marks it after a failure
(get_dp_group().dead_dp_ranks), so the sync drops its column by copying.
Rank 2 still joins the gloo all-reduce here, with no tokens, as a dead rank's
slot holds none; what it computes for itself is not looked at. Writes, per
phase, [this rank's row count, DPSyncState.num_tokens_across_dp] per step."""

DEAD = 2
ALIVE_STEPS = [[37, 1, 5], [1, 512, 3]]
DEAD_STEPS = [[37, 1, 0], [1, 512, 0]]


def main() -> None:
    import vllm_dp_world
    from vllm.distributed.parallel_state import get_dp_group
    from vllm.v1.worker.gpu.dp_utils import dispatch_cg_and_sync_dp

    config = vllm_dp_world.init(enable_expert_parallel=True)
    pc = config.parallel_config
    rank, world = vllm_dp_world.rank(), vllm_dp_world.world_size()

    def sync(counts):
        desc, state = dispatch_cg_and_sync_dp(
            None,
            1,
            counts[rank],
            None,
            world,
            rank,
            need_eager=True,
            parallel_config=pc,
        )
        return [desc.num_tokens, state.num_tokens_across_dp.tolist()]

    result = {"alive": [], "dead_rank": []}
    for counts in ALIVE_STEPS:
        result["alive"].append(sync(counts))
    pc.enable_fault_tolerance = True
    get_dp_group().dead_dp_ranks = {DEAD}
    for counts in DEAD_STEPS:
        result["dead_rank"].append(sync(counts))
    vllm_dp_world.write_result(result)


if __name__ == "__main__":
    main()
