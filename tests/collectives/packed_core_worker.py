"""Rank-side checks of the torch-only collective core (patch 0002).

Run by vllm_epdp.harness.ranks.run_ranks in each rank process; `core` is the path of a
packed_collectives.py materialised from the patch. Any mismatch raises with
the case name, which run_ranks reports with the rank's stderr.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import cases  # noqa: E402

_COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "_all_gather_base",
    "all_reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_single",
    "_reduce_scatter_base",
    "broadcast",
    "barrier",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "send",
    "recv",
)


def load_core(path: str):
    spec = importlib.util.spec_from_file_location("packed_collectives", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def count_collectives():
    """Count every torch.distributed collective issued inside the block."""
    calls: list[str] = []
    saved = {}
    for name in _COLLECTIVES:
        if hasattr(dist, name):
            fn = saved[name] = getattr(dist, name)

            def wrapper(*a, _fn=fn, _name=name, **k):
                calls.append(_name)
                return _fn(*a, **k)

            setattr(dist, name, wrapper)
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


def as_device(device: str, rank: int) -> torch.device:
    """ "cpu", or "cuda": this rank's GPU (LOCAL_RANK under torchrun)."""
    if device == "cpu":
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device(device, index)


def reference_list_path(tensors, sizes, group, world_size):
    """The per-tensor path: one typed gather per tensor (padded to the largest
    rank, since gloo's all_gather wants equal sizes), then cat the valid rows."""
    out = []
    max_rows = max(sizes)
    for t in tensors:
        # gloo reduces/gathers only its own dtype list: send fp8 and bool as
        # their bytes, everything else typed.
        wire = t
        if t.dtype == torch.bool or "float8" in str(t.dtype):
            wire = t.contiguous().view(torch.uint8)
        padded = wire.new_zeros((max_rows,) + wire.shape[1:])
        padded[: wire.shape[0]] = wire
        gathered = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(gathered, padded, group=group)
        out.append(torch.cat([g[:n] for g, n in zip(gathered, sizes)]).view(t.dtype))
    return out


def _expected(mix_name, spec, sizes, world_size):
    return [
        torch.cat([cases.make_tensor(mix_name, r, i, sizes[r], cases.dtype_of(dt), tr) for r in range(world_size)])
        for i, (dt, tr) in enumerate(spec)
    ]


def gather_matrix(rank: int, world_size: int, core: str, noncontig: bool = False, device: str = "cpu") -> None:
    """Every dtype mix x every size pattern: packed == expected == list path,
    byte for byte, with exactly one collective per call."""
    mod = load_core(core)
    dev = as_device(device, rank)
    group = dist.group.WORLD
    checked = 0
    for mix_name, spec in cases.DTYPE_MIXES.items():
        if not all(cases.have_dtype(dt) for dt, _ in spec):
            continue
        for size_name, sizes in cases.sizes_cases(world_size).items():
            label = f"{mix_name}/{size_name}/{'noncontig' if noncontig else 'contig'}"
            local = [
                cases.make_tensor(mix_name, rank, i, sizes[rank], cases.dtype_of(dt), tr).to(dev)
                for i, (dt, tr) in enumerate(spec)
            ]
            if noncontig:
                local = [cases.non_contiguous(t) for t in local]
            expected = _expected(mix_name, spec, sizes, world_size)
            uniform = len(set(sizes)) == 1
            for pass_sizes in [None, sizes] if uniform else [sizes]:
                with count_collectives() as calls:
                    got = mod.all_gatherv_packed(local, pass_sizes, group, rank, world_size)
                want_calls = 0 if sum(sizes) == 0 else 1
                assert len(calls) == want_calls, f"{label}: collectives {calls}"
                assert len(got) == len(expected), label
                for i, (g, e) in enumerate(zip(got, expected)):
                    assert cases.bytes_equal(g, e), (
                        f"{label}: tensor {i} differs: got {g.dtype}{tuple(g.shape)} want {e.dtype}{tuple(e.shape)}"
                    )
                    assert g.is_contiguous(), f"{label}: tensor {i} not contiguous"
            if sum(sizes):
                ref = reference_list_path(local, sizes, group, world_size)
                for i, (r_, e) in enumerate(zip(ref, expected)):
                    assert cases.bytes_equal(r_, e), f"{label}: list path {i}"
            checked += 1
    assert checked >= 40, f"only {checked} cases ran"
    print(f"rank {rank}: {checked} gather cases ok")


