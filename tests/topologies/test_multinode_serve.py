"""Multi-node DP as users run it, on one machine: two "nodes" are two network
namespaces joined by a veth pair (vllm_epdp.harness.netns); node A runs `vllm serve
--data-parallel-size 2 --data-parallel-size-local 1 --data-parallel-address A`
(API + DP rank 0), node B the same with `--headless --data-parallel-start-rank
1` (vllm_epdp.harness.topology_netns). DP=2 + EP, the tiny fp32 Qwen3-MoE.

What must hold: greedy fp32 answers identical token for token to a DP=1
server of the same model; the collective ledger, written by the processes of
both nodes into one directory, agreeing in every group; the nodes talked over
the veth (its byte counters) and really were two DP ranks on two nodes (vLLM's
rank lines in each node's log); afterwards no process, namespace or link left.
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
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
    ),
]


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> Path:
    return tiny_models.build("qwen3-moe", tmp_path_factory.mktemp("multinode") / "qwen3-moe")


@pytest.fixture(scope="module")
def dp1_reference(tiny_moe, vllm_patched, tmp_path_factory) -> Path:
    """The same requests answered by a DP=1 server (mp, one engine)."""
    work = tmp_path_factory.mktemp("dp1")
    ref = work / "ref.json"
    deployment = serving.Deployment(str(tiny_moe), dp=1, ep=False)
    with serving.serve(deployment, work, env=vllm_patched, ledger=False, deadline_s=1200) as server:
        verdict = client(server.url, work / "client.log", "--num-requests", "8", "--save", str(ref))
    assert verdict.startswith("VERDICT: PASS"), verdict
    return ref


@pytest.mark.timeout(1800)
def test_headless_second_node_matches_dp1(tiny_moe, vllm_patched, dp1_reference, tmp_path):
    deployment = serving.Deployment(str(tiny_moe), dp=2, ep=True, topology="multinode")
    with serving.serve(deployment, tmp_path, env=vllm_patched, deadline_s=1500) as server:
        net = netns.Network.from_dict(json.loads((tmp_path / "network.json").read_text()))
        node_a, node_b = server.groups
        a_pids, b_pids = pids_of([node_a]), pids_of([node_b])
        # Every prompt twice, 8 at once: both DP ranks get work, in batches
        # whose make-up differs from the DP=1 run's (fp32: still exact).
        verdict = client(
            server.url,
            tmp_path / "client.log",
            "--num-requests", "16", "--concurrency", "8", "--reference", str(dp1_reference),
        )  # fmt: skip
        a_pids |= pids_of([node_a])
        b_pids |= pids_of([node_b])
        quiet = ledger.wait_quiet(server.ledger_dir)
        alive = server.alive()
        crossed = net.link_bytes()
        tail = server.log_tail(60)
    assert alive, "a node exited while serving:\n" + tail
    assert verdict.startswith("VERDICT: PASS 16/16 answers matched"), verdict + "\n" + tail

    # Two DP ranks, one per node, each an EP rank (vLLM's own log lines).
    log_a, log_b = (p.read_text(errors="replace") for p in server.logs)
    assert "is assigned as DP rank 0" in log_a and "EP rank 0" in log_a
    assert "is assigned as DP rank 1" in log_b and "EP rank 1" in log_b
    assert f"head node address tcp://{net.a.address}:" in log_b  # headless, pointed at A

    # The nodes talked over the veth, and not a little: gloo collectives of
    # every step (the handshake alone is a few kB).
    rx_b, tx_b = crossed[net.b.name]
    assert min(rx_b, tx_b) > 1_000_000, crossed

    # Both nodes wrote into the one ledger directory, and every group agrees.
    assert quiet, "the engines' ledgers kept growing after the last request"
    writers = {int(p.stem) for p in server.ledger_dir.glob("*.jsonl")}
    assert writers & a_pids and writers & b_pids, (writers, a_pids, b_pids)
    mismatches = ledger.compare(server.ledger_dir)
    assert mismatches == [], "\n".join(mismatches + ledger.summary(server.ledger_dir))

    # Nothing left: processes of either node, namespaces, links.
    assert not pids_of(server.groups)
    assert not left_running(a_pids | b_pids)
    assert netns.leftovers_of(net) == []
