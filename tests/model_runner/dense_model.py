"""A tiny random-weight dense Qwen3 (no tokenizer) for runner-level tests
that need a real model forward but no MoE collectives (those need the CPU
communicator and MoE patches of the series; the runner's DP coordination
does not)."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "eos_token_id": 1,
    "bos_token_id": 0,
}


def build(dest: Path, seed: int = 0) -> Path:
    dest = Path(dest)
    marker = dest / "config.json"
    if marker.is_file() and json.loads(marker.read_text()).get("epdp_seed") == seed:
        return dest
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.Qwen3Config(**CONFIG)
    model = transformers.Qwen3ForCausalLM(config).to(torch.float32)
    model.config.dtype = torch.float32
    model.save_pretrained(dest, safe_serialization=True)
    cfg = json.loads(marker.read_text())
    cfg["epdp_seed"] = seed
    marker.write_text(json.dumps(cfg, indent=1))
    return dest
