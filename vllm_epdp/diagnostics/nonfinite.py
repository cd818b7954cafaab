"""Count forwards and non-finite rows, real rows vs padding rows, and write them.

No knowledge of vLLM: the caller says when a forward starts (its rows, how many
of them are real), what a module produced, and when serving has begun
(vllm_epdp/diagnostics/nan_watch.py does, from hooks in vLLM's worker). One
``NonFiniteCounter`` per process writes one JSON file, ``nan_watch-<pid>.json``:

  info                        who wrote it (pid; the caller adds more)
  steps, dummy_steps          forward passes (dummy = no real row at all: an
                              idle DP rank's or a profiling forward)
  padded_steps, padded_rows   forwards whose row count exceeded the real rows,
  max_padded_rows             and by how much (DP padding)
  rows                        [[rows, real], ...] per forward (first 5000)
  startup_steps               forwards before serving began (memory profiling,
                              warm-up): counted apart
  modules                     {name: {real_nonfinite_rows, pad_nonfinite_rows,
                               startup_nonfinite_rows, first_step, first_kind}}
                              for modules that ever produced a non-finite row
  pad_nonzero_rows            {name: rows}: padding rows that a module left
                              not all zero (NaN counts), while serving, for
                              modules with any. A module whose padding rows
                              are zeroed shows none; finite or not, anything
                              else there came from memory no row owns.

``summarize(DIR)`` merges the files of every process of a run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MAX_ROWS_LOG = 5000
FLUSH_EVERY_S = 2.0


def nonfinite_rows(t: torch.Tensor, real: int) -> tuple[int, int]:
    """(non-finite rows among the first ``real`` rows, among the rest)."""
    import torch

    if t.dim() == 0 or t.shape[0] == 0 or not t.is_floating_point():
        return 0, 0
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    real = max(0, min(real, t.shape[0]))
    return int(bad[:real].sum()), int(bad[real:].sum())


def nonzero_rows(t: torch.Tensor, real: int) -> int:
    """Rows past the first ``real`` that hold anything but zeros (NaN too)."""
    if t.dim() == 0 or t.shape[0] <= real or not t.is_floating_point():
        return 0
    pad = t[max(0, real) :]
    return int((pad.reshape(pad.shape[0], -1) != 0).any(dim=1).sum())


class NonFiniteCounter:
    """One process's counts, written to ``outdir/nan_watch-<pid>.json``.

    Thread-safe. Before ``serving`` is set, forwards and non-finite rows are
    counted as start-up (their outputs are thrown away, but still reported).
    """

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / f"nan_watch-{os.getpid()}.json"
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {
            "info": {"pid": os.getpid()},
            "steps": 0,
            "dummy_steps": 0,
            "padded_steps": 0,
            "padded_rows": 0,
            "max_padded_rows": 0,
            "rows": [],
            "modules": {},
            "pad_nonzero_rows": {},
        }
        self.last_flush = 0.0
        self.serving = False

    def step(self, rows: int, real: int) -> None:
        """A forward of ``rows`` rows starts, the first ``real`` of them real."""
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
            if len(d["rows"]) < MAX_ROWS_LOG:
                d["rows"].append([rows, real])
        self._maybe_flush()

    def module_output(self, name: str, output: object, real: int) -> None:
        """Module ``name`` produced ``output`` (a tensor, or a tuple or list
        holding tensors) in a forward whose first ``real`` rows are real. Of
        several tensors, each count (non-finite real rows, non-finite padding
        rows, padding rows not all zero) is the largest."""
        import torch

        tensors = output if isinstance(output, (tuple, list)) else (output,)
        bad_real = bad_pad = nonzero_pad = 0
        for t in tensors:
            if isinstance(t, torch.Tensor):
                r, p = nonfinite_rows(t.detach(), real)
                bad_real, bad_pad = max(bad_real, r), max(bad_pad, p)
                # Only the padding rows are read: no cost without padding.
                nonzero_pad = max(nonzero_pad, nonzero_rows(t.detach(), real))
        if bad_real or bad_pad:
            self._record(name, bad_real, bad_pad)
        if nonzero_pad and self.serving:
            with self.lock:
                counts = self.data["pad_nonzero_rows"]
                counts[name] = counts.get(name, 0) + nonzero_pad

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
        # A module's first non-finite row while serving is written at once.
        if fresh:
            self.flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last_flush > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write the file now (atomically: readers never see half a file)."""
        with self.lock:
            self.last_flush = time.monotonic()
            text = json.dumps(self.data)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            print(f"[vllm-epdp nan_watch] cannot write {self.path}: {exc}", file=sys.stderr)


def summarize(outdir: str | os.PathLike) -> dict:
    """Merge every process's file of ``outdir`` into one report."""
    total: dict[str, Any] = {
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
        "pad_nonzero_rows": {},
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
        nonzero = total["pad_nonzero_rows"]
        for name, rows in data.get("pad_nonzero_rows", {}).items():
            nonzero[f"{tag}:{name}"] = nonzero.get(f"{tag}:{name}", 0) + rows
    return total
