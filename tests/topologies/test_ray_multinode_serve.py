"""Ray DP over two nodes for real, on one machine: a Ray head in one network
namespace and a Ray worker node in the other, joined by a veth pair
(vllm_epdp.harness.netns, topology ray-multinode); `vllm serve --data-parallel-backend
ray --data-parallel-size 2 --data-parallel-size-local 1` on the head, so Ray
places DP rank 0 on the head and DP rank 1 on the worker node (patch 0015).
DP=2 + EP, the tiny fp32 Qwen3-MoE, RayExecutorV2.

What must hold: greedy fp32 answers identical to a DP=1 server's; DP rank 1's
engine and worker running on the second node (Ray's log prefix names that
node's address; the ledger has writers among that node's processes); the
ledgers of both nodes agreeing in every group; the traffic between the DP
ranks crossing the veth; afterwards no process, namespace or link left.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.topologies.serve_checks import client, left_running, pids_of
from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness import netns, serving, tiny_models

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.full,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
    ),
]


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> Path:
    return tiny_models.build("qwen3-moe", tmp_path_factory.mktemp("ray-multinode") / "qwen3-moe")


@pytest.fixture(scope="module")
def dp1_reference(tiny_moe, vllm_patched, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dp1")
    ref = work / "ref.json"
    deployment = serving.Deployment(str(tiny_moe), dp=1, ep=False)
    with serving.serve(deployment, work, env=vllm_patched, ledger=False, deadline_s=1200) as server:
        verdict = client(server.url, work / "client.log", "--num-requests", "8", "--save", str(ref))
    assert verdict.startswith("VERDICT: PASS"), verdict
    return ref


@pytest.mark.timeout(1800)
def test_dp_rank_1_on_the_ray_worker_node_matches_dp1(tiny_moe, vllm_patched, dp1_reference, tmp_path):
    deployment = serving.Deployment(str(tiny_moe), dp=2, ep=True, topology="ray-multinode")
    with serving.serve(deployment, tmp_path, env=vllm_patched, deadline_s=1500) as server:
        net = netns.Network.from_dict(json.loads((tmp_path / "network.json").read_text()))
        _, head, node_b = server.groups
        b_pids = pids_of([node_b])
        everyone = pids_of(server.groups)
        verdict = client(
            server.url, tmp_path / "client.log",
            "--num-requests", "16", "--concurrency", "8", "--reference", str(dp1_reference),
        )  # fmt: skip
        b_pids |= pids_of([node_b])
        everyone |= pids_of(server.groups)
        quiet = ledger.wait_quiet(server.ledger_dir)
        alive = server.alive()
        crossed = net.link_bytes()
        tail = server.log_tail(60)
    assert alive, "a process exited while serving:\n" + tail
    assert verdict.startswith("VERDICT: PASS 16/16 answers matched"), verdict + "\n" + tail

    # DP rank 1's engine actor ran on node B: Ray prefixes the lines of an
    # actor on another node than the driver with that node's address.
    text = server.logs[0].read_text(errors="replace")
    assert "(DPMoEEngineCoreActor pid=" in text and f"ip={net.b.address})" in text, tail

    # The DP ranks talked over the veth, every step (gloo collectives).
    rx_b, tx_b = crossed[net.b.name]
    assert min(rx_b, tx_b) > 1_000_000, crossed

    # Processes of both nodes wrote ledgers into the one directory; every group agrees.
    assert quiet, "the engines' ledgers kept growing after the last request"
    writers = {int(p.stem) for p in server.ledger_dir.glob("*.jsonl")}
    assert writers & b_pids and writers - b_pids, (writers, b_pids)
    mismatches = ledger.compare(server.ledger_dir)
    assert mismatches == [], "\n".join(mismatches + ledger.summary(server.ledger_dir))

    assert not left_running(everyone)
    assert netns.leftovers_of(net) == []
