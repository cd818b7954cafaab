"""Start the processes of one offline engine: a process per DP rank in vLLM's
offline data-parallel pattern, or one torchrun of every rank.

Offline DP ("mp" launcher): ``python -m MODULE SPEC`` per DP rank, with the
VLLM_DP_* environment vLLM reads when the engine is created; with DP=1 one
process (TP>1 makes vLLM start its workers). torchrun: one ``torchrun
--nproc-per-node=DP*TP`` running MODULE in every process (external
launcher). MODULE runs harness.offline_engine's engine; verify, the offline
fuzz targets and the tests each bring their own MODULE and spec.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from vllm_epdp.harness import ports, procs


def dp_env(rank: int, size: int, master_port: int) -> dict[str, str]:
    """vLLM's offline DP environment for DP rank ``rank`` of ``size``, all on
    this host (the master on loopback)."""
    return {
        "VLLM_DP_RANK": str(rank),
        "VLLM_DP_RANK_LOCAL": str(rank),
        "VLLM_DP_SIZE": str(size),
        "VLLM_DP_MASTER_IP": "127.0.0.1",
        "VLLM_DP_MASTER_PORT": str(master_port),
    }


def write_spec(workdir: Path, dp_rank: int | None, spec: dict) -> Path:
    path = workdir / ("spec.json" if dp_rank is None else f"spec-rank{dp_rank}.json")
    path.write_text(json.dumps(spec))
    return path


def rank_processes(
    dp: int,
    tp: int,
    launcher: str,
    env: dict[str, str],
    module: str,
    spec_for: Callable[[int | None], Path],
    workdir: Path,
) -> list[procs.ProcSpec]:
    """The processes of one offline engine: ``python -m MODULE SPEC`` per DP
    rank with vLLM's DP environment (launcher "mp"), or one torchrun of
    DP x TP processes running MODULE (launcher "torchrun": external launcher).
    ``spec_for(dp_rank)`` writes a rank's spec and returns its path; under
    torchrun it is asked once, with None (every process reads the same spec)."""
    if launcher == "torchrun":
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={dp * tp}",
            f"--master-port={ports.free_port()}",
            "-m",
            module,
            str(spec_for(None)),
        ]
        return [procs.ProcSpec("torchrun", argv, env, workdir / "torchrun.log")]
    port = ports.free_port()
    specs = []
    for rank in range(dp):
        rank_env = dict(env, **dp_env(rank, dp, port)) if dp > 1 else dict(env)
        argv = [sys.executable, "-m", module, str(spec_for(rank))]
        specs.append(procs.ProcSpec(f"rank{rank}", argv, rank_env, workdir / f"rank{rank}.log"))
    return specs
