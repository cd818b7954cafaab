"""One verify process: a DP rank (vLLM's offline data-parallel pattern), the
DP=1 reference, a TP>1 engine, or one torchrun rank (external launcher).

    python -m vllm_epdp.verify.offline_process SPEC.json

SPEC (written by verify/offline.py): model, dtype, tp, dp, dp_rank, ep,
launcher ("mp" | "torchrun"), max_model_len, optionally async_scheduling
(true/false; absent: vLLM's default), logprobs, scenarios (each with
waves per DP rank), out (result JSON path; "{rank}" is filled in), barrier_dir.

The parent sets vLLM's DP environment (VLLM_DP_RANK, VLLM_DP_SIZE, ...) before
this starts: vLLM reads it when the engine is created. Progress goes to stdout
as lines starting with ``@@verify `` (JSON), which the parent turns into its
progress display. The engine starts once; every scenario runs in it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vllm_epdp.harness.offline_engine import barrier, generate_wave, json_number, progress, start_engine


def result_of(output: Any) -> dict:  # output: vllm.RequestOutput
    """Token ids and, per position, the top-k logprobs ({token id: logprob},
    the sampled token included) of one request."""
    completion = output.outputs[0]
    logprobs = []
    for position in completion.logprobs or []:
        logprobs.append({str(tok): json_number(lp.logprob) for tok, lp in position.items()})
    return {"token_ids": list(completion.token_ids), "logprobs": logprobs}


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
