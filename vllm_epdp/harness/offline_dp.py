"""Start the processes of one offline engine: a process per DP rank in vLLM's
offline data-parallel pattern, or one torchrun of every rank.

Offline DP ("mp" launcher): ``python ENTRY SPEC`` per DP rank (ENTRY: ``-m
MODULE``, or a script), with the VLLM_DP_* environment vLLM reads when the
engine is created; with DP=1 one process (TP>1 makes vLLM start its workers).
torchrun: one ``torchrun --nproc-per-node=DP*TP`` running ENTRY in every
process (external launcher). ENTRY starts harness.offline_engine's engine
from the spec file's EngineSpec fields; verify, the offline fuzz targets and
the tests each bring their own ENTRY and their own fields beside those.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from vllm_epdp.harness import ports, procs
from vllm_epdp.harness.offline_engine import EngineSpec


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


def rank_processes(
    engine: EngineSpec,
    extra: dict[str, Any],
    env: dict[str, str],
    entry: list[str],
    workdir: Path,
) -> list[procs.ProcSpec]:
    """The processes of one offline engine, each given a spec file in
    ``workdir``: ``engine``'s fields with ``dp_rank`` filled in, plus
    ``extra`` (what the process's command reads besides the engine).

    ``entry`` is what follows ``python`` (``["-m", MODULE]``, or a script and
    its first arguments); the spec path is the last argument. Launcher "mp":
    one process per DP rank with vLLM's DP environment (with DP=1 one process;
    TP>1 makes vLLM start its workers). Launcher "torchrun": one torchrun of
    DP x TP processes that all read one spec (vLLM's external launcher)."""

    def spec_file(dp_rank: int | None) -> Path:
        path = workdir / ("spec.json" if dp_rank is None else f"spec-rank{dp_rank}.json")
        path.write_text(json.dumps(dict(dataclasses.asdict(engine), dp_rank=dp_rank, **extra)))
        return path

    if engine.launcher == "torchrun":
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={engine.dp * engine.tp}",
            f"--master-port={ports.free_port()}",
            *entry,
            str(spec_file(None)),
        ]
        return [procs.ProcSpec("torchrun", argv, env, workdir / "torchrun.log")]
    port = ports.free_port()
    specs = []
    for rank in range(engine.dp):
        rank_env = dict(env, **dp_env(rank, engine.dp, port)) if engine.dp > 1 else dict(env)
        argv = [sys.executable, *entry, str(spec_file(rank))]
        specs.append(procs.ProcSpec(f"rank{rank}", argv, rank_env, workdir / f"rank{rank}.log"))
    return specs
