"""nan_watch on a fake worker/runner/model (fast, no vLLM): the hook point,
real vs padding rows, dummy steps, startup forwards counted apart, summary."""

import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from vllm_epdp.diagnostics import nan_watch, nonfinite


class FakeDecoderLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = torch.nn.LayerNorm(4)
        self.self_attn = torch.nn.Linear(4, 4)
        self.mlp = torch.nn.Linear(4, 4)

    def forward(self, positions, hidden, residual):
        h = self.mlp(self.self_attn(hidden))
        return h, hidden


class FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([FakeDecoderLayer(), FakeDecoderLayer()])

    def forward(self, hidden):
        positions = torch.arange(hidden.shape[0])
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        return hidden


class FakeRunner:
    def __init__(self):
        self.model = FakeModel()

    def get_model(self):
        return self.model

    def forward(self, rows, real):
        x = torch.ones(rows, 4)
        x[real:] = float("nan")  # padding rows as garbage
        return self.model(x)

    def execute_model(self, scheduler_output, padded_to=None):
        n = scheduler_output.total_num_scheduled_tokens
        return self.forward(padded_to or n, n)

    def _dummy_run(self, rows, **kw):
        return self.forward(rows, 0)


def make_worker_module(runner_cls=None):
    module = types.ModuleType(nan_watch.WORKER_MODULE)

    class Worker:
        def load_model(self):
            self.model_runner = (runner_cls or FakeRunner)()

        def execute_dummy_batch(self):
            self.model_runner._dummy_run(1)

    module.Worker = Worker
    return module


@pytest.fixture(autouse=True)
def no_watch():
    """Every test installs its own watch."""
    nan_watch.reset()
    yield
    nan_watch.reset()


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    module = make_worker_module()
    monkeypatch.setitem(sys.modules, nan_watch.WORKER_MODULE, module)
    nan_watch.install(tmp_path)
    yield module, tmp_path


