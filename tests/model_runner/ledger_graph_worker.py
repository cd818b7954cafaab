"""Rank side of tests/model_runner/test_ledger_graphs.py: the ledger's graph layer
with a stand-in for the graph class (CPU has no CUDA/XPU graphs).

Two graphs are "captured" (4 and 8 tokens), each holding an all-reduce on the
default group and an all-gather on a subgroup, and one graph without any
collective. Then four steps replay the 4-token graph, except that rank 1
replays the 8-token one in step 3: what a rank that took another batch size
than its peers would post.
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from vllm_epdp.diagnostics import ledger
from vllm_epdp.diagnostics.ledger import graphs


class StandInGraph:
    """torch.cuda.CUDAGraph's three methods, doing nothing on any device. The
    collectives posted between capture_begin and capture_end really run
    (gloo): on a GPU they would only be captured."""

    def capture_begin(self, *args, **kwargs) -> None:
        pass

    def capture_end(self) -> None:
        pass

    def replay(self) -> None:
        pass


def graph_replays(rank: int, world_size: int, ledger_dir: str) -> None:
    ledger.install(ledger_dir)
    ledger.instrument_graph_class(StandInGraph)
    sub = dist.new_group(list(range(world_size)))
    captured = {}
    for tokens in (4, 8):
        graph = StandInGraph()
        graph.capture_begin()
        dist.all_reduce(torch.ones(tokens, 16))
        dist.all_gather_into_tensor(torch.empty(world_size * tokens), torch.ones(tokens), group=sub)
        graph.capture_end()
        captured[tokens] = graph
    quiet = StandInGraph()
    quiet.capture_begin()
    torch.ones(3).mul_(2)
    quiet.capture_end()
    for step in range(1, 5):
        with ledger.step("execute_model", 4):
            captured[8 if (rank == 1 and step == 3) else 4].replay()
            quiet.replay()
    with open(os.environ["EPDP_RESULT"], "w") as f:
        json.dump(
            {
                "instrumented": {
                    "torch.cuda.CUDAGraph": graphs.instrumented(torch.cuda.CUDAGraph),
                    "torch.xpu.XPUGraph": graphs.instrumented(torch.xpu.XPUGraph),
                },
                "subgroup": sub.group_name,
            },
            f,
        )
