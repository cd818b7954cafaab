"""One DP rank: agree on the step's token counts with vLLM's own
coordinate_batch_across_dp, EP on and off, eager (cudagraph mode 0)."""

import vllm_dist
from vllm.v1.worker.dp_utils import coordinate_batch_across_dp

config = vllm_dist.init(enable_expert_parallel=True)
pc = config.parallel_config
# The BRIEF's uneven step: 37 tokens on rank 0, 1 on rank 1; then an idle
# rank's dummy step (1 token) against a long prefill.
steps = [[37, 1], [1, 512], [5, 5]]
result = {"ep": [], "no_ep": []}
for counts in steps:
    for key, ep in (("ep", True), ("no_ep", False)):
        pc.enable_expert_parallel = ep
        _, across, mode = coordinate_batch_across_dp(
            num_tokens_unpadded=counts[vllm_dist.RANK],
            allow_microbatching=False,
            parallel_config=pc,
            cudagraph_mode=0,
        )
        result[key].append(across.tolist())
vllm_dist.write_result(result)
