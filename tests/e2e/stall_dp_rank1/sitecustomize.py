"""A DP rank that never comes: put this directory first on PYTHONPATH and
the process started as DP rank 1 (VLLM_DP_RANK=1) stops before it runs any
code of its own, so its peers wait for it forever, on any machine at any
speed. Used by tests/e2e/test_verify.py's watchdog test; Python imports
``sitecustomize`` at start-up from the first path entry that has one."""

import os
import time


def stalled_rank_never_returns() -> None:
    while True:
        time.sleep(1)


if os.environ.get("VLLM_DP_RANK") == "1":
    stalled_rank_never_returns()
