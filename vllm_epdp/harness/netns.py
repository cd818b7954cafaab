"""Private test networks: two "nodes" on one machine, as two network
namespaces joined by a veth pair.

Why: a multi-node DP deployment only tests what it should if nothing can
cross between the nodes except over the network between them. Two network
namespaces give each node its own loopback and its own interfaces, so an
address that is only right on one host (127.0.0.1, a hostname that resolves
to the host's own address) fails between them as it would between two
machines, instead of working by accident.

    with netns.network() as net:
        argv = net.a.exec_argv(["python", "-m", "..."])   # runs inside node A
        net.a.address, net.b.address                         # 10.213.K.1 / .2

Layout (K picked so that no address or route of the host or of any other
namespace falls into 10.213.K.0/29):
  node A  namespace epdp-<pid>-<n>-a, veth ep<pid>n<n>a = 10.213.K.1/30
  node B  namespace epdp-<pid>-<n>-b, veth ep<pid>n<n>b = 10.213.K.2/30
  client  (``client_link=True``) a second veth from the host into A:
          ep<pid>n<n>h on the host = 10.213.K.5/30, ep<pid>n<n>c in A =
          10.213.K.6/30, and a host route to A's node address (10.213.K.1)
          over it. A client on the host then talks to node A at its node
          address, as a client of a real cluster talks to the head node;
          node B is not reachable from the host at all.
Both ends of the node link and the client link's A end live inside the
namespaces, so deleting the namespaces deletes every link and the host route
with them.

Clean-up on every exit path: the context manager's ``finally``; an atexit
hook; SIGTERM/SIGHUP raise SystemExit so those run (Ctrl-C already raises
KeyboardInterrupt). A parent killed with SIGKILL cannot clean up: every new
network first removes the namespaces and links whose name carries the pid of
a process that no longer exists (``cleanup_leftovers``), killing what still
runs inside them (only our own tools start processes in epdp-* namespaces).
Processes are ended before a namespace is deleted because a namespace with
a process inside outlives ``ip netns del`` (unnamed, with its links).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from vllm_epdp.errors import EpdpError

PREFIX = "epdp"
SUPERNET = "10.213"  # 10.213.K.0/29 per network; private, rarely used
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-[ab]$")
_LINK_RE = re.compile(r"^ep(\d+)n(\d+)[abhc]$")
_LOCK = Path(tempfile.gettempdir()) / "vllm-epdp-netns.lock"
_IP_TIMEOUT_S = 30.0

_LIVE: dict[str, Network] = {}
_LIVE_LOCK = threading.Lock()
_COUNTER = iter(range(10**6))
_CLEANUP_INSTALLED = False


@dataclasses.dataclass(frozen=True)
class Node:
    name: str  # the namespace
    ifname: str  # its end of the node link (GLOO_SOCKET_IFNAME)
    address: str  # its address on the node link

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this node. ``ip netns exec`` execs the command
        itself (same pid), so a ProcGroup's pids are the real processes."""
        return [ip_path(), "netns", "exec", self.name, *argv]

    def pids(self) -> set[int]:
        return namespace_pids(self.name)


@dataclasses.dataclass(frozen=True)
class Network:
    a: Node
    b: Node
    subnet: str  # 10.213.K.0/29
    host_ifname: str | None  # the client link's host end, if there is one
    host_address: str | None

    @property
    def nodes(self) -> tuple[Node, Node]:
        return (self.a, self.b)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Network:
        return cls(**{**d, "a": Node(**d["a"]), "b": Node(**d["b"])})

    def link_bytes(self) -> dict[str, tuple[int, int]]:
        """(rx, tx) bytes of each node's end of the node link: what really
        crossed between the nodes."""
        out = {}
        for node in self.nodes:
            [info] = _ip_json("-n", node.name, "-s", "link", "show", node.ifname)
            stats = info["stats64"]
            out[node.name] = (stats["rx"]["bytes"], stats["tx"]["bytes"])
        return out


