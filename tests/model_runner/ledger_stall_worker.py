"""Rank side of tests/model_runner/test_ledger_stall.py: a real stalled collective.

vLLM's real DP and EP GroupCoordinators (DP = 2, EP on, gloo, groups that
time out after GROUP_TIMEOUT_S), the ledger with its watchdog. Two steps
agree; in the third, rank 0 all-reduces over the DP group while rank 1
all-gathers over the EP group: each waits for a peer that never comes,
until the groups time out. A thread of the test's own waits on an event the
whole time, so the dump must show more than the main thread.
"""

from __future__ import annotations

import json
import os
import threading

import torch

from vllm_epdp.diagnostics import ledger

GROUP_TIMEOUT_S = 10
SLEEPER = "ledger-test-sleeper"


def stalled_collective(rank: int, world_size: int, ledger_dir: str, stall_s: float) -> None:
    # A sibling on the rank's sys.path (function_process puts this folder first).
    from ledger_layers_worker import vllm_groups
    from vllm.distributed.parallel_state import get_dp_group, get_ep_group

    ledger.install(ledger_dir, stall_s=stall_s)
    never = threading.Event()
    threading.Thread(target=never.wait, name=SLEEPER, daemon=True).start()
    result = {}
    with vllm_groups(rank, world_size, tp=1, timeout_s=GROUP_TIMEOUT_S):
        dp, ep = get_dp_group(), get_ep_group()
        for _ in range(2):
            with ledger.step("execute_model", 4):
                dp.all_reduce(torch.ones(4))
                ep.all_gather(torch.ones(2, 3), dim=0)
        try:
            with ledger.step("execute_model", 4):
                if rank == 0:
                    dp.all_reduce(torch.ones(4))
                else:
                    ep.all_gather(torch.ones(2, 3), dim=0)
        except Exception as exc:  # the group timed out: expected
            result["error"] = type(exc).__name__
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(result, f)
    # The groups are unusable after the timeout: no teardown handshake.
    os._exit(0)
