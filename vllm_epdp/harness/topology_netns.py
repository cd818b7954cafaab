"""Topology "multinode": vLLM's own multi-node DP launch (one `vllm serve`
per node, mp backend) on two "nodes" that are network namespaces of this
machine (vllm_epdp.harness.netns).

  node A  `vllm serve MODEL ... --data-parallel-size N --data-parallel-size-local 1
          --data-parallel-address A --data-parallel-rpc-port P --host A --port 8000`
          API server, DP coordinator and DP rank 0
  node B  `vllm serve MODEL ... --headless --data-parallel-size N
          --data-parallel-size-local 1 --data-parallel-start-rank 1
          --data-parallel-address A --data-parallel-rpc-port P`
          DP ranks 1 .. N-1 (one per node here, so N = 2)

Where the client is: on the host. netns.network() gives the host a client
link into node A and a route to A's node address only, so the URL is
``http://<A>:8000`` as on a real cluster (a client talks to the head node's
address), the health checks of vllm_epdp.harness.serving work unchanged, and node B
cannot be reached from the host at all: every byte between the nodes goes
over the veth pair.

Per node: ``VLLM_HOST_IP`` = its node address (vLLM's get_ip() asks the
default route, which a namespace does not have: it would answer 0.0.0.0) and
``GLOO_SOCKET_IFNAME`` = its end of the veth. Without the latter gloo picks
the address the hostname resolves to, 127.0.0.1 on this machine (/etc/hosts),
and a peer on the other node is told to connect to its own loopback.
Each node is pinned to its own core when there are two (one local DP rank each).

Ports: each namespace has its own port space, so fixed ports are free there
by construction; no free_port() race with other runs on the machine.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from vllm_epdp.errors import EpdpError
from vllm_epdp.harness import cpu_host, netns, procs
from vllm_epdp.harness.deployment import Deployment

API_PORT = 8000
RPC_PORT = 13345
NODES = 2  # one DP rank per node


def node_env(env: dict[str, str], node: netns.Node, cores: str) -> dict[str, str]:
    out = cpu_host.cpu_env(env, 1, hub_offline=True)
    out["VLLM_CPU_OMP_THREADS_BIND"] = cores
    out["VLLM_HOST_IP"] = node.address
    out["GLOO_SOCKET_IFNAME"] = node.ifname
    return out


def node_cores() -> list[str]:
    """One core list per node: the cores we may use, split in two (every
    node gets all of them on a one-core machine)."""
    return cpu_host.cpu_bind(NODES).split("|")


def node_argv(deployment: Deployment, net: netns.Network, rank: int) -> list[str]:
    """`vllm serve` for the node that holds DP rank ``rank``."""
    argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *deployment.serve_args()]
    argv += ["--data-parallel-size", str(deployment.dp), "--data-parallel-size-local", "1"]
    argv += ["--data-parallel-address", net.a.address, "--data-parallel-rpc-port", str(RPC_PORT)]
    if rank == 0:
        # One API server: vLLM's default is one per DP rank in the whole
        # deployment (internal load balancing), which a 2-core machine
        # does not need.
        argv += ["--host", net.a.address, "--port", str(API_PORT), "--api-server-count", "1"]
    else:
        argv += ["--headless", "--data-parallel-start-rank", str(rank)]
    return argv


@contextlib.contextmanager
def start(deployment: Deployment, workdir: Path, env: dict[str, str], deadline_s: float) -> Iterator[tuple]:
    """Start both nodes; yield (url, [group A, group B], [log A, log B]).
    The network and every process in it are gone when this returns;
    workdir/network.json says what it was."""
    if deployment.dp != NODES:
        raise EpdpError(f"topology multinode runs one DP rank per node on {NODES} nodes: use dp={NODES}")
    if deployment.tp != 1:
        raise EpdpError("topology multinode runs TP=1 per node here (one core per node): use tp=1")
    with netns.network(client_link=True) as net, contextlib.ExitStack() as stack:
        # Where everything is, for a person (which namespace to `ip netns
        # exec` into) and for tests (netns.Network.from_dict).
        (workdir / "network.json").write_text(json.dumps(net.to_dict(), indent=1))
        cores = node_cores()
        groups, logs = [], []
        for rank, node in enumerate(net.nodes):
            log = workdir / f"node-{'ab'[rank]}.log"
            argv = node.exec_argv(node_argv(deployment, net, rank))
            spec = procs.ProcSpec(f"node-{'ab'[rank]}", argv, node_env(env, node, cores[rank]), log)
            role = "API + DP rank 0" if rank == 0 else f"headless DP rank {rank}"
            label = f"node {'AB'[rank]} {node.name} ({role}) {deployment.describe()}"
            # Entered on the stack: the groups close (every process of them
            # killed) before the namespaces are deleted.
            groups.append(stack.enter_context(procs.ProcGroup(label, [spec], deadline_s)))
            logs.append(log)
        yield f"http://{net.a.address}:{API_PORT}", groups, logs
