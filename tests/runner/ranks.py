"""Start N torch.distributed (gloo) ranks of a worker script, each in its own
session, with a hard deadline and stack dumps on a hang (vllm_epdp.procs)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from vllm_epdp import procs

WORKERS = Path(__file__).parent / "workers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    worker: str,
    nranks: int,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    timeout_s: float = 120.0,
) -> tuple[procs.Outcome, list[dict]]:
    """Run tests/runner/workers/<worker>.py as ranks 0..nranks-1.

    Each rank writes its result as JSON to tmp_path/result-<rank>.json; the
    list of results (one per rank, {} if a rank wrote none) comes back with
    the outcome. ``env`` is the base environment (e.g. a vllm_pristine or
    vllm_patched fixture), default: this process's environment.
    """
    base = dict(os.environ if env is None else env)
    port = str(free_port())
    specs = []
    for rank in range(nranks):
        e = dict(base)
        e.update(
            RANK=str(rank),
            WORLD_SIZE=str(nranks),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            EPDP_RESULT=str(tmp_path / f"result-{rank}.json"),
            OMP_NUM_THREADS="1",
        )
        specs.append(
            procs.ProcSpec(
                name=f"rank{rank}",
                argv=[sys.executable, str(WORKERS / f"{worker}.py"), *(args or [])],
                env=e,
                log=tmp_path / f"rank{rank}.log",
            )
        )
    outcome = procs.run_group(f"{worker} x{nranks}", specs, timeout_s)
    results = []
    for rank in range(nranks):
        p = tmp_path / f"result-{rank}.json"
        results.append(json.loads(p.read_text()) if p.exists() else {})
    return outcome, results
