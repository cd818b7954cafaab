"""Start and stop the `vllm serve` deployments a test or the fuzzer talks to.

``serve(Deployment(...), workdir)`` is a context manager that starts the
server processes (each in its own session under procs.ProcGroup: hard
deadline, every process's stack on a hang, nothing left behind), waits until
the API answers, yields a ``Server`` (its URL, logs, ledger directory, a
stack dump on demand) and stops everything on the way out, the way a user
does (SIGINT, then the group is killed after a grace period).

Topologies (``Deployment.topology``):
  mp             one host, vLLM's own DP engine processes (the default backend)
  multinode      two "nodes" as two network namespaces joined by a veth pair:
                 the head serves DP rank 0, the other runs ``--headless`` from
                 rank 1 (vllm_epdp.harness.topology_netns)
  ray            one host, a Ray cluster of ours: Ray places the DP ranks
                 (``--data-parallel-backend ray``), TP workers are Ray actors
  ray-executor   vLLM's own DP processes, TP workers as Ray actors
                 (``--distributed-executor-backend ray``)
  ray-multinode  ``ray`` on a Ray head and a Ray worker node in two network
                 namespaces, DP rank 1 placed on the worker node
                 (the three Ray ones: vllm_epdp.harness.topology_ray; refused with
                 the reason on a vLLM whose CPU platform names no Ray device)
The server is started as ``python -m vllm.entrypoints.cli.main serve`` (what
the ``vllm`` script runs), so it uses this Python and the PYTHONPATH given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from vllm_epdp import model_runners
from vllm_epdp.errors import EpdpError
from vllm_epdp.harness import cpu_host, log_forensics, procs
from vllm_epdp.harness.deployment import RAY_TOPOLOGIES, TOPOLOGIES, Deployment
from vllm_epdp.harness.ports import free_port

SHUTDOWN_GRACE_S = 30.0


class StartFailed(EpdpError):
    """The server exited during start-up (``hung`` False) or did not answer
    /health in time (``hung`` True); the message has its log tail or stacks."""

    def __init__(self, message: str, hung: bool) -> None:
        super().__init__(message)
        self.hung = hung


@dataclasses.dataclass
class Stopped:
    """How a deployment ended when it was stopped as a user stops it (Ctrl-C)."""

    codes: dict[str, int | None]  # process name -> exit code (None: killed after the grace period)
    left: bool  # some process was still running after the grace period (then killed)
    stacks: str  # the stacks of what was left, taken before the kill


@dataclasses.dataclass
class Server:
    url: str
    deployment: Deployment
    groups: list[procs.ProcGroup]
    logs: list[Path]
    ledger_dir: Path | None
    stopped: Stopped | None = None  # set once serve() has stopped it

    def alive(self) -> bool:
        return all(rc is None for g in self.groups for rc in g.exited().values())

    def stacks(self) -> str:
        return "\n".join(g.dump_stacks() for g in self.groups)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- {p}\n{log_forensics.log_tail(p, lines)}" for p in self.logs)


def token_id(text: str) -> int:
    """A token of a completion asked with ``return_tokens_as_token_ids``: the
    server writes it as "token_id:123"."""
    return int(text.rpartition(":")[2])


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_healthy(server: Server, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not healthy(server.url):
        if not server.alive():
            raise StartFailed(f"the server exited during start-up:\n{server.log_tail()}", hung=False)
        if time.monotonic() > deadline:
            raise StartFailed(
                f"the server did not answer /health within {limit_s:.0f} s:\n{server.stacks()}", hung=True
            )
        time.sleep(1.0)


def stop(server: Server, grace_s: float = SHUTDOWN_GRACE_S) -> Stopped:
    """SIGINT to every group's leader, as a user's Ctrl-C, so every process
    finishes its last step and its diagnostics (ledger, NaN watch) are
    complete; what is still alive after ``grace_s`` has its stack taken and
    is killed."""
    for g in server.groups:
        for p in g.popens.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(g.members() for g in server.groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    codes = {n: rc for g in server.groups for n, rc in g.exited().items()}
    left = [g for g in server.groups if g.members()]
    stacks = "\n".join(g.dump_stacks() for g in left)
    for g in server.groups:
        g.close()
    return Stopped(codes, bool(left), stacks)


@contextlib.contextmanager
def serve(
    deployment: Deployment,
    workdir: Path,
    env: dict[str, str] | None = None,
    ledger: bool = True,
    start_limit_s: float = 600.0,
    deadline_s: float = 6 * 3600.0,
    stop_grace_s: float = SHUTDOWN_GRACE_S,
) -> Iterator[Server]:
    """Start ``deployment``, wait until it answers, yield it, stop it (how it
    ended is then ``server.stopped``). StartFailed if it never answers."""
    if deployment.topology not in TOPOLOGIES:
        raise EpdpError(f"unknown topology '{deployment.topology}': use one of {', '.join(TOPOLOGIES)}")
    workdir.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ if env is None else env)
    ledger_dir = workdir / "ledger" if ledger else None
    if ledger_dir is not None:
        # One ledger directory holds one deployment's processes: the ledgers
        # of an earlier run in the same workdir would read as a second
        # process per rank ("recorded by two processes").
        for stale in ledger_dir.glob("*.jsonl"):
            stale.unlink()
        base["VLLM_EPDP_LEDGER"] = str(ledger_dir)
    base = model_runners.runner_env(deployment.runner, base)
    if deployment.topology == "mp":
        starter = _start_mp
    elif deployment.topology in RAY_TOPOLOGIES:
        from vllm_epdp.harness import topology_ray

        starter = topology_ray.start
    else:
        from vllm_epdp.harness import topology_netns

        starter = topology_netns.start
    with starter(deployment, workdir, base, deadline_s) as (url, groups, logs):
        server = Server(url, deployment, groups, logs, ledger_dir)
        try:
            wait_healthy(server, start_limit_s)
            yield server
        finally:
            server.stopped = stop(server, stop_grace_s)


@contextlib.contextmanager
def _start_mp(deployment: Deployment, workdir: Path, env: dict[str, str], deadline_s: float) -> Iterator[tuple]:
    port = free_port()
    argv = deployment.one_host_argv(port)
    log = workdir / "server.log"
    spec = procs.ProcSpec(
        "server", argv, cpu_host.cpu_env(env, deployment.dp * deployment.tp, hub_offline=deployment.hub_offline), log
    )
    group = procs.ProcGroup(f"serve {deployment.describe()}", [spec], deadline_s)
    with group:
        yield f"http://127.0.0.1:{port}", [group], [log]
