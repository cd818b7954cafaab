"""Rank-side check of patch 0007: the AgRs MoE all2all's barrier switch.

vLLM's real parallel state (DP = world size, EP on, gloo, external-launcher
style), vLLM's real AgRsAll2AllManager and CpuCommunicator, a real forward
context carrying uneven per-rank token counts (one rank with none). Only
torch.distributed.barrier is wrapped, to count calls; it still runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import cases  # noqa: E402


def agrs_barriers(rank: int, world_size: int, scenarios: list) -> None:
    """For each [setting, fake_xpu]: build an AgRsAll2AllManager with
    VLLM_MOE_ALLGATHER_BARRIER=setting (None: unset), run one
    dispatch_router_logits + dispatch + combine, check what they return, and
    print "barriers <setting> <fake_xpu>: N"."""
    from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager
    from vllm.distributed.parallel_state import get_dp_group, get_ep_group
    from vllm.forward_context import get_forward_context, set_forward_context
    from vllm.platforms import current_platform
    from vllm_groups import dp_ep_groups

    sizes = [0] + [r + 2 for r in range(1, world_size)]  # rank 0 has no tokens
    n = sizes[rank]
    hidden, experts, topk = 16, 8, 2
    platform_cls = type(current_platform)
    real_is_xpu = platform_cls.is_xpu
    with dp_ep_groups(rank, world_size) as config:
        for setting, fake_xpu in scenarios:
            if setting is None:
                os.environ.pop("VLLM_MOE_ALLGATHER_BARRIER", None)
            else:
                os.environ["VLLM_MOE_ALLGATHER_BARRIER"] = setting
            # The platform query only: "auto" must resolve to on for XPU.
            platform_cls.is_xpu = (lambda self: True) if fake_xpu else real_is_xpu
            try:
                manager = AgRsAll2AllManager(get_ep_group().cpu_group)
            finally:
                platform_cls.is_xpu = real_is_xpu
            # Read once: changing the variable afterwards changes nothing.
            os.environ["VLLM_MOE_ALLGATHER_BARRIER"] = "0" if setting == "1" else "1"
            calls = _run_moe_collectives(
                manager,
                config,
                rank,
                world_size,
                sizes,
                n,
                hidden,
                experts,
                topk,
                get_forward_context,
                set_forward_context,
            )
            print(f"barriers {setting} {fake_xpu}: {len(calls)}", flush=True)
            # The barrier is on the device group of the group that gathers.
            assert all(g is get_dp_group().device_group for g in calls), calls


def _run_moe_collectives(
    manager, config, rank, world_size, sizes, n, hidden, experts, topk, get_forward_context, set_forward_context
):
    def local(i, dtype, trailing):
        return cases.make_tensor("agrs", rank, i, n, dtype, trailing)

    def everyone(i, dtype, trailing):
        return torch.cat([cases.make_tensor("agrs", r, i, sizes[r], dtype, trailing) for r in range(world_size)])

    x = cases.int_valued("agrs", rank, n, (hidden,), torch.float32)
    logits = local(1, torch.float32, (experts,))
    weights = local(2, torch.float32, (topk,))
    ids = local(3, torch.int32, (topk,))

    calls = []
    real_barrier = dist.barrier

    def counting_barrier(*a, **k):
        calls.append(k.get("group"))
        return real_barrier(*a, **k)

    dist.barrier = counting_barrier
    try:
        with (
            set_forward_context(None, config, num_tokens=n, num_tokens_across_dp=torch.tensor(sizes)),
            get_forward_context().dp_metadata.sp_local_sizes(1),
        ):
            g_x, g_logits = manager.dispatch_router_logits(x, logits)
            g_x2, g_w, g_ids = manager.dispatch(x, weights, ids)
            combined = manager.combine(g_x2)
    finally:
        dist.barrier = real_barrier

    all_x = torch.cat([cases.int_valued("agrs", r, sizes[r], (hidden,), torch.float32) for r in range(world_size)])
    assert cases.bytes_equal(g_x, all_x) and cases.bytes_equal(g_x2, all_x)
    assert cases.bytes_equal(g_logits, everyone(1, torch.float32, (experts,)))
    assert cases.bytes_equal(g_w, everyone(2, torch.float32, (topk,)))
    assert cases.bytes_equal(g_ids, everyone(3, torch.int32, (topk,)))
    # combine sums the gathered tensor over ranks: world_size x own rows.
    assert cases.bytes_equal(combined, x * world_size), "combine"
    return calls
