"""Variants of the patched overlay (vllm_epdp.patching.variants), on the installed vLLM:
the series without a patch, the series with one edit, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_epdp.errors import EpdpError
from vllm_epdp.patching import overlay
from vllm_epdp.patching.git import git_apply
from vllm_epdp.patching.series import load_series
from vllm_epdp.patching.variants import overlay_with_edit, overlay_without
from vllm_epdp.patching.vllm_tree import detect_installed

pytestmark = pytest.mark.timeout(300)


def patch(number: str):
    (found,) = [p for p in load_series(detect_installed().version) if p.number == number]
    return found


def test_without_a_patch_it_is_off_and_the_rest_on(vllm_patched):
    variant = overlay_without("0012")
    patched = overlay.make_overlay(state="patched")
    assert variant.name == f"{patched.name}-without-0012" and (variant / "vllm").is_dir()
    assert git_apply(variant, patch("0012"), check=True).ok  # applies again: it is off
    assert git_apply(variant, patch("0011"), reverse=True, check=True).ok  # still on
    assert overlay_without("0012") == variant  # built once, then reused


def test_with_an_edit_only_that_file_changes(vllm_patched):
    relpath = "vllm/v1/worker/gpu_model_runner.py"
    patched = overlay.make_overlay(state="patched")
    original = (patched / relpath).read_text()
    first = original.splitlines(keepends=True)[0]
    assert original.count(first) == 1
    variant = overlay_with_edit("test-first-line", relpath, first, first + "# edited for a test\n")
    assert (variant / relpath).read_text() == first + "# edited for a test\n" + original[len(first) :]
    assert (patched / relpath).read_text() == original, "the edit wrote through into the patched overlay"
    other = "vllm/v1/worker/gpu_worker.py"
    assert (variant / other).read_bytes() == (patched / other).read_bytes()


def test_errors_say_what_is_wrong_and_leave_nothing(vllm_patched):
    patched = overlay.make_overlay(state="patched")
    with pytest.raises(EpdpError, match="patch 9999 is not"):
        overlay_without("9999")
    with pytest.raises(EpdpError, match="occurs 0 times"):
        overlay_with_edit("test-nothing", "vllm/v1/worker/gpu_worker.py", "no such text in the file", "")
    assert not list(Path(patched.parent).glob("*-edit-test-nothing"))
    assert not list(Path(patched.parent).glob(".tmp-edit-test-nothing-*"))
