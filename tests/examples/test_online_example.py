"""The online example in its CPU form: `vllm serve --data-parallel-size 2
--enable-expert-parallel` started by serve_dp_ep_cpu.sh, checked by
client_check.py with concurrent requests against the offline DP=1 reference.

The same server then takes requests arriving while a rank idles
(arrivals.py: the coordinator path of docs/idle_ranks.md) with the collective
ledger on: every member of every group must have posted the same collectives
once the engines are quiet."""

import subprocess
import sys

import arrivals
import pytest
from example_runs import CLIENT, RUN_TIMEOUT_S, SERVE_CPU, free_port, verdict

from vllm_epdp import ledger, procs


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_serve_dp2_ep_matches_dp1(example_env, tiny_moe, offline_reference, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ledger_dir = tmp_path / "ledger"
    env = dict(example_env, DP="2", PORT=str(port), VLLM_EPDP_LEDGER=str(ledger_dir))
    server_log = tmp_path / "serve.log"
    spec = procs.ProcSpec("serve", ["bash", str(SERVE_CPU), str(tiny_moe), "--dtype", "float32"],
                          env, server_log)
    client_log = tmp_path / "client.log"
    with procs.ProcGroup("vllm serve dp=2 ep", [spec], timeout_s=RUN_TIMEOUT_S) as group:
        try:
            with open(client_log, "w") as log:
                res = subprocess.run(
                    [sys.executable, str(CLIENT), "--url", url,
                     "--wait", "240", "--timeout", "120", "--num-requests", "16",
                     "--concurrency", "8", "--reference", str(offline_reference)],
                    stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S,
                )
        except subprocess.TimeoutExpired:
            pytest.fail("client timed out; server stacks:\n" + group.dump_stacks()
                        + "\n" + procs.log_tail(server_log, 40))
        served = arrivals.run(url, timeout_s=60) if res.returncode == 0 else None
        quiet = served is not None and arrivals.wait_quiet(ledger_dir)
        if served is not None and served != arrivals.expected():
            pytest.fail(f"arrivals: {served}; server stacks:\n" + group.dump_stacks()
                        + "\n" + procs.log_tail(server_log, 40))
        alive = group.exited()["serve"] is None
    assert not group.members(), "processes left behind after the server was stopped"
    text = client_log.read_text(errors="replace")
    assert alive, "server exited early:\n" + procs.log_tail(server_log, 60)
    assert res.returncode == 0, text[-3000:] + "\n--- server:\n" + procs.log_tail(server_log, 40)
    assert "EngineCore_DP1" in server_log.read_text(errors="replace")  # really two DP engines
    assert verdict(client_log).startswith("VERDICT: PASS 16/16 answers matched"), text
    assert quiet, "the engines' ledgers kept growing after the last request"
    mismatches = ledger.compare(ledger_dir)
    assert mismatches == [], "\n".join(mismatches + ledger.summary(ledger_dir))
    # Both DP engines (one process each) recorded collectives.
    assert len(list(ledger_dir.glob("*.jsonl"))) >= 2
