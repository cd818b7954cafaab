"""Rank side of tests/model_runner/test_ledger_fork.py: a process with the ledger
(and its watchdog) installed forks a child, as vLLM forks its engine cores
and workers; each marks steps of its own. argv[1]: the ledger directory;
argv[2]: where the child writes the names of its threads."""

import json
import os
import sys
import threading

from vllm_epdp.diagnostics import ledger


def main() -> None:
    ledger.install(sys.argv[1], stall_s=60)
    with ledger.step("parent", 1):
        pass
    child = os.fork()
    if child == 0:
        with ledger.step("child", 2):
            pass
        with open(sys.argv[2], "w") as f:
            json.dump({"threads": [t.name for t in threading.enumerate()]}, f)
        os._exit(0)
    os.waitpid(child, 0)
    with ledger.step("parent", 3):
        pass
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump({"parent": os.getpid(), "child": child}, f)


if __name__ == "__main__":
    main()
