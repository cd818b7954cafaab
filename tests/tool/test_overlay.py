"""Overlays built from a fake installed vLLM (fast)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tool_helpers as th

from vllm_epdp.errors import EpdpError
from vllm_epdp.patching import overlay

pytestmark = pytest.mark.timeout(60)

MAKE = "import sys; from vllm_epdp.patching.overlay import make_overlay; print(make_overlay(sys.argv[1], sys.argv[2]))"


@pytest.fixture
def big_site(tmp_path):
    return th.make_site(tmp_path, big_so=True)


def build(site, patches, dest, state):
    r = subprocess.run(
        [sys.executable, "-c", MAKE, str(dest), state],
        env=th.cli_env(site, patches),
        cwd=site.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pristine_and_patched_side_by_side(big_site, fake_patches, tmp_path):
    site = big_site
    before = th.snapshot(site)
    dest = tmp_path / "cache"
    pristine = build(site, fake_patches, dest, "pristine")
    patched = build(site, fake_patches, dest, "patched")
    assert pristine != patched
    assert th.snapshot(site) == before, "making overlays must not touch the installed vLLM"
    assert th.snapshot(f"{pristine}/vllm") == th.snapshot(site / "vllm")
    assert "VALUE = 2" in Path(patched, "vllm/a.py").read_text()
    assert Path(patched, "vllm/newpkg/c.py").read_text() == "C = 'new'\n"
    # big binaries are shared, sources are real copies
    so = os.stat(site / "vllm/_C.abi3.so")
    assert os.stat(f"{patched}/vllm/_C.abi3.so").st_ino == so.st_ino
    assert os.stat(f"{patched}/vllm/sub/__init__.py").st_ino != os.stat(site / "vllm/sub/__init__.py").st_ino
    assert not [p for p in dest.iterdir() if p.name.startswith(".tmp-")]
    # the overlay wins over the installed package on PYTHONPATH
    env = th.cli_env(site, fake_patches)
    env["PYTHONPATH"] = patched + os.pathsep + env["PYTHONPATH"]
    r = subprocess.run(
        [sys.executable, "-c", "import vllm.a, vllm.newpkg.c; print(vllm.a.VALUE)"],
        env=env,
        cwd=site.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == "2"


def test_built_from_a_patched_install(site, fake_patches, tmp_path):
    pristine_files = th.snapshot(site / "vllm")
    assert th.run_cli(["apply", "0001", "0003"], site, fake_patches).returncode == 0
    pristine = build(site, fake_patches, tmp_path / "cache", "pristine")
    assert th.snapshot(f"{pristine}/vllm") == pristine_files
    patched = build(site, fake_patches, tmp_path / "cache", "patched")
    assert "thirty-two" in Path(patched, "vllm/a.py").read_text()  # 0002 too, not just what the venv had


def test_cached_and_keyed_by_series(site, fake_patches, tmp_path, patches_env):
    dest = tmp_path / "cache"
    first = build(site, fake_patches, dest, "patched")
    marker = os.path.join(first, ".vllm-epdp-overlay.json")
    ino = os.stat(marker).st_ino
    # Found, not rebuilt: a rebuild would read the installed files, and one of
    # them no longer matches its RECORD hash now (the build would refuse it).
    source = site / "vllm" / "a.py"
    shipped = source.read_text()
    source.write_text(shipped + "# changed after the overlay was built\n")
    again = build(site, fake_patches, dest, "patched")
    source.write_text(shipped)
    assert again == first and os.stat(marker).st_ino == ino
    # another series content -> another overlay
    other = tmp_path / "other-patches"
    import shutil

    shutil.copytree(fake_patches, other)
    (other / "v0.32.0" / "series").write_text(
        "\n".join(line for line in (other / "v0.32.0" / "series").read_text().splitlines() if "0003" not in line) + "\n"
    )
    third = build(site, other, dest, "patched")
    assert third != first and not os.path.exists(os.path.join(third, "vllm/newpkg"))
    # the pristine overlay is the wheel's bytes whatever the series
    assert build(site, fake_patches, dest, "pristine") == build(site, other, dest, "pristine")


def test_concurrent_builds_agree(site, fake_patches, tmp_path):
    dest = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MAKE, str(dest), "patched"],
            env=th.cli_env(site, fake_patches),
            cwd=site.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert len({o.strip() for o, _ in outs}) == 1
    assert [p.name for p in dest.iterdir()] == [os.path.basename(outs[0][0].strip())]


def test_stale_temporary_builds_are_ignored_and_pruned(site, fake_patches, tmp_path):
    dest = tmp_path / "cache"
    dest.mkdir()
    stale = dest / ".tmp-patched-0123456789abcdef-dead"
    (stale / "vllm").mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = dest / ".tmp-patched-0123456789abcdef-live"  # a build running right now
    fresh.mkdir()
    made = build(site, fake_patches, dest, "patched")
    assert not stale.exists() and fresh.exists()
    assert os.path.exists(os.path.join(made, "vllm/newpkg/c.py"))


@pytest.mark.parametrize(
    "path, old, new, needle",
    [
        ("vllm/sub/b.py", "'b'", "'hacked'", "vllm/sub/b.py hunk #1"),  # inside a hunk: conflict
        ("vllm/a.py", "line_10 = 10", "line_10 = 0", "vllm/a.py (sha256 differs from RECORD)"),  # elsewhere
        ("vllm/__init__.py", "A fake", "An edited fake", "vllm/__init__.py (sha256"),  # a file no patch touches
        ("vllm/old_series.py", "", "X = 1", "vllm/old_series.py (not shipped"),  # left by an older series
    ],
)
def test_locally_modified_install_is_refused(site, fake_patches, tmp_path, path, old, new, needle):
    text = (site / path).read_text() if (site / path).exists() else ""
    (site / path).write_text(text.replace(old, new) if old else new)
    r = subprocess.run(
        [sys.executable, "-c", MAKE, str(tmp_path / "cache"), "pristine"],
        env=th.cli_env(site, fake_patches),
        cwd=site.parent,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "vllm_epdp.errors.EpdpError: cannot make a pristine overlay" in r.stderr
    assert needle in r.stderr and "--force-reinstall" in r.stderr
    assert not [p for p in (tmp_path / "cache").iterdir()], "no half overlay may stay behind"


def test_unknown_state(patches_env):
    with pytest.raises(EpdpError, match="unknown overlay state"):
        overlay.make_overlay(state="half")


def test_half_changed_install_is_refused(site, fake_patches, tmp_path):
    (site / ".vllm-epdp-journal").mkdir()
    (site / ".vllm-epdp-journal" / "manifest.json").write_text('{"files": []}')
    r = subprocess.run(
        [sys.executable, "-c", MAKE, str(tmp_path / "cache"), "patched"],
        env=th.cli_env(site, fake_patches),
        cwd=site.parent,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "interrupted vllm-epdp run" in r.stderr