def test_real_and_padding_rows_are_counted_apart(fresh):
    module, out = fresh
    worker = module.Worker()
    worker.load_model()
    worker.model_runner._dummy_run(8)  # memory profiling: a startup forward
    sched = SimpleNamespace(total_num_scheduled_tokens=3)
    worker.model_runner.execute_model(sched)  # 3 real rows, no padding
    worker.model_runner.execute_model(sched, padded_to=5)  # DP padding 3 -> 5
    worker.execute_dummy_batch()  # idle rank: 1 row, all padding
    nan_watch.flush()
    files = list(out.glob("nan_watch-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["startup_steps"] == 1
    assert data["steps"] == 3 and data["dummy_steps"] == 1
    assert data["padded_steps"] == 1 and data["padded_rows"] == 2 and data["max_padded_rows"] == 2
    assert data["rows"] == [[3, 3], [5, 3], [1, 0]]
    mods = data["modules"]
    # Norms are skipped; decoder layers and their attention/MLP children hooked.
    assert set(mods) == {f"layers.{i}{c}" for i in (0, 1) for c in ("", ".self_attn", ".mlp")}
    first = mods["layers.0.self_attn"]
    assert first["real_nonfinite_rows"] == 0
    assert first["pad_nonfinite_rows"] == 2 + 1  # padded step + dummy step
    assert first["startup_nonfinite_rows"] == 8
    assert first["first_kind"] == "pad"
    total = nonfinite.summarize(out)
    assert total["processes"] == 1 and total["real_nonfinite_rows"] == 0
    assert total["pad_nonfinite_rows"] == 6 * 3 and total["padded_rows"] == 2


def test_nan_in_a_real_row_is_a_real_row(fresh):
    module, out = fresh
    worker = module.Worker()
    worker.load_model()
    runner = worker.model_runner
    runner.forward = lambda rows, real: runner.model(torch.full((rows, 4), float("nan")))
    runner.execute_model(SimpleNamespace(total_num_scheduled_tokens=2))
    nan_watch.flush()
    total = nonfinite.summarize(out)
    assert total["real_nonfinite_rows"] == 6 * 2 and total["pad_nonfinite_rows"] == 0


# A vLLM worker module as nan_watch finds it, for a process where the plugin
# runs before vLLM's worker code is imported (the engine's worker processes).
LATE_WORKER = """
import torch

class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Linear(4, 4)

    def forward(self, hidden):
        return self.mlp(hidden)

Layer.__name__ = "FakeDecoderLayer"

class Runner:
    def __init__(self):
        self.model = torch.nn.Sequential(Layer())

    def get_model(self):
        return self.model

    def execute_model(self, scheduler_output):
        x = torch.ones(scheduler_output.total_num_scheduled_tokens, 4)
        x[-1] = float("nan")
        return self.model(x)

    def _dummy_run(self, rows):
        return self.model(torch.zeros(rows, 4))

class Worker:
    def load_model(self):
        self.model_runner = Runner()

    def execute_dummy_batch(self):
        self.model_runner._dummy_run(1)
"""

LATE_IMPORT = """
import json, sys
from types import SimpleNamespace
from vllm_epdp.diagnostics import nan_watch, nonfinite
out = sys.argv[1]
nan_watch.install(out)
assert "vllm.v1.worker.gpu_worker" not in sys.modules
from vllm.v1.worker.gpu_worker import Worker  # imported after install()
worker = Worker()
worker.load_model()
worker.model_runner.execute_model(SimpleNamespace(total_num_scheduled_tokens=3))
print(json.dumps(nonfinite.summarize(out)))
"""


def test_patch_applies_when_the_worker_module_is_imported_later(tmp_path):
    """install() before vLLM's worker module exists in the process: the
    module, once imported, gets its hooks (a fresh interpreter, with a stand-in
    vllm package first on its path)."""
    import os
    import subprocess

    worker_dir = tmp_path / "fake" / "vllm" / "v1" / "worker"
    worker_dir.mkdir(parents=True)
    for pkg in (worker_dir, worker_dir.parent, worker_dir.parent.parent):
        (pkg / "__init__.py").write_text("")
    (worker_dir / "gpu_worker.py").write_text(LATE_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.getcwd()])}
    res = subprocess.run(
        [sys.executable, "-c", LATE_IMPORT, str(tmp_path / "watch")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    total = json.loads(res.stdout.strip().splitlines()[-1])
    # The hooks ran: one step of 3 real rows, the last one NaN in the layer
    # and its mlp child.
    assert total["processes"] == 1 and total["steps"] == 1
    assert total["real_nonfinite_rows"] == 2 and total["pad_nonfinite_rows"] == 0


class FakeRunnerV2(FakeRunner):
    """What Model Runner V2 looks like to the hooks: its _dummy_run goes
    through execute_model(dummy_run=True) with a made-up scheduler output
    that counts the dummy rows."""

    def execute_model(self, scheduler_output, dummy_run=False, is_profile=False):
        n = scheduler_output.total_num_scheduled_tokens
        return self.forward(n, 0 if dummy_run else n)

    def _dummy_run(self, rows, is_profile=False, **kw):
        return self.execute_model(
            SimpleNamespace(total_num_scheduled_tokens=rows), dummy_run=True, is_profile=is_profile
        )


def test_v2_dummy_run_through_execute_model_counts_as_dummy(monkeypatch, tmp_path):
    module = make_worker_module(FakeRunnerV2)
    monkeypatch.setitem(sys.modules, nan_watch.WORKER_MODULE, module)
    nan_watch.install(tmp_path)
    worker = module.Worker()
    worker.load_model()
    worker.model_runner._dummy_run(8, is_profile=True)  # memory profiling: start-up
    worker.model_runner.execute_model(SimpleNamespace(total_num_scheduled_tokens=3))
    worker.execute_dummy_batch()  # the idle rank's step: 1 row, none real
    nan_watch.flush()
    data = json.loads(next(tmp_path.glob("nan_watch-*.json")).read_text())
    assert data["startup_steps"] == 1
    assert data["rows"] == [[3, 3], [1, 0]] and data["dummy_steps"] == 1
    attn = data["modules"]["layers.0.self_attn"]
    assert attn["real_nonfinite_rows"] == 0 and attn["pad_nonfinite_rows"] == 1


def test_nonfinite_rows_ignores_non_float_and_empty():
    assert nonfinite.nonfinite_rows(torch.tensor([1, 2]), 1) == (0, 0)
    assert nonfinite.nonfinite_rows(torch.empty(0, 3), 0) == (0, 0)
    t = torch.zeros(4, 2, 3)
    t[1, 0, 0] = float("inf")
    t[3, 1, 2] = float("nan")
    assert nonfinite.nonfinite_rows(t, 2) == (1, 1)


def test_padding_rows_left_not_zero_are_counted_finite_or_not(tmp_path):
    counter = nonfinite.NonFiniteCounter(tmp_path)
    counter.step(4, 1)  # start-up (memory profiling): not counted
    garbage = torch.zeros(4, 3)
    garbage[0] = 5.0  # the real row: never counted
    garbage[2, 1] = 0.25  # finite, but not zero
    counter.module_output("attn", garbage, real=1)
    counter.serving = True
    counter.step(4, 1)
    counter.module_output("attn", garbage, real=1)
    garbage[3, 0] = float("nan")
    counter.module_output("attn", (torch.zeros(4, 3), garbage), real=1)  # the larger count
    counter.module_output("zeroed", torch.zeros(4, 3), real=1)
    counter.flush()
    data = json.loads(counter.path.read_text())
    assert data["pad_nonzero_rows"] == {"attn": 1 + 2}
    assert data["modules"]["attn"]["pad_nonfinite_rows"] == 1
    assert nonfinite.summarize(tmp_path)["pad_nonzero_rows"] == {"dp?tp?:attn": 3}


def test_nonzero_rows_reads_padding_rows_only():
    t = torch.ones(3, 2)
    assert nonfinite.nonzero_rows(t, 3) == 0 and nonfinite.nonzero_rows(t, 1) == 2
    assert nonfinite.nonzero_rows(torch.tensor([1, 2]), 0) == 0
    assert nonfinite.nonzero_rows(torch.zeros(3, 2), 0) == 0
