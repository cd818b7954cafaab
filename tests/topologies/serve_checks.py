"""What the topology tests share: the checking client of examples/ run from
the host, and the processes a server left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vllm_epdp.harness import procs

CLIENT = Path(__file__).resolve().parents[2] / "examples" / "online_serving" / "client_check.py"
CLIENT_TIMEOUT_S = 600


def client(url: str, log: Path, *args: str) -> str:
    """examples/online_serving/client_check.py from the host (a client of the
    head node, as on a cluster); returns its VERDICT line."""
    argv = [sys.executable, str(CLIENT), "--url", url, "--timeout", "300", "--max-tokens", "16", *args]
    with open(log, "w") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=CLIENT_TIMEOUT_S)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("VERDICT:")]
    return lines[-1] if lines else f"no verdict; client log:\n{log.read_text(errors='replace')[-3000:]}"


def pids_of(groups: list[procs.ProcGroup]) -> set[int]:
    return {pid for g in groups for pid in g.members()}


def left_running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still alive (zombies aside)."""
    return {pid for pid in pids if (info := procs.read_proc(pid)) and info.state != "Z"}
