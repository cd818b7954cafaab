"""Rank-side checks of vLLM's real communicator classes on gloo.

The communicators are vLLM's own classes, imported from whatever vLLM the
rank's PYTHONPATH selects (pristine or patched overlay). They run on real
gloo process groups. Nothing collective is faked; for XpuCommunicator only
the device query torch.xpu.device_count may be replaced (see `xpu_*`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import cases  # noqa: E402
from packed_core_worker import count_collectives  # noqa: E402


def _groups():
    # vLLM gives each communicator a CPU group and a device group; on CPU
    # (and here) both are gloo groups over the same ranks.
    cpu_group = dist.new_group(backend="gloo")
    device_group = dist.new_group(backend="gloo")
    return cpu_group, device_group


def make_communicator(kind: str):
    cpu_group, device_group = _groups()
    if kind == "cpu":
        from vllm.distributed.device_communicators.cpu_communicator import (
            CpuCommunicator as cls,
        )
    elif kind == "xpu":
        from vllm.distributed.device_communicators.xpu_communicator import (
            XpuCommunicator as cls,
        )
    else:
        raise ValueError(kind)
    return cls(cpu_group=cpu_group, device=torch.device("cpu"), device_group=device_group, unique_name="ep:0")


def _expected_gather(label, spec, sizes, world_size):
    return [
        torch.cat([cases.make_tensor(label, r, i, sizes[r], cases.dtype_of(dt), tr) for r in range(world_size)])
        for i, (dt, tr) in enumerate(spec)
    ]


def _check_gather(comm, rank, world_size, label, spec, sizes, max_collectives=1):
    local = [cases.make_tensor(label, rank, i, sizes[rank], cases.dtype_of(dt), tr) for i, (dt, tr) in enumerate(spec)]
    expected = _expected_gather(label, spec, sizes, world_size)
    with count_collectives() as calls:
        got = comm.all_gatherv(local, dim=0, sizes=sizes)
    assert isinstance(got, list) and len(got) == len(expected), label
    for i, (g, e) in enumerate(zip(got, expected)):
        assert cases.bytes_equal(g, e), f"{label}: list tensor {i} differs"
    assert len(calls) <= max_collectives, f"{label}: {calls}"
    # The single-tensor form returns a tensor, not a list.
    with count_collectives() as calls:
        one = comm.all_gatherv(local[0], dim=0, sizes=sizes)
    assert isinstance(one, torch.Tensor), f"{label}: single form returned {type(one)}"
    assert cases.bytes_equal(one, expected[0]), f"{label}: single tensor differs"
    assert len(calls) <= max_collectives, f"{label}: single {calls}"


def _check_reduce_scatter(comm, rank, world_size, label, sizes, dtype, trailing, pass_sizes=True):
    inputs, want = cases.reduce_scatter_case(label, rank, world_size, sizes, trailing, dtype)
    with count_collectives() as calls:
        got = comm.reduce_scatterv(inputs[rank], dim=0, sizes=sizes if pass_sizes else None)
    assert cases.bytes_equal(got, want), f"{label}: {got} != {want}"
    assert len(calls) <= 1, f"{label}: {calls}"


# --------------------------------------------------------------- CPU (0003)
def report_not_implemented(calls: dict) -> None:
    """Run each named call; print "<name>: NotImplementedError" for those that
    raise it (the pristine failure), and fail the rank if any did."""
    missing = []
    for name, call in calls.items():
        try:
            call()
        except NotImplementedError:
            print(f"{name}: NotImplementedError", flush=True)
            missing.append(name)
    if missing:
        raise SystemExit(f"not implemented: {', '.join(missing)}")


def cpu_first_moe_calls(rank: int, world_size: int) -> None:
    """The two calls the first MoE forward makes under CPU DP+EP (AgRs
    dispatch: hidden states, top-k weights, top-k ids; combine: reduce-scatter
    of the MoE output), with uneven sizes."""
    comm = make_communicator("cpu")
    sizes = [r + 1 for r in range(world_size)]
    report_not_implemented(
        {
            "all_gatherv": lambda: _check_gather(
                comm, rank, world_size, "once", cases.DTYPE_MIXES["moe_dispatch"], sizes
            ),
            "reduce_scatterv": lambda: _check_reduce_scatter(
                comm, rank, world_size, "once", sizes, torch.float32, (16,)
            ),
        }
    )


def cpu_all(rank: int, world_size: int) -> None:
    cpu_matrix(rank, world_size)
    cpu_through_vllm_groups(rank, world_size)


def cpu_matrix(rank: int, world_size: int) -> None:
    communicator_matrix(make_communicator("cpu"), rank, world_size)


def communicator_matrix(comm, rank: int, world_size: int) -> None:
    """all_gatherv (list and single tensor) over every dtype mix and size
    pattern plus non-contiguous inputs, and reduce_scatterv over every size
    pattern: byte-exact against local results, at most one collective each."""
    n = 0
    for mix_name, spec in cases.DTYPE_MIXES.items():
        if not all(cases.have_dtype(dt) for dt, _ in spec):
            continue
        for size_name, sizes in cases.sizes_cases(world_size).items():
            _check_gather(comm, rank, world_size, f"{mix_name}/{size_name}", spec, sizes)
            n += 1
        # Non-contiguous inputs (e.g. a column slice of router logits).
        sizes = [r + 2 for r in range(world_size)]
        label = f"{mix_name}/noncontig"
        local = [
            cases.non_contiguous(cases.make_tensor(label, rank, i, sizes[rank], cases.dtype_of(dt), tr))
            for i, (dt, tr) in enumerate(spec)
        ]
        got = comm.all_gatherv(local, dim=0, sizes=sizes)
        for i, (g, e) in enumerate(zip(got, _expected_gather(label, spec, sizes, world_size))):
            assert cases.bytes_equal(g, e), f"{label}: tensor {i}"
    reduce_scatter_matrix(comm, rank, world_size)
    print(f"rank {rank}: {n} communicator gather cases ok")


def reduce_scatter_matrix(comm, rank: int, world_size: int) -> None:
    for size_name, sizes in cases.sizes_cases(world_size).items():
        for dt in ("float32", "bfloat16", "float16"):
            for trailing in ((16,), (2, 3)):
                _check_reduce_scatter(
                    comm, rank, world_size, f"rs/{size_name}/{dt}", sizes, cases.dtype_of(dt), trailing
                )
                if len(set(sizes)) == 1:
                    _check_reduce_scatter(
                        comm,
                        rank,
                        world_size,
                        f"rs/{size_name}/{dt}/none",
                        sizes,
                        cases.dtype_of(dt),
                        trailing,
                        pass_sizes=False,
                    )


def cpu_through_vllm_groups(rank: int, world_size: int) -> None:
    """The same calls through vLLM's own parallel state: DP = world size, EP
    on, gloo, external-launcher style (no engine); the DP and EP groups'
    GroupCoordinator dispatches to the CpuCommunicator vLLM built itself."""
    from vllm.distributed.parallel_state import get_dp_group, get_ep_group
    from vllm_groups import dp_ep_groups

    # The world process group exists already (vllm_epdp.harness.function_process made it).
    with dp_ep_groups(rank, world_size):
        sizes = [3 * r for r in range(world_size)]  # rank 0 idle: 0 rows
        for group in (get_dp_group(), get_ep_group()):
            comm = group.device_communicator
            assert type(comm).__name__ == "CpuCommunicator", type(comm)
            _check_gather(
                group, rank, world_size, f"vllm/{group.unique_name}", cases.DTYPE_MIXES["moe_dispatch"], sizes
            )
            _check_reduce_scatter(group, rank, world_size, f"vllm/{group.unique_name}", sizes, torch.float32, (16,))


# --------------------------------------------------------------- XPU (0005, 0006)
def _xpu_communicator(world_size: int, sees_all_devices: bool = False):
    """vLLM's XpuCommunicator on gloo groups. Only the device query that picks
    a reduce_scatterv branch is faked: CPU torch reports 0 XPUs."""
    if sees_all_devices:
        torch.xpu.device_count = lambda: world_size
    return make_communicator("xpu")


def xpu_uniform_gather(rank: int, world_size: int) -> None:
    """all_gatherv of one tensor with equal sizes on every rank (sizes None
    or all equal): the path that handed dist.all_gather a 1-element list."""
    comm = _xpu_communicator(world_size)
    for pass_sizes in (None, [3] * world_size):
        local = cases.make_tensor("xpu_uniform", rank, 0, 3, torch.float32, (16,))
        want = torch.cat([cases.make_tensor("xpu_uniform", r, 0, 3, torch.float32, (16,)) for r in range(world_size)])
        with count_collectives() as calls:
            got = comm.all_gatherv(local, dim=0, sizes=pass_sizes)
        assert cases.bytes_equal(got, want), f"sizes={pass_sizes}: wrong gather"
        assert len(calls) == 1, calls


def xpu_list_gather_one_collective(rank: int, world_size: int) -> None:
    """A MoE dispatch list (bf16 hidden, fp32 weights, int32 ids) must go out
    as ONE collective: per-tensor collectives let ranks skew between calls."""
    comm = _xpu_communicator(world_size)
    spec = cases.DTYPE_MIXES["moe_dispatch"]
    sizes = [4] * world_size
    local = [cases.make_tensor("xpu_list", rank, i, 4, cases.dtype_of(dt), tr) for i, (dt, tr) in enumerate(spec)]
    with count_collectives() as calls:
        got = comm.all_gatherv(local, dim=0, sizes=sizes)
    print(f"collectives: {len(calls)}", flush=True)
    want = _expected_gather("xpu_list", spec, sizes, world_size)
    for i, (g, e) in enumerate(zip(got, want)):
        assert cases.bytes_equal(g, e), f"tensor {i} differs"
    assert len(calls) == 1, f"{len(calls)} collectives for one list: {calls}"


def xpu_all(rank: int, world_size: int) -> None:
    """The full matrix through XpuCommunicator, with reduce_scatterv's two
    uneven branches: padded reduce_scatter_tensor (process does not see every
    device) and list reduce_scatter (it does)."""
    communicator_matrix(_xpu_communicator(world_size), rank, world_size)
    communicator_matrix(_xpu_communicator(world_size, sees_all_devices=True), rank, world_size)


def xpu_reduce_scatterv_branches(rank: int, world_size: int) -> None:
    """reduce_scatterv's three branches (equal sizes; uneven, padded; uneven,
    per-rank splits) give exact sums with one collective. Reviewed for the
    all_gatherv kind of mistake: this holds on pristine vLLM too."""
    reduce_scatter_matrix(_xpu_communicator(world_size), rank, world_size)
    reduce_scatter_matrix(_xpu_communicator(world_size, sees_all_devices=True), rank, world_size)
