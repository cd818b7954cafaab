"""One verify process: a DP rank (vLLM's offline data-parallel pattern), the
DP=1 reference, a TP>1 engine, or one torchrun rank (external launcher).

    python -m vllm_epdp.verify.rank SPEC.json

SPEC (written by verify/runner.py): model, dtype, tp, dp, dp_rank, ep,
launcher ("mp" | "torchrun"), max_model_len, optionally async_scheduling
(true/false; absent: vLLM's default), logprobs, scenarios (each with
waves per DP rank), out (result JSON path; "{rank}" is filled in), barrier_dir.

The parent sets vLLM's DP environment (VLLM_DP_RANK, VLLM_DP_SIZE, ...) before
this starts: vLLM reads it when the engine is created. Progress goes to stdout
as lines starting with ``@@verify `` (JSON), which the parent turns into its
progress display. The engine starts once; every scenario runs in it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
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


def result_of(output: Any) -> dict:  # output: vllm.RequestOutput
    """Token ids and, per position, the top-k logprobs ({token id: logprob},
    the sampled token included) of one request."""
    completion = output.outputs[0]
    logprobs = []
    for position in completion.logprobs or []:
        logprobs.append({str(tok): json_number(lp.logprob) for tok, lp in position.items()})
    return {"token_ids": list(completion.token_ids), "logprobs": logprobs}


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


def start_engine(spec: dict) -> tuple[Any, Place]:  # (vllm.LLM, its Place)
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


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.monotonic()
    from vllm import SamplingParams

    llm, place = start_engine(spec)
    dp_rank, me, members, writer = place.dp_rank, place.me, place.members, place.writer
    progress(event="engine_up", seconds=round(time.monotonic() - t0, 1), dp_rank=dp_rank)

    barrier_dir = Path(spec["barrier_dir"])
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for scenario in spec["scenarios"]:
        name = scenario["name"]
        barrier(barrier_dir, f"start-{name}", me, members)
        started = time.monotonic()
        done: dict[str, dict] = {}
        mine = scenario["waves"][dp_rank] if dp_rank < len(scenario["waves"]) else []
        n_waves = max(len(w) for w in scenario["waves"])
        for index in range(n_waves):
            barrier(barrier_dir, f"{name}-wave{index}", me, members)
            wave = mine[index] if index < len(mine) else []
            params = [
                SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], logprobs=spec["logprobs"], ignore_eos=True)
                for r in wave
            ]
            outputs = generate_wave(llm, [r["prompt"] for r in wave], params)
            for request, output in zip(wave, outputs):
                done[request["id"]] = result_of(output)
        results[name] = done
        timings[name] = round(time.monotonic() - started, 2)
        progress(event="scenario_done", scenario=name, seconds=timings[name], dp_rank=dp_rank)
    if writer:
        out = Path(spec["out"].format(rank=dp_rank))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"dp_rank": dp_rank, "results": results, "timings": timings}))
        os.replace(tmp, out)
    # Nobody leaves before everyone is done: a DP rank that shuts down early
    # takes its engine out of the DP group while the others still need it.
    barrier(barrier_dir, "exit", me, members)
    progress(event="exit", dp_rank=dp_rank)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
