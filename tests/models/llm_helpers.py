"""Shared by the tiny-model and MoE e2e tests: greedy generation with
transformers (the reference) and with real vLLM in its own process group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vllm_epdp.harness.cpu_host import cpu_env
from vllm_epdp.harness.procs import ProcSpec, run_group

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "Hello, world!",
    "The quick brown fox",
    "Once upon a time there was a little village",
    "def add(a, b):",
]
MAX_TOKENS = 24


def hf_greedy(model_dir: Path, prompts=PROMPTS, max_tokens=MAX_TOKENS) -> list[list[int]]:
    """Greedy continuations by transformers in float32, EOS ignored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    outs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").input_ids
            gen = model.generate(
                ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,  # the equivalent of vLLM's ignore_eos
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            outs.append(gen[0, ids.shape[1] :].tolist())
    return outs


def vllm_generate(
    model_dir: Path,
    dtype: str,
    env: dict,
    tmp_path: Path,
    llm_kwargs: dict | None = None,
    n_ranks: int = 1,
    timeout_s: float = 300,
) -> list[dict]:
    """[{"ids": [...], "logprobs": [...]}] per prompt from one vLLM LLM
    (DP=1; TP/EP through llm_kwargs), run by generate_worker.py."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    out = tmp_path / "out.json"
    env = cpu_env(env, n_ranks, hub_offline=True)
    argv = [
        sys.executable,
        str(HERE / "generate_worker.py"),
        str(model_dir),
        dtype,
        str(out),
        str(prompts),
        str(MAX_TOKENS),
        json.dumps(llm_kwargs or {}),
    ]
    outcome = run_group("vllm-generate", [ProcSpec("llm", argv, env, tmp_path / "llm.log")], timeout_s=timeout_s)
    assert outcome.ok, outcome.describe(log_lines=60)
    return json.loads(out.read_text())
