"""Verify one configuration offline: start its ranks, watch them, collect their outputs.

The processes come from harness.offline_dp (a ``verify/offline_process.py`` process per
DP rank in vLLM's offline DP pattern, or one torchrun of every rank under the
external launcher); each runs verify's scenarios in one engine. The group runs
under procs.ProcGroup: hard deadline, stacks of every process on a hang,
nothing left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from vllm_epdp import model_runners
from vllm_epdp.harness import procs
from vllm_epdp.harness.cpu_host import cpu_env
from vllm_epdp.harness.offline_dp import rank_processes
from vllm_epdp.harness.offline_engine import PROGRESS, EngineSpec
from vllm_epdp.verify.plan import Config, Model
from vllm_epdp.verify.scenarios import ALL_SCENARIOS

LOGPROBS = 5
MAX_MODEL_LEN = 1024


@dataclasses.dataclass
class Settings:
    device: str = "cpu"
    timeout_s: float = 600.0
    watch: bool = True  # nan_watch hooks
    ledger: bool = False
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)
    async_scheduling: bool | None = None  # None: vLLM's default (off on CPU)
    say: Callable[[str], None] = print  # progress printer


@dataclasses.dataclass
class RunResult:
    config: Config
    scenarios: list[str]
    outputs: dict[str, dict[str, dict]]  # scenario -> request id -> result
    outcome: procs.Outcome | None
    wall_s: float
    engine_up_s: float | None
    workdir: Path
    error: str = ""  # why the run produced no usable output

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def outputs_seen(self) -> bool:
        return any(self.outputs.values())


def base_env(config: Config, model: Model, settings: Settings, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    if settings.device == "cpu":
        env = cpu_env(env, config.dp * config.tp, hub_offline=model.offline)
    elif model.offline:
        env["HF_HUB_OFFLINE"] = "1"
    if config.reference and config.tp == 1 and config.launcher == "mp" and settings.device == "cpu":
        # The single-rank reference needs no engine-core or worker process:
        # running all in one process saves two vLLM imports (~30 s here).
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if settings.watch:
        env["VLLM_EPDP_NAN_WATCH"] = str(workdir / "nan_watch")
    if settings.ledger:
        env["VLLM_EPDP_LEDGER"] = str(workdir / "ledger")
    env.update(settings.extra_env)
    return model_runners.runner_env(config.runner, env, settings.device)


class ProgressReader:
    """Turns the ranks' ``@@verify`` lines into progress messages."""

    def __init__(self, name: str, logs: list[Path], n_scenarios: int, say: Callable[[str], None]) -> None:
        self.name, self.logs, self.n, self.say = name, logs, n_scenarios, say
        self.offsets = {p: 0 for p in logs}
        self.engine_up: float | None = None
        self.done: list[str] = []
        self.started = time.monotonic()

    def __call__(self, _group: procs.ProcGroup | None = None) -> None:
        for path in self.logs:
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[path])
                    chunk = f.read()
            except OSError:
                continue
            # Only consume whole lines.
            cut = chunk.rfind(b"\n") + 1
            self.offsets[path] += cut
            for line in chunk[:cut].decode(errors="replace").splitlines():
                if line.startswith(PROGRESS):
                    self._event(json.loads(line[len(PROGRESS) :]))

    def _event(self, e: dict) -> None:
        if e["event"] == "engine_up" and self.engine_up is None:
            self.engine_up = e["seconds"]
            self.say(f"[verify] {self.name}: engine up after {e['seconds']:.0f} s")
        elif e["event"] == "scenario_done" and e.get("dp_rank", 0) == 0:
            self.done.append(e["scenario"])
            self.say(
                f"[verify] {self.name}: {len(self.done)}/{self.n} scenarios ({e['scenario']} in {e['seconds']:.1f} s)"
            )


def engine_of(config: Config, model: Model, workdir: Path, async_scheduling: bool | None) -> EngineSpec:
    return EngineSpec(
        model=model.path,
        dtype=model.dtype,
        tp=config.tp,
        dp=config.dp,
        ep=config.ep,
        launcher=config.launcher,
        max_model_len=MAX_MODEL_LEN,
        barrier_dir=str(workdir / "barrier"),
        async_scheduling=async_scheduling,
    )


def scenarios_of(config: Config, scenarios: list[str], workdir: Path) -> dict:
    """What verify's process reads beside the engine (verify/offline_process.py)."""
    return {
        "logprobs": LOGPROBS,
        # The reference runs every request on its one rank, in the same waves.
        "scenarios": [ALL_SCENARIOS[s].to_json(config.dp) for s in scenarios],
        "out": str(workdir / "out" / "rank{rank}.json"),
    }


def run_offline(config: Config, model: Model, scenarios: list[str], workdir: Path, settings: Settings) -> RunResult:
    workdir.mkdir(parents=True, exist_ok=True)
    env = base_env(config, model, settings, workdir)
    specs = rank_processes(
        engine_of(config, model, workdir, settings.async_scheduling),
        scenarios_of(config, scenarios, workdir),
        env,
        ["-m", "vllm_epdp.verify.offline_process"],
        workdir,
    )
    settings.say(
        f"[verify] {config.key}: starting {len(specs) if config.launcher != 'torchrun' else config.dp * config.tp}"
        f" process(es), {config.describe()}, {model.key} {model.dtype}; scenarios: {', '.join(scenarios)}"
    )
    reader = ProgressReader(config.key, [s.log for s in specs], len(scenarios), settings.say)
    started = time.monotonic()
    with procs.ProcGroup(config.key, specs, settings.timeout_s) as group:
        outcome = group.wait(on_tick=reader)
    reader()
    wall = time.monotonic() - started
    outputs: dict[str, dict[str, dict]] = {s: {} for s in scenarios}
    for path in sorted((workdir / "out").glob("rank*.json")):
        data = json.loads(path.read_text())
        for scenario, results in data["results"].items():
            outputs.setdefault(scenario, {}).update(results)
    error = "" if outcome.ok else outcome.describe(log_lines=0)
    return RunResult(config, scenarios, outputs, outcome, wall, reader.engine_up, workdir, error)
