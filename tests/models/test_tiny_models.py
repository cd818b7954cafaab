"""Tiny models: deterministic cached builds, loadable by transformers and vLLM.

The e2e tests start one real vLLM engine each (~35 s); on a machine that
others share, run them one suite at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.models.llm_helpers import MAX_TOKENS, hf_greedy, vllm_generate
from vllm_epdp.harness import tiny_models


@pytest.fixture(scope="session")
def moe_model(tmp_path_factory) -> Path:
    return tiny_models.build_qwen3_moe(tmp_path_factory.mktemp("tiny") / "qwen3-moe")


@pytest.fixture(scope="session")
def next_model(tmp_path_factory) -> Path:
    return tiny_models.build_qwen3_next(tmp_path_factory.mktemp("tiny") / "qwen3-next")


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_same_bytes_and_cache_hit(moe_model, tmp_path):
    again = tiny_models.build_qwen3_moe(tmp_path / "again")
    assert _files(again) == _files(moe_model)
    # A complete build with the same key is reused untouched.
    mtimes = {p.name: p.stat().st_mtime_ns for p in moe_model.iterdir()}
    assert tiny_models.build_qwen3_moe(moe_model) == moe_model
    assert {p.name: p.stat().st_mtime_ns for p in moe_model.iterdir()} == mtimes
    # No temp dirs left next to the model.
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_other_seed_other_weights_and_stale_build_replaced(moe_model, tmp_path):
    dest = tmp_path / "m"
    tiny_models.build_qwen3_moe(dest, seed=1)
    assert (dest / "model.safetensors").read_bytes() != (moe_model / "model.safetensors").read_bytes()
    # Same directory, different key: rebuilt in place.
    tiny_models.build_qwen3_moe(dest, seed=0)
    assert _files(dest) == _files(moe_model)
    # An incomplete directory (no key file) is replaced, not trusted.
    (dest / tiny_models.KEY_FILE).unlink()
    (dest / "model.safetensors").write_bytes(b"torn")
    tiny_models.build_qwen3_moe(dest)
    assert _files(dest) == _files(moe_model)


def test_config_and_tokenizer(moe_model, next_model):
    from transformers import AutoConfig, AutoTokenizer

    moe = AutoConfig.from_pretrained(moe_model)
    assert (moe.model_type, moe.num_hidden_layers, moe.hidden_size) == ("qwen3_moe", 2, 128)
    assert (moe.num_experts, moe.num_experts_per_tok, str(moe.dtype)) == (8, 2, "torch.float32")
    nxt = AutoConfig.from_pretrained(next_model)
    assert nxt.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert (nxt.linear_key_head_dim, nxt.linear_value_head_dim) == (128, 128)
    assert str(nxt.dtype) == "torch.bfloat16" and nxt.shared_expert_intermediate_size > 0

    tok = AutoTokenizer.from_pretrained(moe_model)
    assert 900 <= len(tok) <= 1000 == tiny_models.VOCAB_TARGET
    assert len(tok) == moe.vocab_size
    # id 0 is "!" (so NaN logits give the reported run of "!"), specials at the end.
    assert tok.convert_ids_to_tokens(0) == "!"
    assert tok.eos_token_id == len(tok) - 3
    text = "Hello, world! The quick brown fox 42."
    ids = tok(text).input_ids
    assert tok.decode(ids) == text and len(ids) < len(text) / 2
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_greedy_output_is_varied(moe_model):
    """A random model with default init repeats one token forever; ours must not."""
    outs = hf_greedy(moe_model)
    for seq in outs:
        assert len(set(seq)) >= MAX_TOKENS // 2, seq
    assert len({tuple(s) for s in outs}) == len(outs)


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_qwen3_moe_vllm_matches_transformers(moe_model, vllm_patched, tmp_path):
    got = vllm_generate(moe_model, "float32", vllm_patched, tmp_path)
    want = hf_greedy(moe_model)
    assert [r["ids"] for r in got] == want
    assert all(math.isfinite(lp) for r in got for lp in r["logprobs"])


# The hybrid model runs in CI in tests/model_runner/test_padding_e2e.py (V2, the
# idle rank's dummy rows, every real row finite); this standalone run is full.
@pytest.mark.full
@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_qwen3_next_vllm_generates_finite(next_model, vllm_patched, tmp_path):
    got = vllm_generate(next_model, "bfloat16", vllm_patched, tmp_path)
    for r in got:
        assert len(r["ids"]) == MAX_TOKENS
        assert all(math.isfinite(lp) for lp in r["logprobs"]), r
        # Not a degenerate model: varied tokens, and not the NaN signature (id 0 run).
        assert len(set(r["ids"])) >= MAX_TOKENS // 2, r["ids"]
