"""One process of an offline fuzz target: a DP rank's engine that stays up and
runs schedule after schedule, as a user's offline DP script would run batch
after batch.

    python -m vllm_epdp.fuzz.offline_process SPEC.json

SPEC (written by vllm_epdp.fuzz.offline): what
vllm_epdp.harness.offline_engine.start_engine takes, plus ``inbox`` (the parent writes job ``<k>.json`` there,
k = 0, 1, ..., or ``stop``), ``outbox`` (this rank's answers to job k go to
``<k>.rank<dp_rank>.json``, or the error that killed its engine) and ``barrier_dir``. A job is a list of waves,
each a list per DP rank of requests (id, prompt token ids, max_tokens, n).
Every wave starts on all ranks together and an idle rank submits the
placeholder (harness.offline_engine.generate_wave: vLLM's offline DP contract).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from vllm_epdp.harness.offline_engine import Place, barrier, generate_wave, json_number, progress, start_engine

POLL_S = 0.05


def sampling(request: dict) -> Any:  # vllm.SamplingParams
    from vllm import SamplingParams

    common = dict(max_tokens=request["max_tokens"], n=request["n"], logprobs=1, ignore_eos=True)
    if request["n"] > 1:
        # vLLM refuses n > 1 with greedy sampling; sampling from the single
        # most likely token picks what greedy picks (as the serving client does).
        return SamplingParams(temperature=1.0, top_k=1, **common)
    return SamplingParams(temperature=0.0, **common)


def answer_of(output: Any) -> dict:  # output: vllm.RequestOutput
    """Token ids and the chosen tokens' logprobs per choice (non-finite ones as
    strings: JSON has no NaN)."""
    choices, logprobs = [], []
    for completion in output.outputs:
        tokens = list(completion.token_ids)
        choices.append(tokens)
        chosen = [pos[tok].logprob for tok, pos in zip(tokens, completion.logprobs or [])]
        logprobs.append([json_number(x) for x in chosen])
    return {"choices": choices, "logprobs": logprobs}


def next_job(inbox: Path, k: int) -> list | None:
    """Job k's waves, or None once the parent wrote ``stop``."""
    job = inbox / f"{k}.json"
    while not job.exists():
        if (inbox / "stop").exists():
            return None
        time.sleep(POLL_S)
    return json.loads(job.read_text())["waves"]


def run_job(llm: Any, place: Place, waves: list, barriers: Path, k: int) -> dict[str, dict]:
    from vllm.inputs import TokensPrompt

    answers = {}
    for w, wave in enumerate(waves):
        barrier(barriers, f"job{k}-wave{w}", place.me, place.members)
        mine = wave[place.dp_rank]
        prompts = [TokensPrompt(prompt_token_ids=r["prompt"]) for r in mine]
        outputs = generate_wave(llm, prompts, [sampling(r) for r in mine])
        for request, output in zip(mine, outputs):
            answers[str(request["id"])] = answer_of(output)
    return answers


def write_atomically(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.monotonic()
    llm, place = start_engine(spec)
    progress(event="engine_up", seconds=round(time.monotonic() - t0, 1), dp_rank=place.dp_rank)
    inbox, outbox, barriers = Path(spec["inbox"]), Path(spec["outbox"]), Path(spec["barrier_dir"])
    for k in itertools.count():
        waves = next_job(inbox, k)
        if waves is None:
            break
        out = outbox / f"{k}.rank{place.dp_rank}.json"
        try:
            answers = run_job(llm, place, waves, barriers, k)
        except Exception as exc:  # the engine died: say why, then leave at once
            traceback.print_exc()
            write_atomically(out, {"error": f"{type(exc).__name__}: {exc}"})
            sys.stdout.flush()
            # Not sys.exit: after its engine died, vLLM's shutdown can wait
            # for good (seen without patch 0003: the rank never exited), and
            # the parent kills what is left of this rank anyway.
            os._exit(1)
        if place.writer:
            write_atomically(out, {"answers": answers})
    # Nobody leaves before everyone is done (a DP rank that shuts down early
    # takes its engine out of the DP group while the others still need it).
    barrier(barriers, "exit", place.me, place.members)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
