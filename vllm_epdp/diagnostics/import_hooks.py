"""Run a function on a module right after it is imported, or now if it already is.

The diagnostics (nan_watch, the ledger) patch classes of vLLM in every vLLM
process, but vLLM's plugin loader calls them before or after a given vLLM
module is imported depending on the process (front-end, engine core,
worker). Importing those modules ourselves would pull worker code into
processes that never run a model; a meta-path hook patches each one when
vLLM itself imports it. Several patches can wait for one module: they run in
the order they were registered.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType

_lock = threading.Lock()
_waiting: dict[str, list[Callable]] = {}
_finder: _PatchOnImport | None = None


def after_import(name: str, patch: Callable) -> None:
    """Call ``patch(module)`` once module ``name`` is imported: now if it is
    already in ``sys.modules``, else right after its code has run."""
    global _finder
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
        return
    with _lock:
        _waiting.setdefault(name, []).append(patch)
        if _finder is None:
            _finder = _PatchOnImport()
            sys.meta_path.insert(0, _finder)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module someone waits for, it asks the
    path finder for the spec and wraps the loader so that the waiting
    patches run after the module's code."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _waiting:
            return None
        with _lock:
            patches = _waiting.pop(fullname, [])
        if not patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            exec_module(module)
            for patch in patches:
                patch(module)

        # Replacing the bound method on this one loader object is the point:
        # the module's own code runs first, then the waiting patches.
        spec.loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec
