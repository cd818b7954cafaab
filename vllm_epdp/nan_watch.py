"""Count non-finite rows per decoder module, real rows vs DP-padding rows.

Switched on by ``VLLM_EPDP_NAN_WATCH=DIR`` (vllm_epdp/plugin.py calls
``install(DIR)`` in every vLLM process). Each process that runs a model writes
``DIR/nan_watch-<pid>.json``:

  steps, dummy_steps          forward passes (dummy = an idle DP rank's or a
                              profiling forward with no real token)
  padded_steps, padded_rows   forwards whose row count exceeded the real tokens,
  max_padded_rows             and by how much (DP padding)
  rows                        [[rows, real], ...] per forward (first 5000)
  startup_steps               forwards before the first execute_model or
                              execute_dummy_batch (memory profiling, warm-up):
                              counted apart
  modules                     {name: {real_nonfinite_rows, pad_nonfinite_rows,
                               startup_nonfinite_rows, first_step, first_kind}}
                              for modules that ever produced a non-finite row

Where the hooks go and why:
- The model exists only after ``Worker.load_model`` (vllm/v1/worker/gpu_worker.py)
  returns; the CPU and XPU workers inherit that method, so wrapping it covers
  every platform and both model runners. The plugin runs before or after that module is imported
  depending on the process, so we patch it on import (a meta-path hook) rather
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
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time
from pathlib import Path

from vllm_epdp import runners

_WORKER_MODULE = "vllm.v1.worker.gpu_worker"
_MAX_ROWS_LOG = 5000
_FLUSH_EVERY_S = 2.0

_state: _Watch | None = None


def install(outdir: str | os.PathLike) -> None:
    """Arrange for hooks on the model of this process once it is loaded."""
    global _state
    if _state is not None:
        return
    _state = _Watch(Path(outdir))
    module = sys.modules.get(_WORKER_MODULE)
    if module is not None:
        _patch_worker(module)
    else:
        sys.meta_path.insert(0, _PatchOnImport(_WORKER_MODULE, _patch_worker))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Run ``patch(module)`` right after ``name`` is first imported."""

    def __init__(self, name: str, patch) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        patch = self.patch

        def exec_then_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def _patch_worker(module) -> None:
    worker_cls = module.Worker
    if getattr(worker_cls.load_model, "_epdp_nan_watch", False):
        return
    original = worker_cls.load_model

    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        try:
            _state.attach(self)
        except Exception as exc:  # a diagnostic must never break the run
            print(f"[vllm-epdp nan_watch] could not attach: {exc!r}", file=sys.stderr)
        return result

    load_model._epdp_nan_watch = True
    worker_cls.load_model = load_model


def _rank_info() -> dict:
    info = {"pid": os.getpid()}
    try:
        from vllm.distributed import parallel_state as ps

        info["dp_rank"] = ps.get_dp_group().rank_in_group
        info["tp_rank"] = ps.get_tp_group().rank_in_group
        info["ep_rank"] = ps.get_ep_group().rank_in_group
    except Exception:
        pass
    return info


def nonfinite_rows(t, real: int) -> tuple[int, int]:
    """(non-finite rows among the first ``real`` rows, among the rest)."""
    import torch

    if t.dim() == 0 or t.shape[0] == 0 or not t.is_floating_point():
        return 0, 0
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    real = max(0, min(real, t.shape[0]))
    return int(bad[:real].sum()), int(bad[real:].sum())


