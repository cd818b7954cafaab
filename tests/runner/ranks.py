"""Start N torch.distributed (gloo) ranks of a worker script, each in its own
session, with a hard deadline and stack dumps on a hang (vllm_epdp.procs)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vllm_epdp import procs
from vllm_epdp.ports import free_port

WORKERS = Path(__file__).parent / "workers"


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_ranks(
    worker: str | Path,
    nranks: int,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    timeout_s: float = 120.0,
    result_suffix: str = ".json",
    load: Callable[[Path], Any] = _load_json,
) -> tuple[procs.Outcome, list]:
    """Run a worker script as ranks 0..nranks-1: ``worker`` is the name of
    one in tests/runner/workers, or a path to a script elsewhere.

    Each rank writes its result to $EPDP_RESULT (tmp_path/result-<rank> +
    result_suffix); the results (read by ``load``; {} for a rank that wrote
    none) come back with the outcome. ``env`` is
    the base environment (e.g. a vllm_pristine or vllm_patched fixture),
    default: this process's environment.
    """
    script = Path(worker) if isinstance(worker, Path) else WORKERS / f"{worker}.py"
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
            EPDP_RESULT=str(tmp_path / f"result-{rank}{result_suffix}"),
            OMP_NUM_THREADS="1",
            PYTHONFAULTHANDLER="1",
        )
        specs.append(
            procs.ProcSpec(
                name=f"rank{rank}",
                argv=[sys.executable, str(script), *(args or [])],
                env=e,
                log=tmp_path / f"rank{rank}.log",
            )
        )
    outcome = procs.run_group(f"{script.stem} x{nranks}", specs, timeout_s)
    results = []
    for rank in range(nranks):
        p = tmp_path / f"result-{rank}{result_suffix}"
        results.append(load(p) if p.exists() else {})
    return outcome, results
