"""Run a script, or one Python function, as N torch.distributed ranks: one procs group, each rank in its own session.

    run = run_ranks(HERE / "ledger_worker.py", 2, tmp_path, env=vllm_patched, args=["agree", out])
    run = run_ranks("tests/collectives/packed_core_worker.py:gather_matrix", 4, tmp_path, kwargs={"core": core})
    assert run.ok, run.describe()

Every rank gets what torchrun would give it, RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT (a free port), plus ``EPDP_RESULT``: a file of its own to
write a result to (``run.results[rank]``, read by ``load``; ``{}`` for a rank
that wrote none) and OMP_NUM_THREADS=1 (N ranks share a few cores).

* A script target (a path) runs as ``python SCRIPT ARGS...``; it joins its
  process group itself (``init_process_group`` with ``env://``).
* A function target (``"FILE.py:NAME"``) runs in vllm_epdp/harness/function_process.py:
  the ranks meet through a FileStore in ``workdir`` (no port to race for)
  and call ``NAME(rank, world_size, **kwargs)``; the rank exits 0 if it
  returns. A rank still waiting after most of ``timeout_s`` writes every
  thread's stack to its log (faulthandler) and exits, so a hang names the
  collective it hangs in.

Either way the group runs under procs.ProcGroup: a hard deadline with py-spy
stacks of every process, peers stopped ``grace_s`` after one failed, nothing
left behind. Each rank's stdout and stderr go to ``workdir/rank<N>.log``
(``run.outputs[rank]``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vllm_epdp.errors import EpdpError
from vllm_epdp.harness import procs
from vllm_epdp.harness.ports import free_port

RESULT_ENV = "EPDP_RESULT"


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text())


@dataclasses.dataclass
class RankRun:
    outcome: procs.Outcome
    outputs: list[str]  # each rank's log: its stdout and stderr together
    results: list  # what each rank wrote to $EPDP_RESULT ({} for none)

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def returncodes(self) -> list[int | None]:
        """Per rank; None: still running when it was killed."""
        return [self.outcome.returncodes[f"rank{r}"] for r in range(len(self.outputs))]

    def describe(self, log_lines: int = 30) -> str:
        return self.outcome.describe(log_lines=log_lines)


def is_function_target(target: str | Path) -> bool:
    """ "FILE.py:NAME" names a function; anything else is a script's path."""
    return isinstance(target, str) and ".py:" in target


def run_ranks(
    target: str | Path,
    world_size: int,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    kwargs: dict | None = None,
    timeout_s: float = 120.0,
    grace_s: float = 20.0,
    result_suffix: str = ".json",
    load: Callable[[Path], Any] = _load_json,
) -> RankRun:
    """Run ``target`` as ranks 0..world_size-1 (see the module docstring).

    env: the base environment (e.g. a vllm_pristine or vllm_patched fixture;
    default this process's). args: a script's command-line arguments;
    kwargs: a function's keyword arguments (JSON-serialisable)."""
    function = is_function_target(target)
    if function and args:
        raise EpdpError("run_ranks: a function target takes kwargs, not args")
    if not function and kwargs:
        raise EpdpError("run_ranks: a script target takes args, not kwargs")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if function:
        # Most of the deadline, so the dump lands before the hard kill.
        hang_s = max(timeout_s - 10.0, timeout_s * 0.8)
        store = workdir / f"store-{uuid.uuid4().hex}"
        argv = [
            sys.executable,
            "-m",
            "vllm_epdp.harness.function_process",
            str(target),
            str(hang_s),
            json.dumps(kwargs or {}),
        ]
        argv.append(str(store))
        label = str(target).rsplit(":", 1)[1]
    else:
        argv = [sys.executable, str(target), *args]
        label = Path(target).stem
    base = dict(os.environ if env is None else env)
    port = str(free_port())
    result_paths = [workdir / f"result-{rank}{result_suffix}" for rank in range(world_size)]
    specs = []
    for rank in range(world_size):
        rank_env = dict(base)
        rank_env.update(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
            PYTHONFAULTHANDLER="1",
        )
        rank_env[RESULT_ENV] = str(result_paths[rank])
        specs.append(procs.ProcSpec(f"rank{rank}", argv, rank_env, workdir / f"rank{rank}.log"))
    outcome = procs.run_group(f"{label} x{world_size}", specs, timeout_s, grace_s=grace_s)
    outputs = [spec.log.read_text(errors="replace") if spec.log.exists() else "" for spec in specs]
    results = [load(p) if p.exists() else {} for p in result_paths]
    return RankRun(outcome, outputs, results)


def init_vllm_world() -> None:
    """Inside a rank of ``run_ranks``: vLLM's world group over gloo, from the
    environment run_ranks gave the rank (call under ``set_current_vllm_config``,
    then ``initialize_model_parallel`` with the layout the test wants)."""
    from vllm.distributed.parallel_state import init_distributed_environment

    rank = int(os.environ["RANK"])
    init_distributed_environment(
        world_size=int(os.environ["WORLD_SIZE"]),
        rank=rank,
        distributed_init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        local_rank=rank,
        backend="gloo",
    )
