"""Offline DP runs (vLLM's data-parallel pattern: one process per DP rank,
each with its own DPEngineCoreProc) of a request schedule, with the collective
ledger on, through vllm_epdp.verify.offline_process. Used by the idle-rank experiments."""

from __future__ import annotations

import json
from pathlib import Path

from vllm_epdp import model_runners
from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness import cpu_host, offline_dp, procs
from vllm_epdp.harness.offline_engine import EngineSpec

SLOW_FRONTEND = Path(__file__).parent / "slow_frontend_worker.py"
PROMPT = "The quick brown fox jumps over the lazy dog. "


def run_schedule(
    env: dict,
    model: Path,
    workdir: Path,
    waves: list[list[list[int]]],
    ep: bool = False,
    timeout_s: float = 300.0,
    nan_watch: bool = False,
    logprobs: int = 0,
    stall_s: float | None = None,
    frontend_gap_s: float | None = None,
    nan_fill: bool = False,
    runner: str = "auto",
    dtype: str = "float32",
) -> dict:
    """waves[rank] = list of waves, each a list of max_tokens (one request
    each). Returns {"outcome", "results", "ledger_mismatches", "counts",
    "ledger_steps", "ledger_ops", "nan_watch"}.

    stall_s: once one rank has finished its whole schedule, the others get
    this long to finish too before the run counts as hung (an expected hang
    then costs engine start + stall_s, not the whole timeout_s).

    frontend_gap_s: each rank's front-end waits this long after sending each
    request (slow_frontend_worker.py), so that a batch reaches the engine
    spread over several steps.

    nan_fill: every torch.empty buffer of the vLLM processes starts as NaN
    (VLLM_EPDP_NAN_FILL, vllm_epdp/diagnostics/plugin.py), so rows nobody wrote are
    non-finite for certain, whatever the allocator hands out.

    runner: the model runner to use ("v1", "v2": vllm_epdp.model_runners.runner_env;
    "auto": vLLM's own pick); nan_watch records which one ran."""
    workdir.mkdir(parents=True, exist_ok=True)
    base = cpu_host.cpu_env(env, 2, hub_offline=True)
    base["VLLM_EPDP_LEDGER"] = str(workdir / "ledger")
    if nan_watch:
        base["VLLM_EPDP_NAN_WATCH"] = str(workdir / "nan_watch")
    if nan_fill:
        base["VLLM_EPDP_NAN_FILL"] = "1"
    base = model_runners.runner_env(runner, base)
    scenario = {
        "name": "schedule",
        "waves": [
            [
                [
                    {"id": f"r{rank}w{w}q{i}", "prompt": PROMPT * (1 + i % 3), "max_tokens": n}
                    for i, n in enumerate(wave)
                ]
                for w, wave in enumerate(rank_waves)
            ]
            for rank, rank_waves in enumerate(waves)
        ],
    }
    engine = EngineSpec(
        model=str(model),
        dtype=dtype,
        tp=1,
        dp=len(waves),
        ep=ep,
        launcher="mp",
        max_model_len=256,
        barrier_dir=str(workdir / "barrier"),
    )
    what = {"logprobs": logprobs, "scenarios": [scenario], "out": str(workdir / "out" / "rank{rank}.json")}
    entry = (
        ["-m", "vllm_epdp.verify.offline_process"]
        if frontend_gap_s is None
        else [str(SLOW_FRONTEND), str(frontend_gap_s)]
    )
    specs = offline_dp.rank_processes(engine, what, base, entry, workdir)
    barriers = workdir / "barrier"

    def stall_deadline(group: procs.ProcGroup) -> None:
        if stall_s is not None and any(barriers.glob("exit.*")):
            group.timeout_s = min(group.timeout_s, group.elapsed() + stall_s)

    with procs.ProcGroup("dp schedule", specs, timeout_s) as group:
        outcome = group.wait(on_tick=stall_deadline)
    results = {}
    for p in sorted((workdir / "out").glob("rank*.json")):
        results.update(json.loads(p.read_text())["results"]["schedule"])
    ldir = workdir / "ledger"
    watch = [json.loads(p.read_text()) for p in sorted((workdir / "nan_watch").glob("*.json"))]
    loaded = ledger.load(ldir) if ldir.is_dir() else None
    return {
        "nan_watch": watch,
        # The model runner each worker really ran (nan_watch saw its class).
        "runners": sorted({w["info"].get("runner") for w in watch if "runner" in w.get("info", {})}),
        "outcome": outcome,
        "results": results,
        "ledger_mismatches": ledger.compare(ldir) if ldir.is_dir() else ["no ledger"],
        "counts": ledger.counts(ldir) if ldir.is_dir() else {},
        # Per process that ran a model: the kinds of steps the ledger marked.
        "ledger_steps": sorted(loaded.steps.values(), key=str) if loaded else [],
        # (layer, op) of every entry: which layers recorded what.
        "ledger_ops": sorted(
            {(e.layer, e.op) for members in loaded.groups.values() for _, entries in members.values() for e in entries}
        )
        if loaded
        else [],
    }
