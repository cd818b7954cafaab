"""The engine of one offline DP rank, and what every such rank does around it.

Used inside the rank processes that harness.offline_dp starts (verify's
scenario ranks, the offline fuzz targets' long-lived ranks, tests). vLLM is
imported inside the functions: the launcher side imports this module too
(for ``PROGRESS``) without paying for vLLM.

Progress goes to stdout as lines starting with ``@@verify `` (JSON); the
parent reads them for its progress display and to see engines come up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

PROGRESS = "@@verify "


def progress(**event: Any) -> None:
    print(PROGRESS + json.dumps(event), flush=True)


def barrier(directory: Path, name: str, me: int, count: int) -> None:
    """Wait until all ``count`` members arrived at ``name`` (files; the
    parent's watchdog bounds the wait)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.{me}").touch()
    while not all((directory / f"{name}.{i}").exists() for i in range(count)):
        time.sleep(0.05)


def json_number(x: float) -> float | str:
    # JSON has no NaN/inf; keep them visible as strings so the check sees them.
    return x if math.isfinite(x) else repr(float(x))


@dataclasses.dataclass(frozen=True)
class Place:
    """Where this process sits among the ranks that run one engine's scenarios."""

    dp_rank: int
    me: int  # this process's number among the ``members`` that meet at barriers
    members: int
    writer: bool  # writes its DP rank's results (with TP > 1 under torchrun, one process per DP rank does)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """The engine one offline process starts: the fields of every offline
    spec file (verify's, the offline fuzz targets', the tests'). Each command
    adds its own fields beside these (verify: scenarios and out; fuzz: inbox
    and outbox); ``start_engine`` reads only these."""

    model: str
    dtype: str
    tp: int
    dp: int
    ep: bool
    launcher: str  # "mp": a process per DP rank (vLLM's offline DP); "torchrun": external launcher
    max_model_len: int
    barrier_dir: str
    async_scheduling: bool | None = None  # None: vLLM's default
    dp_rank: int | None = None  # None under torchrun: vLLM takes it from the launcher

    @classmethod
    def of(cls, spec: dict[str, Any]) -> EngineSpec:
        """The engine fields of a spec file's contents."""
        return cls(**{f.name: spec[f.name] for f in dataclasses.fields(cls) if f.name in spec})


def start_engine(spec: dict[str, Any]) -> tuple[Any, Place]:  # (vllm.LLM, Place)
    """The engine of a spec file's contents (see EngineSpec) and this
    process's Place. Under torchrun vLLM takes the DP rank from the launcher
    (external_launcher); otherwise from the VLLM_DP_* environment the parent
    set."""
    from vllm import LLM

    engine = EngineSpec.of(spec)
    kwargs = dict(
        model=engine.model,
        dtype=engine.dtype,
        tensor_parallel_size=engine.tp,
        enable_expert_parallel=engine.ep,
        enforce_eager=True,
        max_model_len=engine.max_model_len,
        seed=0,
    )
    if engine.async_scheduling is not None:  # else vLLM's default
        kwargs["async_scheduling"] = engine.async_scheduling
    if engine.launcher == "torchrun":
        kwargs.update(distributed_executor_backend="external_launcher", data_parallel_size=engine.dp)
        llm = LLM(**kwargs)
        rank = int(os.environ["RANK"])
        dp_rank = llm.llm_engine.vllm_config.parallel_config.data_parallel_rank
        return llm, Place(dp_rank, rank, int(os.environ["WORLD_SIZE"]), rank % engine.tp == 0)
    dp_rank = engine.dp_rank or 0
    return LLM(**kwargs), Place(dp_rank, dp_rank, engine.dp, True)


def generate_wave(llm: Any, prompts: list, params: list) -> list:  # llm: vllm.LLM
    """One DP wave of this rank: its prompts' outputs, in order.

    vLLM's offline DP pattern has no coordinator: an engine whose front-end
    submits nothing never joins the other ranks' step loop, and a rank that
    submits after the others went idle starts a wave alone; either hangs. So
    the callers start each wave on every DP rank together (a barrier), and a
    rank with nothing to do submits a 1-token placeholder (as vLLM's
    examples/offline_inference/data_parallel.py does), then idles (dummy
    steps) while its peers work; the placeholder's output is dropped."""
    from vllm import SamplingParams

    if not prompts:
        llm.generate(["placeholder"], [SamplingParams(temperature=0.0, max_tokens=1)], use_tqdm=False)
        return []
    return llm.generate(prompts, params, use_tqdm=False)
