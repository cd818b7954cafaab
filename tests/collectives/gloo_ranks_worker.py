"""Rank functions that misbehave on purpose, to test the rank launcher (vllm_epdp.harness.ranks) itself."""

import time

import torch
import torch.distributed as dist


def rank1_skips_collective(rank: int, world_size: int) -> None:
    """Rank 0 waits in an all_reduce that rank 1 never joins."""
    if rank == 0:
        dist.all_reduce(torch.ones(1))
    else:
        time.sleep(3600)


def rank1_raises(rank: int, world_size: int) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    dist.all_reduce(torch.ones(1))