class _Watch:
    def __init__(self, outdir: Path) -> None:
        self.path = outdir / f"nan_watch-{os.getpid()}.json"
        self.lock = threading.Lock()
        self.real_stack: list[int] = []  # real rows of the forward in progress
        self.data = {
            "info": {"pid": os.getpid()},
            "steps": 0,
            "dummy_steps": 0,
            "padded_steps": 0,
            "padded_rows": 0,
            "max_padded_rows": 0,
            "rows": [],
            "modules": {},
        }
        self.last_flush = 0.0
        self.attached = False
        # Forwards before the first execute_model (memory profiling, warm-up)
        # are counted apart: their outputs are thrown away, but still reported.
        self.serving = False

    # -- wiring
    def attach(self, worker) -> None:
        if self.attached:
            return
        self.attached = True
        self.data["info"] = _rank_info()
        runner = worker.model_runner
        # Which model runner really runs (V1 or V2), whatever was asked for.
        self.data["info"]["runner"] = runners.runner_of(type(runner))
        self.data["info"]["runner_class"] = f"{type(runner).__module__}.{type(runner).__qualname__}"
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
        self.data["hooked_layers"] = len(layers)
        atexit.register(self.flush)
        self.flush()

    def _wrap_runner(self, worker, runner) -> None:
        execute_model, dummy_run = runner.execute_model, runner._dummy_run
        execute_dummy_batch = worker.execute_dummy_batch

        def execute_dummy_batch_watched(*args, **kwargs):
            # An idle DP rank's step while its peers work: serving has begun.
            self.serving = True
            return execute_dummy_batch(*args, **kwargs)

        def execute_model_watched(scheduler_output, *args, **kwargs):
            # Model Runner V2's _dummy_run goes through execute_model with
            # dummy_run=True and a made-up scheduler output that counts the
            # dummy rows: none of them is real. Its profiling run is start-up.
            if not kwargs.get("is_profile", False):
                self.serving = True
            real = 0 if kwargs.get("dummy_run", False) else int(scheduler_output.total_num_scheduled_tokens)
            self.real_stack.append(real)
            try:
                return execute_model(scheduler_output, *args, **kwargs)
            finally:
                self.real_stack.pop()

        def dummy_run_watched(*args, **kwargs):
            self.real_stack.append(0)
            try:
                return dummy_run(*args, **kwargs)
            finally:
                self.real_stack.pop()

        worker.execute_dummy_batch = execute_dummy_batch_watched
        runner.execute_model = execute_model_watched
        runner._dummy_run = dummy_run_watched

    # -- hooks
    def _real(self) -> int:
        return self.real_stack[-1] if self.real_stack else 0

    def _on_step(self, _module, args, kwargs):
        import torch

        first = next(
            (a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)),
            None,
        )
        rows = int(first.shape[0]) if first is not None and first.dim() > 0 else 0
        real = self._real()
        d = self.data
        with self.lock:
            if not self.serving:
                d["startup_steps"] = d.get("startup_steps", 0) + 1
                return
            d["steps"] += 1
            if real == 0:
                d["dummy_steps"] += 1
            elif rows > real:
                d["padded_steps"] += 1
                d["padded_rows"] += rows - real
                d["max_padded_rows"] = max(d["max_padded_rows"], rows - real)
            if len(d["rows"]) < _MAX_ROWS_LOG:
                d["rows"].append([rows, real])
        self._maybe_flush()

    def _hook(self, name: str):
        import torch

        def hook(_module, _args, output):
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            real = self._real()
            bad_real = bad_pad = 0
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    r, p = nonfinite_rows(t.detach(), real)
                    bad_real, bad_pad = max(bad_real, r), max(bad_pad, p)
            if bad_real or bad_pad:
                self._record(name, bad_real, bad_pad)

        return hook

    def _record(self, name: str, bad_real: int, bad_pad: int) -> None:
        with self.lock:
            entry = self.data["modules"].get(name)
            fresh = entry is None
            if fresh:
                entry = self.data["modules"][name] = {
                    "real_nonfinite_rows": 0,
                    "pad_nonfinite_rows": 0,
                    "startup_nonfinite_rows": 0,
                    "first_step": self.data["steps"],
                    "first_kind": None,
                }
            if not self.serving:
                entry["startup_nonfinite_rows"] += bad_real + bad_pad
                fresh = False
            else:
                fresh = fresh or entry["first_kind"] is None
                if entry["first_kind"] is None:
                    entry["first_step"] = self.data["steps"]
                    entry["first_kind"] = "real" if bad_real else "pad"
                entry["real_nonfinite_rows"] += bad_real
                entry["pad_nonfinite_rows"] += bad_pad
        if fresh:
            self.flush()

    # -- output
    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last_flush > _FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            self.last_flush = time.monotonic()
            text = json.dumps(self.data)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)  # readers never see half a file
        except OSError as exc:
            print(f"[vllm-epdp nan_watch] cannot write {self.path}: {exc}", file=sys.stderr)


def summarize(outdir: str | os.PathLike) -> dict:
    """Merge every process's file of ``outdir`` into one report."""
    total = {
        "processes": 0,
        "steps": 0,
        "dummy_steps": 0,
        "padded_steps": 0,
        "padded_rows": 0,
        "max_padded_rows": 0,
        "real_nonfinite_rows": 0,
        "pad_nonfinite_rows": 0,
        "startup_nonfinite_rows": 0,
        "runners": [],  # model runners the processes ran ("V1", "V2")
        "modules": {},
    }
    for path in sorted(Path(outdir).glob("nan_watch-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        total["processes"] += 1
        runner = data.get("info", {}).get("runner")
        if runner and runner not in total["runners"]:
            total["runners"].append(runner)
        for key in ("steps", "dummy_steps", "padded_steps", "padded_rows"):
            total[key] += data.get(key, 0)
        total["max_padded_rows"] = max(total["max_padded_rows"], data.get("max_padded_rows", 0))
        rank = data.get("info", {})
        tag = "dp{}tp{}".format(rank.get("dp_rank", "?"), rank.get("tp_rank", "?"))
        for name, entry in data.get("modules", {}).items():
            total["real_nonfinite_rows"] += entry["real_nonfinite_rows"]
            total["pad_nonfinite_rows"] += entry["pad_nonfinite_rows"]
            total["startup_nonfinite_rows"] += entry.get("startup_nonfinite_rows", 0)
            total["modules"][f"{tag}:{name}"] = entry
    return total
