"""A Ray cluster of our own for one test, fuzz session or verify run: `ray
start` with a fixed CPU count, its temp dir inside the caller's directory,
every port chosen by us, stopped with everything it started.

    with ray_cluster.cluster(workdir, env) as ray:
        env["RAY_ADDRESS"] = ray.address      # vLLM's ray.init() joins it

Why our own cluster, never a default one: vLLM's ``ray.init()`` without
``RAY_ADDRESS`` starts a private Ray instance inside the engine process, with
its files under /tmp/ray and as many CPUs as the machine has; `ray stop`
ends every Ray process of the machine, other people's clusters included. Here:

- Each node is one `ray start --block` process started by procs.ProcGroup
  (own session, hard deadline, stacks on a hang). Ray's daemons (GCS,
  raylet, dashboard agent) and every worker and actor process are its
  descendants (procs makes us a subreaper, so they stay ours even when Ray
  detaches them), and stopping kills exactly them: SIGTERM to `ray start
  --block` (which then stops its daemons), then the whole group.
- Ray's temp dir (sessions, logs, the object store's socket) is a new
  directory inside the caller's (a test's tmp_path), so it goes with it.
  Unix socket paths are limited to 107 bytes and Ray puts its socket ~62
  bytes below the temp dir; where the caller's path is too long, Ray is
  given a short symbolic link to it in the system temp dir instead
  (``epdp-ray-<pid>-*``), removed when the cluster stops (and, after a run
  killed with SIGKILL, by the next cluster: the pid is gone).
- On loopback for real: Ray replaces a --node-ip-address of 127.0.0.1 by
  the host's routable address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  (Ray's switch for one-host clusters), which a loopback cluster sets for
  its nodes and, through ``client_env``, for the processes that use it,
  with VLLM_HOST_IP=127.0.0.1 so that vLLM's own addresses agree.
- A fixed logical CPU count (``num_cpus``), independent of the machine:
  Ray's CPUs are only what placement groups count (vLLM on CPU asks one per
  worker and one per DP engine, patch 0015), not cores.
- Every port Ray would otherwise take at its fixed default (GCS 6379,
  dashboard agent 52365, client server 10001, ...) is a free one we pick, so
  two clusters on one machine never collide; the object store is small
  (vLLM passes only small messages through it).

A second node joins with ``join()`` (e.g. inside another network namespace:
pass ``wrap`` = netns.Node.exec_argv and that node's address).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vllm_epdp.errors import EpdpError
from vllm_epdp.harness import procs
from vllm_epdp.harness.ports import free_port

RAY_VERSION = "2.56.1"  # pyproject's [ray] extra; vLLM 0.32.0's CPU test lock
OBJECT_STORE_BYTES = 128 * 1024**2
START_LIMIT_S = 120.0
STOP_GRACE_S = 15.0
# AF_UNIX paths are at most 107 bytes; Ray adds
# "/session_YYYY-MM-DD_HH-MM-SS_UUUUUU_PID/sockets/plasma_store" (~63).
MAX_TEMP_DIR_LEN = 40
LINK_PREFIX = "epdp-ray-"
# Ray's own switch (ray_constants.ENABLE_RAY_CLUSTER): "0" keeps every Ray
# address on 127.0.0.1 instead of the host's routable one.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


Wrap = Callable[[list[str]], list[str]]


@dataclasses.dataclass
class RayNode:
    label: str
    address: str  # the node's IP (--node-ip-address)
    group: procs.ProcGroup
    log: Path
    wrap: Wrap | None = None  # how its commands run (e.g. inside a namespace)
    link: Path | None = None  # the short link Ray was given to its temp dir


@dataclasses.dataclass
class RayCluster:
    address: str  # "ip:port" of the GCS: RAY_ADDRESS for vLLM
    temp_dir: Path
    num_cpus: int
    nodes: list[RayNode]
    env: dict[str, str]  # the environment the nodes were started with
    client_vars: dict[str, str] = dataclasses.field(default_factory=dict)  # what users of it need too

    @property
    def groups(self) -> list[procs.ProcGroup]:
        return [n.group for n in self.nodes]

    def alive(self) -> bool:
        return all(rc is None for g in self.groups for rc in g.exited().values())

    def members(self) -> set[int]:
        return {pid for g in self.groups for pid in g.members()}

    def client_env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` for a process that should use this cluster (vLLM's
        ``ray.init()`` reads RAY_ADDRESS)."""
        return dict(env, RAY_ADDRESS=self.address, **self.client_vars)


def ray_executable() -> str:
    here = Path(sys.executable).parent / "ray"
    if not here.exists():
        raise EpdpError(f"Ray is not installed here: pip install 'ray=={RAY_VERSION}' (./dev setup does)")
    return str(here)


