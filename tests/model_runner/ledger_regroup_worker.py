"""One rank of the ledger's re-created group test: a subgroup made, used once
and destroyed, a hundred times over. Python often reuses the memory (and so
the id()) of a destroyed group for a later one; each must still be recorded
under its own name. argv[1]: the ledger directory. Writes the groups' names,
and how many of them had the id() of an earlier group, to $EPDP_RESULT."""

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

from vllm_epdp.diagnostics import ledger

ROUNDS = 100


def main() -> None:
    ledger.install(sys.argv[1])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    names, ids, reused = [], set(), 0
    for _ in range(ROUNDS):
        group = dist.new_group([0, 1])
        names.append(group.group_name)
        reused += id(group) in ids
        ids.add(id(group))
        dist.all_reduce(torch.ones(2), group=group)
        dist.destroy_process_group(group)
        del group  # no reference left: its memory is free for the next group
    dist.destroy_process_group()
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump({"names": names, "reused_ids": reused}, f)


if __name__ == "__main__":
    main()
