"""patch_lint holds each patch to vLLM's own ruff settings, on the release's
real files: a patch that unsorts an import block or leaves code ruff format
would rewrite is named, with the file and rule; a clean patch passes.
Needs the 0.32.0 sdist (vllm_epdp.patching.releases: fetched once, then cached)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from vllm_epdp.patching import patch_lint, releases

TARGET = "vllm/entrypoints/cli/types.py"
HEADER = """From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: test <test@example.invalid>
Date: Sun, 22 Nov 2026 08:00:00 +0000
Subject: [PATCH] {subject}

Symptom: s
Root cause: r
Fix: f
Tested by: tests/test_patch_lint.py
Upstream: not reported
Forwarded: no
Removal plan: none
---
"""


@pytest.fixture(scope="module")
def release():
    return releases.unpacked("0.32.0")


def series_of(tmp_path: Path, release: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """A patches root whose v0.32.0 series has one patch per edit of TARGET:
    {subject: (old text, new text)}, each applied on top of the previous."""
    root = tmp_path / "patches"
    (root / "v0.32.0").mkdir(parents=True)
    text = (release / TARGET).read_text()
    names = []
    for i, (subject, (old, new)) in enumerate(edits.items(), 1):
        assert old in text
        after = text.replace(old, new, 1)
        diff = "".join(
            difflib.unified_diff(text.splitlines(True), after.splitlines(True), f"a/{TARGET}", f"b/{TARGET}")
        )
        name = f"{i:04d}-{subject.replace(' ', '-')}.patch"
        (root / "v0.32.0" / name).write_text(
            HEADER.format(subject=subject) + f"diff --git a/{TARGET} b/{TARGET}\n" + diff
        )
        names.append(name)
        text = after
    (root / "v0.32.0" / "series").write_text("\n".join(names) + "\n")
    return root


def test_findings_are_named_per_patch(tmp_path, release, monkeypatch):
    monkeypatch.setenv(
        "VLLM_EPDP_PATCHES",
        str(
            series_of(
                tmp_path,
                release,
                {
                    "clean comment": ("import typing\n", "import typing  # for TYPE_CHECKING\n"),
                    "unsorted import": ("import argparse\n", "import argparse\nimport sys\nimport abc\n"),
                    "unformatted call": ("        pass\n", "        print( 'x' ,sys.argv )\n"),
                },
            )
        ),
    )
    found = [str(f) for f in patch_lint.lint_series("0.32.0", release)]
    # 0003 uses sys, but the finding stays on 0002, which added it unused.
    assert found == [
        f"0002: {TARGET}:6:8: F401 `abc` imported but unused",
        f"0002: {TARGET}:5:8: F401 `sys` imported but unused",
        f"0002: {TARGET}:4:1: I001 Import block is un-sorted or un-formatted",
        f"0003: {TARGET}: would be reformatted (ruff format)",
    ], found


def test_clean_series_passes(tmp_path, release, monkeypatch):
    monkeypatch.setenv(
        "VLLM_EPDP_PATCHES",
        str(
            series_of(
                tmp_path,
                release,
                {
                    "clean comment": ("import typing\n", "import typing  # for TYPE_CHECKING\n"),
                },
            )
        ),
    )
    assert patch_lint.lint_series("0.32.0", release) == []
    assert patch_lint.main(["--version", "0.32.0"]) == 0


@pytest.mark.parametrize(
    ("rev", "pin"),
    [
        ("v0.14.0", "0.14.0"),  # 0.32.0, 0.33.0
        ("f368fb366ff7f2f808dd324b83a6d32267799e19  # frozen: v0.17.2", "0.17.2"),  # 0.34.0
        ("f368fb366ff7f2f808dd324b83a6d32267799e19", None),  # a commit alone names no version
    ],
)
def test_upstream_ruff_pin_reads_both_forms(tmp_path, rev, pin):
    """Each release is linted with the ruff its pre-commit pins; 0.34.0 pins
    a commit and writes the version in a comment."""
    (tmp_path / ".pre-commit-config.yaml").write_text(
        "repos:\n- repo: https://github.com/astral-sh/ruff-pre-commit\n"
        f"  rev: {rev}\n  hooks:\n  - id: ruff-check\n"
        "- repo: https://github.com/crate-ci/typos\n  rev: v1.51.1  # frozen: v1.51.1\n"
    )
    assert patch_lint.upstream_ruff_pin(tmp_path) == pin
