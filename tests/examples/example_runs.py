"""Paths of the examples and how the tests run them (bounded, own session)."""

from __future__ import annotations

import sys
from pathlib import Path

from vllm_epdp.harness import procs
from vllm_epdp.harness.ports import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OFFLINE = EXAMPLES / "offline_inference" / "xpu_arc_b60_dp_ep.py"
SERVE_CPU = EXAMPLES / "online_serving" / "serve_dp_ep_cpu.sh"
CLIENT = EXAMPLES / "online_serving" / "client_check.py"
SOAK = EXAMPLES / "online_serving" / "soak_client.py"

# Hard limits per run (engine start ~35 s on 2 cores, a DP=2 run ~1 min).
RUN_TIMEOUT_S = 300


def verdict(log: Path) -> str:
    """The example's last 'VERDICT: ...' line, or '' if it printed none."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("VERDICT:")]
    return lines[-1] if lines else ""


def torchrun_example(env: dict, nproc: int, args: list[str], log: Path) -> procs.Outcome:
    """Run the offline example under torchrun in its own session, bounded."""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        str(OFFLINE),
        *args,
    ]
    return procs.run_group(f"torchrun x{nproc}", [procs.ProcSpec("torchrun", argv, env, log)], timeout_s=RUN_TIMEOUT_S)
