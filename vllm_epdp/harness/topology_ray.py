"""The Ray topologies of vllm_epdp.harness.serving: `vllm serve` on a Ray cluster of
our own (vllm_epdp.harness.ray_cluster), as users run it when one host is not enough.

  ray            ``--data-parallel-backend ray``: Ray places each DP rank
                 (an engine-core actor in a placement group of its own);
                 inside each DP rank the TP workers are Ray actors too
                 (vLLM picks the Ray executor for the Ray DP backend)
  ray-executor   DP ranks as vLLM's own processes (mp backend), the TP
                 workers of each as Ray actors (``--distributed-executor-
                 backend ray``)
  ray-multinode  ``ray``, with the Ray head in one network namespace (the
                 API server, DP rank 0) and a Ray worker node in the other
                 (DP rank 1, placed there by Ray), joined by a veth pair
                 (vllm_epdp.harness.netns), as in topology_netns

``Deployment.ray_executor`` picks the Ray executor: "v2" (RayExecutorV2,
0.32.0's default: one message queue to the workers, as mp) or "legacy"
(RayDistributedExecutor, ``VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0``: execute_model
through a Ray compiled graph, everything else through actor calls).

vLLM's CPU platform names no Ray device (``ray_device_key`` is ""): without
patch 0015 the Ray DP backend stops at "No  found in Ray cluster." and the Ray
executor at "current platform cpu does not support ray.", so ``start``
refuses a vLLM that lacks it, before anything is started (RAY_ON_CPU).

The cluster is started with the server's own environment (PYTHONPATH with the
overlay, the model runner's settings, the ledger directory): Ray's workers
inherit the environment of the `ray start` that made their node, and vLLM's
actors run in Ray workers.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from vllm_epdp.errors import EpdpError
from vllm_epdp.harness import cpu_host, netns, procs, ray_cluster
from vllm_epdp.harness.deployment import Deployment
from vllm_epdp.harness.ports import free_port

TOPOLOGIES = ("ray", "ray-executor", "ray-multinode")
EXECUTORS = ("v2", "legacy")
RAY_ON_CPU = (
    "vLLM's CPU platform names no Ray device (CpuPlatform.ray_device_key is '': "
    "'No  found in Ray cluster.' with --data-parallel-backend ray, 'current platform cpu does not "
    "support ray.' with --distributed-executor-backend ray; upstream #21602, #25386 closed unmerged): "
    "apply the series (patch 0015 makes Ray run on CPU), or use topology mp or multinode"
)
API_PORT = 8000  # inside the namespaces (topology ray-multinode)
# Logical CPUs per Ray node: what vLLM's placement groups count on CPU (one
# per worker, one per DP engine with patch 0015), not cores. 8 fits TP=2 x
# DP=2 (6) on one node.
NUM_CPUS = 8


def ray_device_key(env: dict[str, str]) -> str:
    """CpuPlatform.ray_device_key of the vLLM that ``env`` imports."""
    probe = "from vllm.platforms.cpu import CpuPlatform; print(repr(CpuPlatform.ray_device_key))"
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise EpdpError(f"could not import vLLM's CPU platform: {res.stderr.strip()[-500:]}")
    return lines[-1].strip("'\"")


def check_supported(env: dict[str, str]) -> None:
    if not ray_device_key(env):
        raise EpdpError(RAY_ON_CPU)


def executor_env(deployment: Deployment, env: dict[str, str]) -> dict[str, str]:
    if deployment.ray_executor not in EXECUTORS:
        raise EpdpError(f"unknown Ray executor '{deployment.ray_executor}': use one of {', '.join(EXECUTORS)}")
    return dict(env, VLLM_USE_RAY_V2_EXECUTOR_BACKEND="1" if deployment.ray_executor == "v2" else "0")


def backend_args(deployment: Deployment) -> list[str]:
    """What a Ray topology adds to `vllm serve`."""
    if deployment.topology == "ray-executor":
        return ["--distributed-executor-backend", "ray"]
    return ["--data-parallel-backend", "ray"]


@contextlib.contextmanager
def start(deployment: Deployment, workdir: Path, env: dict[str, str], deadline_s: float) -> Iterator[tuple]:
    """Start the cluster and the server; yield (url, groups, logs) as every
    topology does (the cluster's node groups after the server's, so that a
    dead Ray node shows as a dead server). Everything is gone on return."""
    env = executor_env(deployment, env)
    check_supported(env)
    if deployment.topology == "ray-multinode":
        with _start_two_nodes(deployment, workdir, env, deadline_s) as started:
            yield started
        return
    env = cpu_host.cpu_env(env, deployment.dp * deployment.tp, hub_offline=deployment.hub_offline)
    with ray_cluster.cluster(workdir, env, num_cpus=NUM_CPUS, deadline_s=deadline_s) as ray:
        (workdir / "ray.json").write_text(json.dumps({"address": ray.address, "temp_dir": str(ray.temp_dir)}))
        port = free_port()
        argv = deployment.one_host_argv(port) + backend_args(deployment)
        log = workdir / "server.log"
        spec = procs.ProcSpec("server", argv, ray.client_env(env), log)
        with procs.ProcGroup(f"serve {deployment.describe()}", [spec], deadline_s) as group:
            yield f"http://127.0.0.1:{port}", [group, *ray.groups], [log, *(n.log for n in ray.nodes)]


@contextlib.contextmanager
def _start_two_nodes(deployment: Deployment, workdir: Path, env: dict[str, str], deadline_s: float) -> Iterator[tuple]:
    from vllm_epdp.harness import topology_netns

    if deployment.dp != topology_netns.NODES or deployment.tp != 1:
        raise EpdpError(f"topology ray-multinode runs DP={topology_netns.NODES} x TP=1, one DP rank per node")
    cores = topology_netns.node_cores()
    with netns.network(client_link=True) as net:
        (workdir / "network.json").write_text(json.dumps(net.to_dict(), indent=1))
        envs = [topology_netns.node_env(env, node, cores[i]) for i, node in enumerate(net.nodes)]
        head_env = envs[0]
        with ray_cluster.cluster(
            workdir, head_env, num_cpus=NUM_CPUS, node_ip=net.a.address, wrap=net.a.exec_argv, deadline_s=deadline_s
        ) as ray:
            ray_cluster.join(ray, "node-b", net.b.address, envs[1], wrap=net.b.exec_argv, deadline_s=deadline_s)
            (workdir / "ray.json").write_text(json.dumps({"address": ray.address, "temp_dir": str(ray.temp_dir)}))
            argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *deployment.serve_args()]
            argv += ["--data-parallel-size", str(deployment.dp), "--data-parallel-size-local", "1"]
            argv += ["--data-parallel-address", net.a.address, "--data-parallel-backend", "ray"]
            argv += ["--host", net.a.address, "--port", str(API_PORT), "--api-server-count", "1"]
            log = workdir / "server.log"
            spec = procs.ProcSpec("server", net.a.exec_argv(argv), ray.client_env(head_env), log)
            label = f"serve on Ray head {net.a.name} {deployment.describe()}"
            # The server's group is closed before the cluster, the cluster
            # before the namespaces.
            with procs.ProcGroup(label, [spec], deadline_s) as group:
                yield (
                    f"http://{net.a.address}:{API_PORT}",
                    [group, *ray.groups],
                    [log, *(n.log for n in ray.nodes)],
                )
