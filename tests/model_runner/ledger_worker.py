"""One rank of the ledger tests. argv[1]: "agree" | "diverge"."""

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

from vllm_epdp.diagnostics import ledger


def main() -> None:
    mode, outdir = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    result: dict = {}

    ledger.install(outdir)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=5))
    sub = dist.new_group([0, 1])
    t = torch.ones(4, dtype=torch.float32)
    dist.all_reduce(t)
    out = torch.empty(8, dtype=torch.float32)
    dist.all_gather_into_tensor(out, t, group=sub)
    # torch 2.13's name for the same op; the packed MoE gather (patch 0002)
    # uses it, so the ledger must see it.
    dist.all_gather_single(out, t, group=sub)
    dist.broadcast(torch.arange(3), src=0)
    objs = [None, None]
    dist.all_gather_object(objs, {"rank": rank})  # inner collectives not counted
    dist.barrier(group=sub)
    if mode == "diverge" and rank == 1:
        # The GH200 pattern: one rank posts one collective more than its peer.
        try:
            dist.all_reduce(torch.zeros(2, dtype=torch.int32))
        except Exception as exc:  # the peer never joins: gloo times out
            result["timed_out"] = type(exc).__name__

    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(result, f)
    # The diverged rank's gloo state is unusable; skip the teardown handshake.
    os._exit(0)


if __name__ == "__main__":
    main()