def temp_dir(parent: Path) -> tuple[Path, Path | None]:
    """A new directory inside ``parent`` for Ray, and the path to give Ray:
    the directory itself, or a short link to it (returned second, for
    removal) when its path is too long for Ray's socket paths."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="ray-", dir=parent))
    if len(str(path)) <= MAX_TEMP_DIR_LEN:
        return path, None
    _remove_dead_links()
    link = Path(tempfile.mkdtemp(prefix=f"{LINK_PREFIX}{os.getpid()}-"))
    link.rmdir()  # the name only: a link takes its place
    link.symlink_to(path, target_is_directory=True)
    return path, link


def _remove_dead_links() -> None:
    """Links of clusters whose process no longer exists (killed with SIGKILL)."""
    for link in Path(tempfile.gettempdir()).glob(f"{LINK_PREFIX}*"):
        pid = link.name[len(LINK_PREFIX) :].split("-")[0]
        if link.is_symlink() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                link.unlink()


def node_argv(
    num_cpus: int, node_ip: str, temp_dir: Path, head_port: int | None = None, head: str | None = None
) -> list[str]:
    """`ray start --block` for the head (``head_port``) or a node joining
    ``head`` ("ip:port"); every port ours."""
    argv = [ray_executable(), "start", "--block", "--disable-usage-stats"]
    argv += ["--node-ip-address", node_ip, "--num-cpus", str(num_cpus), "--num-gpus", "0"]
    argv += ["--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir)]
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
    }
    for flag, port in ports.items():
        argv += [flag, str(port)]
    # Workers and actors listen on ports the OS picks (0: no fixed range).
    argv += ["--min-worker-port", "0", "--max-worker-port", "0"]
    if head is None:
        argv += ["--head", "--port", str(head_port), "--include-dashboard", "false"]
        argv += ["--ray-client-server-port", str(free_port())]
    else:
        argv += ["--address", head]
    return argv


def _wait_nodes(cluster: RayCluster, count: int, limit_s: float) -> None:
    """Until the GCS lists ``count`` live nodes (asked from the head's
    network, with this Python's Ray)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    head = cluster.nodes[0]
    argv = [sys.executable, "-c", probe, cluster.address]
    argv = head.wrap(argv) if head.wrap is not None else argv
    deadline = time.monotonic() + limit_s
    while True:
        for node in cluster.nodes:
            if any(rc is not None for rc in node.group.exited().values()):
                raise EpdpError(f"Ray node {node.label} exited during start-up:\n{_tail(node.log)}")
        try:
            res = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=60)
            if res.returncode == 0 and res.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            stacks = "\n".join(g.dump_stacks() for g in cluster.groups)
            raise EpdpError(f"the Ray cluster did not show {count} live nodes within {limit_s:.0f} s:\n{stacks}")
        time.sleep(1.0)


def _tail(log: Path, lines: int = 40) -> str:
    from vllm_epdp.harness.log_forensics import log_tail

    return log_tail(log, lines)


def _start_node(
    label: str,
    argv: list[str],
    env: dict[str, str],
    log: Path,
    deadline_s: float,
    wrap: Wrap | None,
) -> procs.ProcGroup:
    full = wrap(argv) if wrap is not None else argv
    return procs.ProcGroup(f"ray node {label}", [procs.ProcSpec(label, full, env, log)], deadline_s).start()


def _stop_node(node: RayNode) -> None:
    """SIGTERM to `ray start --block` (it stops its daemons), a grace
    period, then every process of the node's group is killed."""
    for p in node.group.popens.values():
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while node.group.members() and time.monotonic() < deadline:
        time.sleep(0.3)
    node.group.close()
    _unlink(node.link)


def _unlink(link: Path | None) -> None:
    if link is not None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()


def join(
    cluster: RayCluster,
    label: str,
    node_ip: str,
    env: dict[str, str] | None = None,
    wrap: Wrap | None = None,
    deadline_s: float = 6 * 3600.0,
) -> RayNode:
    """Start a node that joins ``cluster`` (at ``node_ip``, run through
    ``wrap``, e.g. inside a network namespace) and wait until it is live."""
    workdir = cluster.temp_dir.parent
    temp, link = temp_dir(workdir)
    log = workdir / f"ray-{label}.log"
    argv = node_argv(cluster.num_cpus, node_ip, link or temp, head=cluster.address)
    try:
        group = _start_node(label, argv, dict(env if env is not None else cluster.env), log, deadline_s, wrap)
    except BaseException:
        _unlink(link)
        raise
    node = RayNode(label, node_ip, group, log, wrap, link)
    cluster.nodes.append(node)
    _wait_nodes(cluster, len(cluster.nodes), START_LIMIT_S)
    return node


@contextlib.contextmanager
def cluster(
    workdir: Path,
    env: dict[str, str] | None = None,
    num_cpus: int = 8,
    node_ip: str = "127.0.0.1",
    wrap: Wrap | None = None,
    deadline_s: float = 6 * 3600.0,
) -> Iterator[RayCluster]:
    """A one-node Ray cluster (the head) on ``node_ip``; more nodes with
    ``join()``. Every node, and every process Ray started, is gone when
    this returns, on every exit path; the temp dir stays in ``workdir``
    for a person to read (its logs) and goes with it."""
    base = dict(os.environ if env is None else env)
    # No usage report, no dashboard; Ray's own deadline for a worker that
    # does not register stays as it is.
    base["RAY_USAGE_STATS_ENABLED"] = "0"
    base.pop("RAY_ADDRESS", None)
    # vLLM picks its own addresses (the DP master, the node a placement
    # group is pinned to) with get_ip(): on loopback too, or they name a
    # node this cluster does not have.
    client_vars = {LOOPBACK_SWITCH: "0", "VLLM_HOST_IP": node_ip} if node_ip.startswith("127.") else {}
    base.update(client_vars)
    temp, link = temp_dir(Path(workdir))
    port = free_port()
    log = Path(workdir) / "ray-head.log"
    argv = node_argv(num_cpus, node_ip, link or temp, head_port=port)
    try:
        group = _start_node("head", argv, base, log, deadline_s, wrap)
    except BaseException:
        _unlink(link)
        raise
    head = RayNode("head", node_ip, group, log, wrap, link)
    ray = RayCluster(f"{node_ip}:{port}", temp, num_cpus, [head], base, client_vars)
    try:
        _wait_nodes(ray, 1, START_LIMIT_S)
        yield ray
    finally:
        # Worker nodes first: a head that goes first leaves them retrying.
        for node in reversed(ray.nodes):
            _stop_node(node)
