"""Greedy generation with real vLLM (DP=1, eager) for the tiny-model tests.

    python generate_worker.py MODEL DTYPE OUT.json PROMPTS.json MAX_TOKENS [LLM_KWARGS_JSON]

Writes [{"ids": [...], "logprobs": [...]}, ...] (logprob of each chosen token)
to OUT.json. Runs as its own process: vLLM's engine core is a spawned child,
and the test wants a hard timeout around the whole thing.
"""

import json
import sys
from pathlib import Path


def main() -> None:
    from vllm import LLM, SamplingParams

    model, dtype, out, prompts_file, max_tokens = sys.argv[1:6]
    extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    prompts = json.loads(Path(prompts_file).read_text())
    llm = LLM(model=model, dtype=dtype, enforce_eager=True, max_model_len=256, seed=0, **extra)
    params = SamplingParams(temperature=0.0, max_tokens=int(max_tokens), ignore_eos=True, logprobs=1)
    results = []
    for req in llm.generate(prompts, params):
        comp = req.outputs[0]
        results.append(
            {
                "ids": list(comp.token_ids),
                "logprobs": [lp[t].logprob for t, lp in zip(comp.token_ids, comp.logprobs)],
            }
        )
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":  # spawn re-imports this module in the engine core
    main()
