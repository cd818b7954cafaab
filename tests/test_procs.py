"""procs.py: a hung rank becomes a failure with its stack in the message, and
no process of its session (or a descendant that escaped into its own session)
survives. Fake ranks only: plain Python, no vLLM, a few seconds each."""

import contextlib
import os
import signal
import sys
import textwrap
import time

import pytest

from vllm_epdp.harness import procs

# A "rank" that starts a SIGTERM-ignoring child, and a grandchild that leaves
# the session with setsid (what vLLM's engine processes can look like), then
# blocks in a function named like a collective.
HANGING_RANK = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = '''
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen([sys.executable, "-c",
        "import os,signal,time; os.setsid(); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    time.sleep(600)
    '''
    subprocess.Popen([sys.executable, "-c", child])
    def fake_all_reduce_waiting_for_peer():
        time.sleep(600)
    print("rank up", flush=True)
    fake_all_reduce_waiting_for_peer()
    """
)


def wait_until(condition, what: str, limit_s: float = 60.0):
    """Poll ``condition`` until it holds; fail after ``limit_s`` (a bound for a
    broken run, not a speed requirement)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {limit_s:.0f} s"
        time.sleep(0.1)


def _spec(tmp_path, name, code, env=None):
    return procs.ProcSpec(
        name=name,
        argv=[sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        log=tmp_path / f"{name}.log",
    )


@pytest.mark.timeout(120)
def test_hanging_rank_is_reported_with_stack_and_leaves_no_process(tmp_path):
    group = procs.ProcGroup(
        "fake-dp2",
        [_spec(tmp_path, "rank0", HANGING_RANK), _spec(tmp_path, "rank1", "print('done')")],
        timeout_s=6,
    )
    group.start()
    # rank0, its child, the setsid grandchild; rank1 may have exited already.
    wait_until(lambda: len(group.members()) >= 3, "rank0's child and grandchild started")
    tree = group.members()
    outcome = group.wait()
    assert outcome.timed_out and not outcome.ok
    assert outcome.returncodes["rank1"] == 0
    assert outcome.returncodes["rank0"] is None
    text = outcome.describe()
    assert "fake-dp2: HUNG" in text and "still running: rank0" in text
    assert "fake_all_reduce_waiting_for_peer" in text  # py-spy's stack of rank0
    time.sleep(0.5)
    assert group.survivors() == set()
    for pid in tree:
        info = procs.read_proc(pid)
        assert info is None or info.state == "Z", info


@pytest.mark.timeout(60)
def test_failed_rank_stops_waiting_peer_after_grace(tmp_path):
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    wait = "import time\ndef gloo_wait_for_dead_peer():\n    time.sleep(600)\ngloo_wait_for_dead_peer()"
    outcome = procs.run_group(
        "fake-crash",
        [_spec(tmp_path, "rank0", crash), _spec(tmp_path, "rank1", wait)],
        timeout_s=60,
        grace_s=2,
    )
    # Not a timeout: the waiting peer was stopped grace_s after rank0 died,
    # long before the 60 s deadline (which would have set timed_out).
    assert not outcome.ok and not outcome.timed_out
    assert outcome.returncodes["rank0"] == -signal.SIGSEGV
    assert outcome.returncodes["rank1"] is None
    text = outcome.describe()
    assert "died of signal SIGSEGV" in text
    assert "gloo_wait_for_dead_peer" in text
    # faulthandler (PYTHONFAULTHANDLER=1, set by procs) printed the crash stack
    assert "Fatal Python error: Segmentation fault" in (tmp_path / "rank0.log").read_text()


@pytest.mark.timeout(60)
def test_success_reports_ok(tmp_path):
    outcome = procs.run_group("fine", [_spec(tmp_path, f"rank{i}", "print('hi')") for i in range(2)], timeout_s=30)
    assert outcome.ok, outcome.describe()
    assert "hi" in (tmp_path / "rank0.log").read_text()


@pytest.mark.timeout(90)
def test_ctrl_c_of_the_parent_kills_its_groups(tmp_path):
    """A parent that uses procs and is interrupted leaves nothing behind."""
    # The parent restores Python's Ctrl-C handler: a process started in the
    # background by a non-interactive shell (CI runners, `cmd &`) inherits
    # SIGINT as ignored, and Python then keeps ignoring it; a terminal user's
    # process has the handler. (Both CI failures of this test were that.)
    parent = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pathlib import Path
        from vllm_epdp.harness import procs
        signal.signal(signal.SIGINT, signal.default_int_handler)
        g = procs.ProcGroup("x", [procs.ProcSpec("r0", [sys.executable, "-c", {HANGING_RANK!r}],
                                  dict(os.environ), Path({str(tmp_path)!r}) / "r0.log")], 600)
        g.start()
        while len(g.members()) < 3:  # the rank, its child, the grandchild
            time.sleep(0.1)
        Path({str(tmp_path)!r}, "pids.tmp").write_text(" ".join(map(str, g.members())))
        os.rename(Path({str(tmp_path)!r}, "pids.tmp"), Path({str(tmp_path)!r}, "pids"))
        g.wait()
        """
    )
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    pids_file = tmp_path / "pids"
    wait_until(pids_file.exists, "the parent started its group")
    pids = [int(x) for x in pids_file.read_text().split()]
    assert len(pids) >= 3
    p.send_signal(signal.SIGINT)
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # Say where the parent was (py-spy) if it ever outlives SIGINT again.
        stack = procs.dump_stack(p.pid)
        rc = None
    time.sleep(0.5)
    survivors = [pid for pid in pids if (i := procs.read_proc(pid)) and i.state != "Z"]
    # Clean up in any case, so the test itself leaves nothing.
    for pid in survivors + ([p.pid] if rc is None else []):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert rc is not None, f"the parent was still running 30 s after SIGINT:\n{stack}"
    assert rc != 0
    assert survivors == []
