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


def start_engine(spec: dict[str, Any]) -> tuple[Any, Place]:  # (vllm.LLM, Place)
    """The engine of ``spec`` (model, dtype, tp, dp, dp_rank, ep, launcher,
    max_model_len) and this process's Place. Under torchrun vLLM takes the DP
    rank from the launcher (external_launcher); otherwise from the VLLM_DP_*
    environment the parent set."""
    from vllm import LLM

    kwargs = dict(
        model=spec["model"],
        dtype=spec["dtype"],
        tensor_parallel_size=spec["tp"],
        enable_expert_parallel=spec["ep"],
        enforce_eager=True,
        max_model_len=spec["max_model_len"],
        seed=0,
    )
    if spec.get("async_scheduling") is not None:  # else vLLM's default
        kwargs["async_scheduling"] = spec["async_scheduling"]
    if spec["launcher"] == "torchrun":
        kwargs.update(distributed_executor_backend="external_launcher", data_parallel_size=spec["dp"])
        llm = LLM(**kwargs)
        rank = int(os.environ["RANK"])
        dp_rank = llm.llm_engine.vllm_config.parallel_config.data_parallel_rank
        return llm, Place(dp_rank, rank, int(os.environ["WORLD_SIZE"]), rank % spec["tp"] == 0)
    return LLM(**kwargs), Place(spec["dp_rank"], spec["dp_rank"], spec["dp"], True)


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
