"""Test data for the uneven collectives, identical on every rank.

Every rank can build every rank's inputs (seeded by case, rank and tensor
index), so the expected gather / reduce-scatter result is computed locally,
with no collective at all, and compared byte for byte.

Tensor contents are random BYTES reinterpreted as the dtype: floats then
include NaN, Inf and denormal bit patterns, which a value comparison would
mishandle and a byte comparison does not.
"""

from __future__ import annotations

import zlib

import torch

H = 64  # hidden size of the small cases

# name -> list of (dtype name, trailing shape). Mixes what MoE dispatch sends
# (bf16 activations, fp32 weights, int32/int64 ids) and awkward row sizes
# (1, 3, 5, 7 elements) that break naive alignment.
DTYPE_MIXES: dict[str, list[tuple[str, tuple[int, ...]]]] = {
    "moe_dispatch": [("bfloat16", (H,)), ("float32", (8,)), ("int32", (8,))],
    "router_logits": [("float16", (H,)), ("float32", (5,))],
    "ids_first": [("int64", ()), ("bool", (5,)), ("float16", (7,))],
    "odd_rows": [("uint8", (1,)), ("float32", (3,)), ("float64", (1,)), ("int32", (3,))],
    "fp8": [("float8_e4m3fn", (H,)), ("float32", (1,)), ("float8_e5m2", (3,))],
    "single_bf16": [("bfloat16", (H,))],
    "single_int32": [("int32", (3,))],
    "3d": [("bfloat16", (2, 3)), ("int64", (4, 1))],
}


def sizes_cases(world_size: int) -> dict[str, list[int]]:
    w = world_size
    return {
        "uniform": [3] * w,
        "uneven": [r * 2 + 1 for r in range(w)],
        "zero_first": [0] + [4] * (w - 1),
        "zero_last": [5] * (w - 1) + [0],
        "one_rank_only": [0] * (w - 1) + [6],
        "all_zero": [0] * w,
        "single_rows": [1] * w,
    }


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


def have_dtype(name: str) -> bool:
    return hasattr(torch, name)


def make_tensor(
    case: str, rank: int, index: int, rows: int, dtype: torch.dtype, trailing: tuple[int, ...]
) -> torch.Tensor:
    """Deterministic random-byte tensor of shape (rows, *trailing)."""
    seed = zlib.crc32(f"{case}/{rank}/{index}".encode())
    gen = torch.Generator().manual_seed(seed)
    shape = (rows,) + tuple(trailing)
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for s in shape:
        numel *= s
    raw = torch.randint(0, 256, (numel * itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        return (raw & 1).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as `t`, stored non-contiguously (every other column of a
    wider buffer, or every other row for 1-D tensors)."""
    if t.dim() == 1:
        wide = torch.zeros((t.shape[0] * 2,), dtype=t.dtype, device=t.device)
        wide[::2] = t
        out = wide[::2]
    else:
        wide = torch.zeros(t.shape[:-1] + (t.shape[-1] * 2,), dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        out = wide[..., ::2]
    if t.numel() > 1:
        assert not out.is_contiguous()
    return out


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    t = t.cpu().contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.reshape(-1).view(torch.uint8)


def bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(as_bytes(a), as_bytes(b))


def int_valued(case: str, rank: int, rows: int, trailing: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Small integers stored as `dtype`: sums over ranks are exact in any
    order, so every reduction algorithm must agree bit for bit."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"rs/{case}/{rank}".encode()))
    return torch.randint(-8, 9, (rows,) + tuple(trailing), generator=gen).to(dtype)


def reduce_scatter_case(
    case: str, rank: int, world_size: int, sizes: list[int], trailing: tuple[int, ...], dtype: torch.dtype
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every rank's reduce-scatter input (int_valued) and this rank's exact
    rows of their sum."""
    total = sum(sizes)
    inputs = [int_valued(case, r, total, trailing, dtype) for r in range(world_size)]
    full = torch.stack([x.to(torch.float64) for x in inputs]).sum(0)
    start = sum(sizes[:rank])
    return inputs, full[start : start + sizes[rank]].to(dtype)