def gather_large(
    rank: int, world_size: int, core: str, rows: int = 1024, hidden: int = 4096, device: str = "cpu"
) -> None:
    """Large, uneven MoE-dispatch-like payload (bf16 [T,H] + fp32 + int32)."""
    mod = load_core(core)
    dev = as_device(device, rank)
    spec = [("bfloat16", (hidden,)), ("float32", (8,)), ("int32", (8,))]
    sizes = [rows - 7 * r for r in range(world_size)]
    local = [
        cases.make_tensor("large", rank, i, sizes[rank], cases.dtype_of(dt), tr).to(dev)
        for i, (dt, tr) in enumerate(spec)
    ]
    with count_collectives() as calls:
        got = mod.all_gatherv_packed(local, sizes, dist.group.WORLD, rank, world_size)
    assert len(calls) == 1, calls
    expected = _expected("large", spec, sizes, world_size)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert cases.bytes_equal(g, e), f"large tensor {i} differs"
    print(f"rank {rank}: large ok ({sum(sizes)} rows)")


def gather_errors(rank: int, world_size: int, core: str, device: str = "cpu") -> None:
    """Wrong sizes are a clear ValueError raised before any collective."""
    mod = load_core(core)
    t = torch.zeros(3, 4, device=as_device(device, rank))
    for sizes in ([3] * (world_size + 1), [2] * world_size):
        with count_collectives() as calls:
            try:
                mod.all_gatherv_packed([t], sizes, dist.group.WORLD, rank, world_size)
            except ValueError as e:
                assert "all_gatherv" in str(e)
            else:
                raise AssertionError(f"sizes {sizes} accepted")
        assert calls == []


def reduce_scatter_matrix(rank: int, world_size: int, core: str, device: str = "cpu") -> None:
    """reduce_scatterv_single, both strategies, every size pattern and float
    / int dtypes: exact sums (small integers), one collective per call."""
    mod = load_core(core)
    dev = as_device(device, rank)
    group = dist.group.WORLD
    checked = 0
    for size_name, sizes in cases.sizes_cases(world_size).items():
        for dt in ("float32", "bfloat16", "float16", "int32"):
            dtype = cases.dtype_of(dt)
            for trailing in ((16,), (), (2, 3)):
                label = f"{size_name}/{dt}/{trailing}"
                inputs, want = cases.reduce_scatter_case(label, rank, world_size, sizes, trailing, dtype)
                local = inputs[rank].to(dev)
                for native in (True, False):
                    for pass_sizes in [None, sizes] if len(set(sizes)) == 1 else [sizes]:
                        before = local.clone()
                        with count_collectives() as calls:
                            got = mod.reduce_scatterv_single(local, pass_sizes, group, rank, world_size, native)
                        want_calls = 0 if local.numel() == 0 else 1
                        assert len(calls) == want_calls, f"{label}: {calls}"
                        assert cases.bytes_equal(got, want), f"{label} native={native}: {got} != {want}"
                        assert torch.equal(local, before), f"{label}: input modified"
                checked += 1
    print(f"rank {rank}: {checked} reduce-scatter cases ok")


# Aten ops that neither launch a kernel nor move data.
_NO_KERNEL = {
    "empty",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "view",
    "_unsafe_view",
    "reshape",
    "slice",
    "as_strided",
    "alias",
    "detach",
    "t",
    "transpose",
    "select",
    "split",
    "split_with_sizes",
    "narrow",
    "unsqueeze",
    "squeeze",
    "expand",
    "view_as",
    "_reshape_alias",
    "lift_fresh",
    "contiguous",
    "is_contiguous",
}


def kernel_count(rank: int, world_size: int, core: str, device: str = "cpu") -> None:
    """Pack is one kernel and unpack is one kernel: the aten ops issued by
    all_gatherv_packed for a 3-tensor mixed-dtype uneven gather, views and
    allocations aside, are exactly cat, <collective>, cat."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    mod = load_core(core)
    sizes = [r + 2 for r in range(world_size)]
    spec = [("bfloat16", (64,)), ("float32", (8,)), ("int32", (8,))]
    dev = as_device(device, rank)
    local = [
        cases.make_tensor("k", rank, i, sizes[rank], cases.dtype_of(dt), tr).to(dev) for i, (dt, tr) in enumerate(spec)
    ]
    for pass_sizes in (sizes, None):
        if pass_sizes is None:
            local = [t[:2] for t in local]  # uniform: 2 rows everywhere
        log = Log()
        with log:
            mod.all_gatherv_packed(local, pass_sizes, dist.group.WORLD, rank, world_size)
        kernels = [op for op in log.ops if op not in _NO_KERNEL]
        compute = [op for op in kernels if not op.startswith(("_allgather", "allgather"))]
        assert compute == ["cat", "cat"], f"expected one cat in, one cat out: {kernels} (all ops: {log.ops})"
        assert len(kernels) == 3, kernels
