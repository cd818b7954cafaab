"""The ledger's vLLM layer: GroupCoordinator methods and the model runner's steps.

Collectives: every method of vLLM's ``GroupCoordinator`` that communicates
(``COORDINATOR_OPS``) is wrapped on the class, so coordinators made before
or after ``install`` are covered alike. That is where every device
communicator is reached (pynccl, custom all-reduce, symmetric memory, the
CPU shared-memory all-reduce, the shm broadcast of ``broadcast_object``, the
MoE all2all manager's dispatch/combine): one entry per call, whatever the
backend does below. ``all_reduce``, ``all_gather`` and ``reduce_scatter``
are recorded at their ``_*_out_place`` methods, which run in eager mode and
inside ``torch.ops.vllm.*`` (the custom ops that compiled models call on
CUDA/XPU/ROCm) alike; calls that torch.compile traced into a graph without
such a custom op (vLLM on CPU) run without Python and are not seen.
``StatelessGroupCoordinator`` (elastic EP) is wrapped where it overrides.

One collective bypasses the GroupCoordinator in vLLM's own code: the
all-reduce + RMSNorm fusion pass (``fuse_allreduce_rms``, on by default
for TP > 1 on Hopper and Blackwell with FlashInfer) replaces the TP
all-reduces of compiled models by a custom op that calls FlashInfer's
``flashinfer.comm.allreduce_fusion``. That function is wrapped too, as a
``flashinfer_allreduce_fusion`` of the TP group.

Steps: ``Worker.execute_dummy_batch`` (an idle DP rank's step) and the
model runner's ``execute_model`` and ``_dummy_run`` (warm-up, profiling,
graph capture), for Model Runner V1 (``v1/worker/gpu_model_runner.py``: the
CPU and XPU runners inherit these) and V2 (``v1/worker/gpu/model_runner.py``),
each write a ``step`` line (the outermost of nested ones), so every entry
belongs to a step. The runner's ``sample_tokens`` (after ``execute_model``)
continues the step: the watchdog watches it too.

All patching happens when vLLM imports the module (vllm_epdp/diagnostics/import_hooks.py):
the ledger never imports vLLM into a process that does not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from vllm_epdp.diagnostics import import_hooks
from vllm_epdp.diagnostics.ledger import groups, record

# GroupCoordinator method -> the op the ledger records.
COORDINATOR_OPS = {
    "_all_reduce_out_place": "all_reduce",
    "_all_gather_out_place": "all_gather",
    "_reduce_scatter_out_place": "reduce_scatter",
    "all_gatherv": "all_gatherv",
    "reduce_scatterv": "reduce_scatterv",
    "reduce_scatterv_into_output": "reduce_scatterv_into_output",
    "gather": "gather",
    "broadcast": "broadcast",
    "broadcast_object": "broadcast_object",
    "broadcast_object_list": "broadcast_object_list",
    "broadcast_tensor_dict": "broadcast_tensor_dict",
    "barrier": "barrier",
    "dispatch_router_logits": "dispatch_router_logits",
    "dispatch": "dispatch",
    "combine": "combine",
    "combine_into_output": "combine_into_output",
    "send": "send",
    "recv": "recv",
    "send_object": "send_object",
    "recv_object": "recv_object",
    "isend_object": "isend_object",
    "send_tensor_dict": "send_tensor_dict",
    "isend_tensor_dict": "isend_tensor_dict",
    "recv_tensor_dict": "recv_tensor_dict",
    "irecv_tensor_dict": "irecv_tensor_dict",
}
# Methods whose `sizes` argument (every member passes the same list) is
# recorded: its position among the arguments after `self`.
SIZES_ARGUMENT = {"all_gatherv": 2, "reduce_scatterv": 2, "reduce_scatterv_into_output": 3}

PARALLEL_STATE = "vllm.distributed.parallel_state"
STATELESS = "vllm.distributed.stateless_coordinator"
WORKER = "vllm.v1.worker.gpu_worker"
RUNNER_V1 = "vllm.v1.worker.gpu_model_runner"
RUNNER_V2 = "vllm.v1.worker.gpu.model_runner"
FLASHINFER_COMM = "flashinfer.comm"


def install() -> None:
    import_hooks.after_import(PARALLEL_STATE, lambda m: _patch_coordinator_class(m.GroupCoordinator))
    import_hooks.after_import(STATELESS, lambda m: _patch_coordinator_class(m.StatelessGroupCoordinator))
    import_hooks.after_import(WORKER, _patch_worker)
    import_hooks.after_import(RUNNER_V1, lambda m: _patch_runner(m.GPUModelRunner))
    import_hooks.after_import(RUNNER_V2, lambda m: _patch_runner(m.GPUModelRunner))
    import_hooks.after_import(FLASHINFER_COMM, _patch_flashinfer)


# ---------------------------------------------------------------- collectives
def _patch_coordinator_class(cls: type[Any]) -> None:
    for method, op in COORDINATOR_OPS.items():
        original = cls.__dict__.get(method)
        if original is None or getattr(original, "_epdp_ledger", False):
            continue
        setattr(cls, method, _wrap(op, original, SIZES_ARGUMENT.get(method)))
    init = cls.__dict__.get("__init__")
    if init is not None and not getattr(init, "_epdp_ledger", False):

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            finally:
                # Its process groups were named as torch groups if anything
                # used them before: name them anew, as this coordinator's.
                groups.forget_torch()

        # A marker on the function object (mypy models no attributes set on functions).
        __init__._epdp_ledger = True  # type: ignore[attr-defined]
        cls.__init__ = __init__


def _wrap(op: str, original: Callable[..., Any], sizes_at: int | None) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        # First, before touching any state: under torch.compile's tracing
        # this must be a plain call.
        if torch.compiler.is_compiling():
            return original(self, *args, **kwargs)
        try:
            group = groups.of_coordinator(self) if self.world_size > 1 else None
            extra = ""
            if group is not None and sizes_at is not None:
                sizes = kwargs.get("sizes", args[sizes_at] if len(args) > sizes_at else None)
                if sizes is not None:
                    extra = f',"sizes":{[int(s) for s in sizes]}'
        except Exception as exc:
            record.error(op, exc)
            group = None
        if group is None:
            return original(self, *args, **kwargs)
        return record.call("vllm", op, group, original, (self, *args), kwargs, extra)

    # A marker on the function object (mypy models no attributes set on functions).
    wrapper._epdp_ledger = True  # type: ignore[attr-defined]
    return wrapper


def _patch_flashinfer(module: Any) -> None:  # vLLM's flashinfer module (we set an attribute)
    original = getattr(module, "allreduce_fusion", None)
    if original is None or getattr(original, "_epdp_ledger", False):
        return

    @functools.wraps(original)
    def allreduce_fusion(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return original(*args, **kwargs)
        try:
            from vllm.distributed.parallel_state import get_tp_group

            tp = get_tp_group()
            group = groups.of_coordinator(tp) if tp.world_size > 1 else None
        except Exception as exc:
            record.error("flashinfer_allreduce_fusion", exc)
            group = None
        if group is None:
            return original(*args, **kwargs)
        return record.call("vllm", "flashinfer_allreduce_fusion", group, original, args, kwargs)

    # A marker on the function object (mypy models no attributes set on functions).
    allreduce_fusion._epdp_ledger = True  # type: ignore[attr-defined]
    module.allreduce_fusion = allreduce_fusion


# ---------------------------------------------------------------- steps
def _patch_worker(module: ModuleType) -> None:
    worker = module.Worker
    original = worker.__dict__.get("execute_dummy_batch")
    if original is None or getattr(original, "_epdp_ledger", False):
        return
    worker.execute_dummy_batch = _step(
        original, lambda self, a, k: ("execute_dummy_batch", getattr(self.model_runner, "uniform_decode_query_len", 1))
    )


def _patch_runner(cls: type[Any]) -> None:
    execute_model = cls.__dict__.get("execute_model")
    if execute_model is not None and not getattr(execute_model, "_epdp_ledger", False):
        cls.execute_model = _step(execute_model, _execute_model_step)
    dummy_run = cls.__dict__.get("_dummy_run")
    if dummy_run is not None and not getattr(dummy_run, "_epdp_ledger", False):
        cls._dummy_run = _step(dummy_run, lambda self, a, k: ("_dummy_run", a[0] if a else k.get("num_tokens", 0)))
    sample_tokens = cls.__dict__.get("sample_tokens")
    if sample_tokens is not None and not getattr(sample_tokens, "_epdp_ledger", False):
        cls.sample_tokens = _step(sample_tokens, None)


def _execute_model_step(self: Any, args: tuple, kwargs: dict) -> tuple[str, int]:
    scheduler_output = args[0] if args else kwargs.get("scheduler_output")
    tokens = getattr(scheduler_output, "total_num_scheduled_tokens", 0)
    # V2 runs its own dummy batches through execute_model(dummy_run=True).
    return ("execute_model(dummy_run)" if kwargs.get("dummy_run") else "execute_model"), tokens


# (runner or worker, args, kwargs) -> (the step's kind, its tokens)
StepDescriber = Callable[[Any, tuple, dict], tuple[str, int]]


def _step(original: Callable[..., Any], describe: StepDescriber | None) -> Callable[..., Any]:
    """``original`` as a step (``describe`` gives its kind and tokens), or
    as the continuation of the step in progress (``describe`` None)."""

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        outermost = False
        try:
            if describe is None:
                outermost = record.step_resume()
            else:
                what, tokens = describe(self, args, kwargs)
                outermost = record.step_begin(what, tokens)
        except Exception as exc:
            record.error("step", exc)
            return original(self, *args, **kwargs)
        try:
            return original(self, *args, **kwargs)
        finally:
            record.step_end(outermost)

    # A marker on the function object (mypy models no attributes set on functions).
    wrapper._epdp_ledger = True  # type: ignore[attr-defined]
    return wrapper
