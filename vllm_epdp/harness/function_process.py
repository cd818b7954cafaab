"""Inside one rank of ranks.run_ranks with a function target: join the gloo group, call the function.

    python -m vllm_epdp.harness.function_process FILE.py:NAME HANG_S KWARGS_JSON STORE

RANK and WORLD_SIZE come from the environment (ranks.run_ranks sets them).
The function is called as ``NAME(rank, world_size, **kwargs)``; the rank
exits 0 if it returns. After HANG_S seconds faulthandler writes every
thread's stack to stderr and exits: a collective that never completes shows
where it waits instead of hanging the run.
"""

from __future__ import annotations

import datetime
import faulthandler
import importlib.util
import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    target, hang_s, kwargs, store = argv
    faulthandler.enable(all_threads=True)
    faulthandler.dump_traceback_later(float(hang_s), exit=True)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # What torchrun would set too: vLLM's external-launcher mode reads it.
    os.environ["LOCAL_RANK"] = str(rank)

    import torch.distributed as dist

    path, name = target.rsplit(":", 1)
    # As `python FILE` would have it: the file's own directory first, so it
    # imports its neighbours.
    sys.path.insert(0, str(Path(path).resolve().parent))
    spec = importlib.util.spec_from_file_location("_rank_target", path)
    assert spec is not None and spec.loader is not None  # a FILE.py always has a source loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, name)

    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=float(hang_s)),
    )
    try:
        fn(rank, world_size, **json.loads(kwargs))
    finally:
        faulthandler.cancel_dump_traceback_later()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
