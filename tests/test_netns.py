"""netns.py: the two-node test network exists while it is used, carries
traffic only between the node addresses (and from the host to node A), and
nothing of it is left afterwards, also when the process that made it is
ended with SIGTERM or SIGKILL. Plain Python in the namespaces, no vLLM; a
few seconds."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vllm_epdp.errors import EpdpError
from vllm_epdp.harness import netns, procs

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
)

# Listens on ADDRESS:9000 inside a namespace; says hello to every connection.
ECHO_SERVER = "import socket,sys; s=socket.create_server((sys.argv[1], 9000)); print('up', flush=True)\n" + (
    "while True:\n    c,_=s.accept(); c.sendall(b'hello'); c.close()"
)
CONNECT = (
    "import socket,sys\ntry:\n    print(socket.create_connection((sys.argv[1], 9000), timeout=5).recv(5).decode())\n"
    "except OSError as e:\n    print(type(e).__name__)"
)

# A run that makes a network, starts a process inside node A and waits.
HOLDER = textwrap.dedent(
    """
    import subprocess, sys, time
    from vllm_epdp.harness import netns
    with netns.network() as net:
        subprocess.Popen(net.a.exec_argv(["sleep", "600"]))
        while not net.a.pids():  # until `ip netns exec` has entered A
            time.sleep(0.05)
        print(net.a.name, net.b.name, net.host_ifname, flush=True)
        time.sleep(600)
    """
)


def wait_until(condition, what: str, limit_s: float = 30.0):
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {limit_s:.0f} s"
        time.sleep(0.1)


@pytest.fixture
def holders():
    """Start holder runs; a test that fails half-way still ends its holders
    (SIGTERM: they remove their own networks) and leaves no network."""
    started: list[subprocess.Popen] = []
    yield lambda: start_holder(started)
    for p in started:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=60)
    netns.cleanup_leftovers()


def start_holder(started: list) -> tuple[subprocess.Popen, list[str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)
    started.append(p)
    names = p.stdout.readline().split()
    assert len(names) == 3, f"holder printed {names}; exit {p.poll()}"
    return p, names


def absent(names: list[str]) -> bool:
    return not set(names) & (set(netns.namespaces()) | set(netns.host_links()))


def run_in(node: netns.Node, code: str, *args: str) -> str:
    res = subprocess.run(
        node.exec_argv([sys.executable, "-c", code, *args]), capture_output=True, text=True, timeout=30
    )
    return res.stdout.strip() or res.stderr.strip()


def echo_server(node: netns.Node, log: Path) -> procs.ProcGroup:
    argv = node.exec_argv([sys.executable, "-c", ECHO_SERVER, node.address])
    group = procs.ProcGroup(f"echo server in {node.name}", [procs.ProcSpec("echo", argv, {}, log)], timeout_s=60)
    group.start()
    wait_until(lambda: "up" in log.read_text(), f"echo server in {node.name} up")
    return group


@needs_root
def test_network_connects_the_nodes_and_leaves_nothing(tmp_path):
    with netns.network() as net:
        assert {net.a.name, net.b.name} <= set(netns.namespaces())
        assert net.host_ifname in netns.host_links()
        with echo_server(net.b, tmp_path / "b.log") as group:
            assert group.leaders <= net.b.pids()  # `ip netns exec` runs the command itself
            assert run_in(net.a, CONNECT, net.b.address) == "hello"  # over the veth
            assert run_in(net.a, CONNECT, "127.0.0.1") == "ConnectionRefusedError"  # A's own loopback
        rx_a, _ = net.link_bytes()[net.a.name]
        assert rx_a > 0
        with echo_server(net.a, tmp_path / "a.log"):
            # The host is a client of node A at A's node address (client link).
            host = subprocess.run([sys.executable, "-c", CONNECT, net.a.address], capture_output=True, text=True)
            assert host.stdout.strip() == "hello"
    assert netns.leftovers_of(net) == []
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert net.a.address not in routes


@needs_root
def test_two_networks_get_different_subnets():
    with netns.network(client_link=False) as one, netns.network(client_link=False) as two:
        assert one.subnet != two.subnet
        assert one.host_ifname is None and len({one.a.name, one.b.name, two.a.name, two.b.name}) == 4
    assert netns.leftovers_of(one) == netns.leftovers_of(two) == []


@needs_root
def test_sigterm_of_the_parent_removes_its_network(holders):
    holder, names = holders()
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=60) == 128 + signal.SIGTERM
    assert absent(names), f"left behind: {names}"


def killed_holder(holders) -> tuple[list[str], int]:
    """A run killed with SIGKILL while its network had a process inside:
    (names of its namespaces and host link, pid of that process)."""
    holder, names = holders()
    [inside] = netns.namespace_pids(names[0])
    holder.kill()
    holder.wait(timeout=30)
    assert not absent(names)  # SIGKILL: nothing could clean up
    return names, inside


def gone(pid: int) -> bool:
    info = procs.read_proc(pid)
    return info is None or info.state == "Z"


@needs_root
def test_leftovers_of_a_killed_run_are_removed_and_live_ones_kept(holders):
    names, inside = killed_holder(holders)
    with netns.network(client_link=False) as live:
        # network() itself removed them before making its own.
        assert absent(names) and gone(inside)
        names, inside = killed_holder(holders)
        assert set(names) <= set(netns.cleanup_leftovers())
        assert absent(names) and gone(inside)
        assert live.a.name in netns.namespaces()  # a live run's network stays
    assert netns.leftovers_of(live) == []


def test_one_line_errors_without_ip_or_root(monkeypatch):
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    monkeypatch.setattr(netns.os.path, "exists", lambda path: False)
    with pytest.raises(EpdpError, match="install iproute2"):
        netns.check_usable()
    monkeypatch.undo()
    monkeypatch.setattr(netns.shutil, "which", lambda name: "/usr/sbin/ip")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(EpdpError, match="need root") as err:
        netns.check_usable()
    assert "\n" not in str(err.value)


def test_subnet_choice_skips_what_is_in_use():
    used = [ipaddress.ip_network("10.213.5.0/24"), ipaddress.ip_network("10.213.6.4/30")]
    assert str(netns.free_subnet(start=5, used=used)) == "10.213.7.0/29"
    assert str(netns.free_subnet(start=4, used=used)) == "10.213.4.0/29"
