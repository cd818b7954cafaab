"""An interrupted apply/revert leaves the tree exactly as before.

The CLI runs with VLLM_EPDP_TEST_PAUSE_AFTER_PATCH so that it sleeps after the
first patch is written; the test waits for that line on stderr, checks that the
tree really is half changed, then interrupts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tool_helpers as th

from vllm_epdp import patching

pytestmark = pytest.mark.timeout(60)


def start_paused(cmd, site, patches):
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm_epdp.cli", *cmd],
        env=th.cli_env(site, patches, VLLM_EPDP_TEST_PAUSE_AFTER_PATCH=30),
        cwd=site.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("test pause"):
            return proc, seen
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError(f"never paused: {seen}")


def finish(proc, timeout=20):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_during_apply_rolls_back_at_once(site, fake_patches, sig, code):
    before = th.snapshot(site)
    proc, _ = start_paused(["apply"], site, fake_patches)
    assert th.snapshot(site) != before, "the first patch should be on disk while paused"
    assert (site / patching.JOURNAL / "manifest.json").is_file()
    proc.send_signal(sig)
    rc, err = finish(proc)
    assert rc == code, err
    assert "rolled back 4 file(s), the tree is as before" in err
    assert "Traceback" not in err
    assert th.snapshot(site) == before


def test_sigint_during_revert_restores_the_applied_tree(site, fake_patches):
    assert th.run_cli(["apply"], site, fake_patches).returncode == 0
    applied = th.snapshot(site)
    proc, _ = start_paused(["revert"], site, fake_patches)
    assert th.snapshot(site) != applied
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130, err
    assert th.snapshot(site) == applied


def test_sigkill_during_apply_is_rolled_back_by_the_next_run(site, fake_patches):
    before = th.snapshot(site)
    proc, _ = start_paused(["apply"], site, fake_patches)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert th.snapshot(site) != before  # half applied, journal on disk

    r = th.run_cli(["status", "--json"], site, fake_patches)
    assert json.loads(r.stdout)["interrupted_run_journal"] is True
    r = th.run_cli(["status"], site, fake_patches)
    assert "an interrupted run left a journal" in r.stdout

    r = th.run_cli(["revert"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "found the journal of an interrupted run (apply 0001 0002 0003" in r.stderr
    assert "restored 4 file(s)" in r.stderr
    assert "nothing to do" in r.stderr
    assert th.snapshot(site) == before


def test_sigkill_then_apply_recovers_then_applies(site, fake_patches):
    proc, _ = start_paused(["apply"], site, fake_patches)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    r = th.run_cli(["apply"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "found the journal" in r.stderr and "apply done: 3 patch(es) applied" in r.stderr
    assert not (site / patching.JOURNAL).exists()


def test_leftovers_of_journal_writing_and_removal(site):
    """Killed while writing a journal (nothing changed yet) or while removing a
    finished one (manifest already gone): recovery just deletes them."""
    before = th.snapshot(site)
    (site / ".vllm-epdp-journal.new" / "files").mkdir(parents=True)
    (site / patching.JOURNAL / "files").mkdir(parents=True)
    (site / patching.JOURNAL / "files" / "0").write_text("stale")
    assert patching.recover(site, log=lambda line: None) is False
    assert th.snapshot(site) == before
