"""The online example in its CPU form: `vllm serve --data-parallel-size 2
--enable-expert-parallel` started by serve_dp_ep_cpu.sh, checked by
client_check.py with concurrent requests against the offline DP=1 reference.

The same server then takes requests arriving while a rank idles
(arrivals.py: the coordinator path of docs/idle_ranks.md) with the collective
ledger on, and a short run of the soak example (soak_client.py): every
member of every group must have posted the same collectives once the
engines are quiet. The opt-in experiment shows that this check
catches drift online: the upstream idle-join proposal makes it fail."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import arrivals
import pytest
from example_runs import CLIENT, RUN_TIMEOUT_S, SERVE_CPU, SOAK, verdict

from tests.model_runner.edits import NAIVE_IDLE_JOIN
from vllm_epdp import model_runners
from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness import procs
from vllm_epdp.harness.log_forensics import log_tail
from vllm_epdp.harness.ports import free_port
from vllm_epdp.patching.overlay import env_with
from vllm_epdp.patching.variants import overlay_with_edit


@contextlib.contextmanager
def serving(env: dict, model: Path, tmp_path: Path):
    """`vllm serve` DP=2+EP with the ledger on, in its own session under a
    hard deadline; yields (url, group, server log, ledger dir). Checks on
    the way out that no process outlived the server."""
    port = free_port()
    ledger_dir = tmp_path / "ledger"
    env = dict(env, DP="2", PORT=str(port), VLLM_EPDP_LEDGER=str(ledger_dir))
    server_log = tmp_path / "serve.log"
    spec = procs.ProcSpec("serve", ["bash", str(SERVE_CPU), str(model), "--dtype", "float32"], env, server_log)
    with procs.ProcGroup("vllm serve dp=2 ep", [spec], timeout_s=RUN_TIMEOUT_S) as group:
        yield f"http://127.0.0.1:{port}", group, server_log, ledger_dir
    assert not group.members(), "processes left behind after the server was stopped"


@pytest.mark.e2e
@pytest.mark.timeout(900)
# `vllm serve` DP=2 + EP against DP=1 runs in CI on both runners as the fuzz
# target serve-dp2-ep's fixed seeds (the example scripts' static checks in
# test_example_checks.py); this run of the example itself is the full tier.
@pytest.mark.full
@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_serve_dp2_ep_matches_dp1(example_env, tiny_moe, offline_reference, tmp_path, runner):
    """Both model runners behind `vllm serve` (V2 is what serves on XPU and
    NVIDIA), each against the same offline DP=1 reference."""
    client_log = tmp_path / "client.log"
    env = model_runners.runner_env(runner, example_env)
    with serving(env, tiny_moe, tmp_path) as (url, group, server_log, ledger_dir):
        try:
            with open(client_log, "w") as log:
                res = subprocess.run(
                    [
                        sys.executable,
                        str(CLIENT),
                        "--url",
                        url,
                        "--wait",
                        "240",
                        "--timeout",
                        "120",
                        "--num-requests",
                        "16",
                        "--concurrency",
                        "8",
                        "--reference",
                        str(offline_reference),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=RUN_TIMEOUT_S,
                )
        except subprocess.TimeoutExpired:
            pytest.fail("client timed out; server stacks:\n" + group.dump_stacks() + "\n" + log_tail(server_log, 40))
        served = arrivals.run(url, timeout_s=60) if res.returncode == 0 else None
        if served is not None and served != arrivals.expected():
            pytest.fail(f"arrivals: {served}; server stacks:\n" + group.dump_stacks() + "\n" + log_tail(server_log, 40))
        if served is not None:
            # The soak example, briefly: random arrivals and two pauses.
            soak = subprocess.run(
                [
                    sys.executable,
                    str(SOAK),
                    "--url",
                    url,
                    "--seconds",
                    "10",
                    "--rate",
                    "3",
                    "--pause-every",
                    "4",
                    "--pause",
                    "1.5",
                    "--timeout",
                    "60",
                ],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
            )
            if soak.returncode != 0:
                pytest.fail(
                    f"soak: {soak.stdout[-2000:]}{soak.stderr[-2000:]}; server stacks:\n"
                    + group.dump_stacks()
                    + "\n"
                    + log_tail(server_log, 40)
                )
        quiet = served is not None and ledger.wait_quiet(ledger_dir)
        alive = group.exited()["serve"] is None
    text = client_log.read_text(errors="replace")
    assert alive, "server exited early:\n" + log_tail(server_log, 60)
    assert res.returncode == 0, text[-3000:] + "\n--- server:\n" + log_tail(server_log, 40)
    log_text = server_log.read_text(errors="replace")
    assert "EngineCore_DP1" in log_text  # really two DP engines
    # The runner asked for ran: vLLM logs this line when it builds a V2 runner.
    assert (model_runners.V2_LOG_LINE in log_text) == (runner == "v2")
    assert verdict(client_log).startswith("VERDICT: PASS 16/16 answers matched"), text
    assert quiet, "the engines' ledgers kept growing after the last request"
    mismatches = ledger.compare(ledger_dir)
    assert mismatches == [], "\n".join(mismatches + ledger.summary(ledger_dir))
    # Both DP engines (one process each) recorded collectives.
    assert len(list(ledger_dir.glob("*.jsonl"))) >= 2


@pytest.mark.e2e
@pytest.mark.experiment
@pytest.mark.timeout(900)
def test_serve_upstream_idle_join_proposal_drifts(example_env, tiny_moe, tmp_path):
    """The offline experiment of test_idle_ranks_e2e, through `vllm serve`:
    with the runner joining on every zero-token step, the arrivals make a
    rank post one DP collective more than its peer, and the server hangs."""
    overlay = overlay_with_edit("naive-idle-join", *NAIVE_IDLE_JOIN)
    env = env_with(overlay, base=example_env)
    with serving(env, tiny_moe, tmp_path) as (url, group, server_log, ledger_dir):
        assert arrivals.soak_client.wait_healthy(url, 240), "server not healthy after 240 s"
        served = arrivals.run(url, timeout_s=30)
        ledger.wait_quiet(ledger_dir, limit_s=30)
    assert served != arrivals.expected(), "expected requests that never finish"
    assert ledger.compare(ledger_dir), "expected the ranks' DP collectives to diverge"