# ------------------------------------------------------------------ ip(8)
def ip_path() -> str:
    path = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.path.exists(p)), None)
    if path is None:
        raise EpdpError("private test networks need the `ip` command: install iproute2 (apt-get install iproute2)")
    return path


def check_usable() -> None:
    """Raise a one-line EpdpError unless namespaces can be made here."""
    ip_path()
    if os.geteuid() != 0:
        raise EpdpError(
            "private test networks need root (ip netns add, veth links): run as root, "
            "or run the single-host topologies instead"
        )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [ip_path(), *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_IP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise EpdpError(f"`{' '.join(cmd)}` did not finish within {_IP_TIMEOUT_S:.0f} s") from e
    if check and res.returncode != 0:
        raise EpdpError(f"`{' '.join(cmd)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


def _ip_json(*args: str) -> list[dict]:
    out = _ip("-j", *args).stdout.strip()
    return json.loads(out) if out else []


def namespaces() -> list[str]:
    return [entry["name"] for entry in _ip_json("netns", "list")]


def namespace_pids(name: str) -> set[int]:
    res = _ip("netns", "pids", name, check=False)
    return {int(p) for p in res.stdout.split()} if res.returncode == 0 else set()


def host_links() -> list[str]:
    return [entry["ifname"] for entry in _ip_json("link", "show")]


# ------------------------------------------------------------- addresses
def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every IPv4 address (as its network) and route of the host and of every
    named namespace, ours or anyone's."""
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    scopes: list[tuple[str, ...]] = [()] + [("-n", ns) for ns in namespaces()]
    for scope in scopes:
        for link in _ip_json(*scope, "-4", "addr", "show"):
            for a in link.get("addr_info", []):
                used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
        for route in _ip_json(*scope, "-4", "route", "show", "table", "all"):
            dst = route.get("dst", "default")
            if dst != "default":
                used.append(ipaddress.ip_network(dst, strict=False))
    return used


def free_subnet(
    start: int = 0, used: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
) -> ipaddress.IPv4Network:
    """The first 10.213.K.0/29 (from K = start, wrapping) that overlaps
    nothing in ``used`` (default: every network in use on this machine now);
    called under the allocation lock."""
    if used is None:
        used = _used_networks()
    for i in range(256):
        candidate = ipaddress.IPv4Network(f"{SUPERNET}.{(start + i) % 256}.0/29")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise EpdpError(f"no free /29 left in {SUPERNET}.0.0/16: remove unused namespaces (ip netns list)")


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """One network is being created at a time on this machine, so two runs
    never pick the same subnet or see each other half made."""
    with open(_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -------------------------------------------------------------- teardown
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_processes(ns: str, limit_s: float = 10.0) -> None:
    """SIGKILL what still runs inside ``ns`` (by pid, from `ip netns pids`)
    until it is empty; a process left inside keeps the namespace alive."""
    deadline = time.monotonic() + limit_s
    while pids := namespace_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            # Our own children must be reaped or they stay as zombies (still
            # counted inside the namespace).
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            raise EpdpError(
                f"processes {sorted(pids)} do not leave namespace {ns}: kill them, then `ip netns del {ns}`"
            )
        time.sleep(0.05)


def _remove(ns_names: list[str], links: list[str]) -> None:
    for ns in ns_names:
        if ns in namespaces():
            _end_processes(ns)
            _ip("netns", "del", ns)
    present = set(host_links())
    for link in links:
        if link in present:
            _ip("link", "del", link, check=False)


def teardown(net: Network) -> None:
    """Remove ``net`` (idempotent); raise if anything of it is left."""
    try:
        _remove([net.a.name, net.b.name], [net.host_ifname] if net.host_ifname else [])
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(net.a.name, None)
    left = leftovers_of(net)
    if left:
        raise EpdpError(f"could not remove {', '.join(left)}: remove them by hand (ip netns del / ip link del)")


def leftovers_of(net: Network) -> list[str]:
    """What of ``net`` still exists: namespace names and host links."""
    names = set(namespaces())
    links = set(host_links())
    left = [n.name for n in net.nodes if n.name in names]
    if net.host_ifname and net.host_ifname in links:
        left.append(net.host_ifname)
    return left


def cleanup_leftovers() -> list[str]:
    """Remove epdp namespaces and links of processes that no longer exist
    (a run killed with SIGKILL); those of live processes are never touched.
    Returns what was removed."""
    dead_ns = [ns for ns in namespaces() if (m := _NS_RE.match(ns)) and not _pid_alive(int(m.group(1)))]
    dead_links = [lk for lk in host_links() if (m := _LINK_RE.match(lk)) and not _pid_alive(int(m.group(1)))]
    _remove(dead_ns, dead_links)
    return dead_ns + dead_links


def _teardown_all() -> None:
    with _LIVE_LOCK:
        nets = list(_LIVE.values())
    for net in nets:
        with contextlib.suppress(Exception):
            teardown(net)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds every `with network()` (their finally blocks run);
    # atexit then catches whatever was not inside one.
    raise SystemExit(128 + signum)


def _install_cleanup() -> None:
    global _CLEANUP_INSTALLED
    if _CLEANUP_INSTALLED:
        return
    _CLEANUP_INSTALLED = True
    atexit.register(_teardown_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _exit_on_signal)


# -------------------------------------------------------------- creation
def _create(net: Network, subnet: ipaddress.IPv4Network) -> None:
    hosts = list(subnet.hosts())  # .1 .. .6 of the /29
    a, b = net.a, net.b
    for node in net.nodes:
        _ip("netns", "add", node.name)
        _ip("-n", node.name, "link", "set", "lo", "up")
    # Both ends are created inside their namespaces: they never appear on
    # the host, where other runs' or people's links live.
    _ip("link", "add", a.ifname, "netns", a.name, "type", "veth", "peer", "name", b.ifname, "netns", b.name)
    for node in net.nodes:
        _ip("-n", node.name, "addr", "add", f"{node.address}/30", "dev", node.ifname)
        _ip("-n", node.name, "link", "set", node.ifname, "up")
    if net.host_ifname:
        a_end = net.host_ifname[:-1] + "c"
        _ip("link", "add", net.host_ifname, "type", "veth", "peer", "name", a_end, "netns", a.name)
        _ip("addr", "add", f"{net.host_address}/30", "dev", net.host_ifname)
        _ip("link", "set", net.host_ifname, "up")
        _ip("-n", a.name, "addr", "add", f"{hosts[5]}/30", "dev", a_end)
        _ip("-n", a.name, "link", "set", a_end, "up")
        # The host reaches node A at A's node address through the client
        # link; A answers from that address back over the same link (a
        # connected route), so no forwarding is switched on anywhere.
        _ip("route", "add", f"{a.address}/32", "dev", net.host_ifname, "via", str(hosts[5]))


@contextlib.contextmanager
def network(client_link: bool = True) -> Iterator[Network]:
    """Two node namespaces joined by a veth pair (and a client link from
    the host into node A); everything is removed on the way out."""
    check_usable()
    _install_cleanup()
    pid, n = os.getpid(), next(_COUNTER)
    with _allocation_lock():
        cleanup_leftovers()
        subnet = free_subnet(start=pid % 256)
        hosts = list(subnet.hosts())
        tag = f"ep{pid}n{n}"
        net = Network(
            a=Node(f"{PREFIX}-{pid}-{n}-a", f"{tag}a", str(hosts[0])),
            b=Node(f"{PREFIX}-{pid}-{n}-b", f"{tag}b", str(hosts[1])),
            subnet=str(subnet),
            host_ifname=f"{tag}h" if client_link else None,
            host_address=str(hosts[4]) if client_link else None,
        )
        # Registered before the first `ip` call: a failure half-way through
        # creation is cleaned up like a finished network.
        with _LIVE_LOCK:
            _LIVE[net.a.name] = net
        try:
            _create(net, subnet)
        except BaseException:
            teardown(net)
            raise
    try:
        yield net
    finally:
        teardown(net)
