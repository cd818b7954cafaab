"""Run one Python function on N gloo ranks, each in its own process.

    results = run_ranks("tests/collectives/rank_core.py:gather_matrix", 4,
                        env=vllm_patched, args={"core": path_of_core})
    assert_all_ok(results)

Each rank is a fresh interpreter started in a new session (setsid), so the
function sees exactly the vLLM that `env` (PYTHONPATH) selects. The ranks meet
through a FileStore in a private temp dir (no ports to race for), call
`fn(rank, world_size, **args)` and exit 0 if it returns.

A collective that never completes must not hang the test run, so:
- every rank arms faulthandler.dump_traceback_later: after `hang_s` it writes
  the stack of all its threads to stderr and exits;
- when one rank fails, the peers still waiting on it are sent SIGUSR1 (which
  makes faulthandler dump their stacks), then killed;
- at the hard deadline every rank's process group is SIGKILLed.
The returned RankResult carries each rank's exit code, stdout and stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve()


@dataclasses.dataclass
class RankResult:
    rank: int
    returncode: int | None  # None: killed at the deadline
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class RanksFailed(AssertionError):
    pass


def describe(results: list[RankResult], tail: int = 3000) -> str:
    parts = []
    for r in results:
        status = "killed at deadline" if r.returncode is None else f"rc={r.returncode}"
        parts.append(f"--- rank {r.rank}: {status}\n{r.stderr[-tail:]}")
    return "\n".join(parts)


def assert_all_ok(results: list[RankResult]) -> None:
    if not all(r.ok for r in results):
        raise RanksFailed("not every rank succeeded:\n" + describe(results))


def run_ranks(
    target: str,
    world_size: int,
    *,
    env: dict[str, str] | None = None,
    args: dict | None = None,
    timeout_s: float = 120.0,
) -> list[RankResult]:
    """Run `target` ("path/to/file.py:function") on `world_size` ranks."""
    hang_s = max(timeout_s - 10.0, timeout_s * 0.8)
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryDirectory(prefix="gloo_ranks_") as tmp:
        store = os.path.join(tmp, "store")
        procs, outs = [], []
        for rank in range(world_size):
            # Open for the ranks' whole life; closed once read, below.
            out = open(os.path.join(tmp, f"out{rank}"), "w+")  # noqa: SIM115
            err = open(os.path.join(tmp, f"err{rank}"), "w+")  # noqa: SIM115
            cmd = [
                sys.executable,
                str(_HERE),
                target,
                str(rank),
                str(world_size),
                store,
                str(hang_s),
                json.dumps(args or {}),
            ]
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=full_env,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            outs.append((out, err))
        codes = _wait(procs, deadline=time.monotonic() + timeout_s)
        results = []
        for rank, ((out, err), code) in enumerate(zip(outs, codes)):
            out.seek(0)
            err.seek(0)
            results.append(RankResult(rank, code, out.read(), err.read()))
            out.close()
            err.close()
        return results


def _wait(procs: list[subprocess.Popen], deadline: float) -> list[int | None]:
    codes: list[int | None] = [None] * len(procs)
    failed_at = None
    while time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if codes[i] is None:
                codes[i] = p.poll()
        if all(c is not None for c in codes):
            return codes
        if failed_at is None and any(c not in (None, 0) for c in codes):
            # A peer died: the others would wait for it until the gloo
            # timeout. Ask them for their stacks, give them a moment, kill.
            failed_at = time.monotonic()
            for i, p in enumerate(procs):
                if codes[i] is None:
                    _signal_group(p, signal.SIGUSR1)
        if failed_at is not None and time.monotonic() - failed_at > 3.0:
            break
        time.sleep(0.02)
    for i, p in enumerate(procs):
        if codes[i] is None:
            _signal_group(p, signal.SIGKILL)
    for i, p in enumerate(procs):
        rc = p.wait()
        if codes[i] is None and rc == 0:
            codes[i] = 0  # finished just before the kill
    return codes


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # pgid == pid: started with start_new_session
    except ProcessLookupError:
        pass


# ----------------------------------------------------------- rank side
def _rank_main(argv: list[str]) -> None:
    import faulthandler
    import importlib.util

    target, rank, world_size, store, hang_s, args = argv
    rank, world_size, hang_s = int(rank), int(world_size), float(hang_s)
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.dump_traceback_later(hang_s, exit=True)

    # What torchrun would set: vLLM's external-launcher mode reads them.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))

    import datetime

    import torch.distributed as dist

    path, fn_name = target.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("_rank_target", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, fn_name)

    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=hang_s),
    )
    try:
        fn(rank, world_size, **json.loads(args))
    finally:
        faulthandler.cancel_dump_traceback_later()
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(sys.argv[1:])
