"""verify's online run (vllm_epdp.verify.server) judges the server by what it
really did: a server that ends with an error after Ctrl-C, or does not end at
all, fails the run. A stand-in `vllm` package (fake_vllm_serve/) answers the
HTTP API in a few lines, so no engine starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_epdp.verify import server
from vllm_epdp.verify.offline import Settings
from vllm_epdp.verify.plan import Config, Model

FAKE = Path(__file__).parent / "fake_vllm_serve"
CONFIG = Config("serve-dp2", "m", 2, 1, True, "serve", ("serve-one",))
MODEL = Model("m", "fake-model", "float32", "exact")

pytestmark = pytest.mark.timeout(120)


def serve(monkeypatch, tmp_path, on_sigint: str):
    monkeypatch.setenv("PYTHONPATH", str(FAKE))
    monkeypatch.setenv("FAKE_SERVE_ON_SIGINT", on_sigint)
    monkeypatch.setattr(server, "SHUTDOWN_GRACE_S", 3.0)
    settings = Settings(timeout_s=60, watch=False, say=lambda line: None)
    return server.run_server(CONFIG, MODEL, ["serve-one"], tmp_path / "run", settings)


def test_clean_stop_passes(monkeypatch, tmp_path):
    result = serve(monkeypatch, tmp_path, "exit0")
    assert result.ok, result.error
    assert result.outcome.returncodes == {"server": 0}
    [answer] = result.outputs["serve-one"].values()
    assert answer["token_ids"] == [7] * 48


def test_error_exit_after_ctrl_c_fails(monkeypatch, tmp_path):
    result = serve(monkeypatch, tmp_path, "exit3")
    assert not result.ok and result.outcome.returncodes == {"server": 3}
    assert "ended with exit code 3" in result.error
    assert result.outputs["serve-one"]  # the answers came; the exit still fails the run


def test_server_that_ignores_ctrl_c_fails_with_its_stack(monkeypatch, tmp_path):
    result = serve(monkeypatch, tmp_path, "ignore")
    assert not result.ok and result.outcome.timed_out
    assert "still running 3 s after SIGINT" in result.error
    assert "serve_until_killed" in result.error  # py-spy's stack of the stuck server
    assert result.outcome.returncodes == {"server": None}
