"""The V1 runner's contract for a DP rank with zero scheduled tokens, pinned
at runner level (vLLM's real CPU model runner, tiny dense model, DP=2 gloo):

* external_launcher (torchrun): execute_model joins the DP step itself
  (a dummy forward), so an idle rank keeps step with a working peer;
* mp / ray (vllm serve, offline DP): execute_model returns without joining;
  the engine core (DPEngineCoreProc.run_busy_loop) runs the dummy batch for
  that step instead. A change that makes the runner join here too double-
  joins under DPEngineCoreProc (tests/model_runner/test_idle_ranks_e2e.py).

This is why the series has no "idle DP ranks always join" patch (the
idea of a user's workaround; upstream #44601/#51984/#53578): docs/idle_ranks.md.
"""

from pathlib import Path

import pytest

from tests.model_runner import dense_model
from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(400)
HERE = Path(__file__).parent
STEPS = 30


def test_zero_token_step_joins_only_under_external_launcher(series_env, tmp_path):
    model = dense_model.build(tmp_path / "dense")
    env = dict(series_env, EPDP_GLOO_TIMEOUT="20")
    env["PYTHONPATH"] = f"{HERE}:{env['PYTHONPATH']}"
    run = run_ranks(
        HERE / "idle_rank_worker.py",
        2,
        tmp_path,
        env=env,
        args=[str(model), str(tmp_path / "ledger"), str(STEPS)],
        timeout_s=300,
    )
    assert run.ok, run.describe()
    idle, busy = run.results
    assert idle["external_launcher"] == busy["external_launcher"] == STEPS
    assert idle["mp"] == STEPS and busy["mp"] == 0 and "mp_error" in busy
    (mismatch,) = ledger.compare(tmp_path / "ledger")
    # the 30 joined steps agree; the working rank's 31st has no partner
    assert f"disagree at collective #{STEPS}\n" in mismatch
    assert "<no entry" in mismatch
    # and the ledger names the steps (the runner's methods, marked by the
    # ledger's vLLM layer): the working rank's dummy forward of 7 tokens
    # against the idle rank's last execute_model, which had no token.
    assert "(_dummy_run, 7 tokens)" in mismatch
    assert "its last step: step" in mismatch and "(execute_model, 0 tokens)" in mismatch
