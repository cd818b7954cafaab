"""The 0.33.0 series on vLLM 0.33.0's own files, with the real tool and real
`git apply`: as a pip install (site-packages with a dist-info whose RECORD
hashes the release's files) and as a git checkout tagged v0.33.0. Applies,
leaves files that byte-compile, reverts byte for byte. And the maintainer's
`check --release` on the same files."""

from __future__ import annotations

import json
import py_compile
import shutil

import pytest
import tool_helpers as th
from release_trees import RELEASE, make_site

from vllm_epdp.series import load_series

pytestmark = pytest.mark.timeout(300)


def changed_files() -> list[str]:
    return sorted({f for p in load_series(RELEASE) for f in p.files})


def assert_compiles(root, tmp_path) -> None:
    """Every file the series changes compiles (bytecode written aside, so
    the tree keeps no trace of it)."""
    for rel in changed_files():
        if rel.endswith(".py"):
            py_compile.compile(str(root / rel), cfile=str(tmp_path / "c.pyc"), doraise=True)


def states(r) -> dict[str, str]:
    return {p["number"]: p["state"] for p in json.loads(r.stdout)["patches"]}


def test_series_applies_and_reverts_on_site_packages(release_033, tmp_path):
    site = make_site(release_033, tmp_path)
    before = th.snapshot(site)
    n = len(load_series(RELEASE))

    r = th.run_cli(["status", "--json"], site, None)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vllm"]["version"] == RELEASE and info["series"]["version"] == RELEASE
    assert set(states(r).values()) == {"not applied"} and len(states(r)) == n

    r = th.run_cli(["apply"], site, None)
    assert r.returncode == 0, r.stderr
    assert f"apply done: {n} patch(es) applied" in r.stderr
    assert set(states(th.run_cli(["status", "--json"], site, None)).values()) == {"applied"}
    assert_compiles(site, tmp_path)

    r = th.run_cli(["revert"], site, None)  # checks every file against RECORD
    assert r.returncode == 0, r.stderr
    assert th.snapshot(site) == before


def test_series_applies_and_reverts_on_a_checkout(release_033, tmp_path):
    checkout = tmp_path / "vllm-src"
    shutil.copytree(release_033 / "vllm", checkout / "vllm")  # modes as upstream's git has them
    th.git(checkout, "init", "-q")
    th.git(checkout, "add", "-A")
    th.git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"vllm {RELEASE}")
    th.git(checkout, "tag", f"v{RELEASE}")

    r = th.run_cli(["check", "--checkout", str(checkout)], None, None)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("the series applies"), r.stdout
    assert th.run_cli(["apply", "--checkout", str(checkout)], None, None).returncode == 0
    r = th.run_cli(["status", "--checkout", str(checkout), "--json"], None, None)
    assert set(states(r).values()) == {"applied"}, r.stdout
    assert json.loads(r.stdout)["vllm"]["version"] == RELEASE
    assert_compiles(checkout, tmp_path)
    changed = th.git(checkout, "status", "--porcelain").splitlines()
    assert sorted(line[3:] for line in changed) == changed_files(), changed
    assert th.run_cli(["revert", "--checkout", str(checkout)], None, None).returncode == 0
    assert th.git(checkout, "status", "--porcelain", "--ignored") == ""


def test_check_release_with_its_own_series(release_033):
    r = th.run_cli(["check", "--release", RELEASE, "--json"], None, None)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["series"] == RELEASE and report["series_chosen"] == "its own"
    assert set(states(r).values()) == {"applies"} and len(states(r)) == len(load_series(RELEASE))


def test_check_release_names_what_0_32_0_series_lacks(release_033):
    """The day 0.33.0 appeared: the 0.32.0 series on its files."""
    r = th.run_cli(["check", "--release", RELEASE, "--version", "0.32.0"], None, None)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "warning: --version 0.32.0" in r.stderr
    assert "0011 Turn async scheduling off by default under expert + data parallelism: CONFLICTS" in r.stdout
    assert "    vllm/config/vllm.py hunk #3 (@@ -1631,6 +1653,16 @@) does not apply" in r.stdout
    assert "    vllm/v1/engine/core.py hunk #3 (@@ -2233,6 +2247,8 @@) does not apply" in r.stdout
    # The totals agree with the per-patch lines (which other patches conflict
    # follows the 0.32.0 series as it changes: 0001's import edits, say).
    conflicts = r.stdout.count(": CONFLICTS")
    applies = r.stdout.count(": applies")
    assert conflicts >= 2 and applies + conflicts == len(load_series("0.32.0")), r.stdout
    assert r.stdout.rstrip().endswith(f"({applies} applies, {conflicts} conflicts)"), r.stdout
