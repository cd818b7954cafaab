"""Async scheduling soak: TP=2 x DP=2 + EP serving traffic with idle phases, then checks.

Continuous traffic with idle phases against one `vllm serve`, for --minutes.

The server is the fuzz target ``serve-tp2-dp2-ep`` (vllm_epdp.fuzz.targets:
TP=2 x DP=2 with EP over 4 ranks, tiny Qwen3-MoE fp32, CPU, the patched
vLLM first on PYTHONPATH) with async scheduling on (patch 0014 makes CPU
honour it), the collective ledger on (VLLM_EPDP_LEDGER) and the async probe on
(VLLM_EPDP_ASYNC_PROBE). The traffic is examples/online_serving/soak_client.py,
run as a subprocess: Poisson arrivals (--rate), random lengths (--lengths,
1-token answers included) and every --pause-every seconds --pause seconds of
silence, long enough for every DP rank to go idle and the DP wave to end; the
next request wakes them. That is the traffic of the "deadlock after about an
hour" report (upstream #43547), with async scheduling added.

Verdict PASS when all of these hold:
  - every request came back complete (the soak client's verdict, exit 0);
  - the ledgers of every process agree (vllm_epdp.diagnostics.ledger.compare, no problem);
  - every engine core really pipelined: only batch-queue steps, some of them
    overlapped (vllm_epdp.diagnostics.async_probe.problems(dir, expect_async=True));
  - the model runner that ran is the one asked for (the server's log);
  - no process of the server or the client is left once it is stopped.

Measured: requests sent and completed, the pauses the client made, the idle
phases the engines went through (no collective on any process for at least
half a pause, read off the ledger's time stamps; a pause that ends the run
has no traffic after it and is not seen), each engine core's steps
(synchronous / through the batch queue / overlapped with the previous batch:
the probe's counts as of its last write, every 256 steps, because vLLM kills
its engine cores at shutdown before their exit write), every worker's
model-runner steps (real and dummy batches, from the ledger: exact), ledger
entries and groups. Progress on stderr every minute.

  .venv/bin/python benchmarks/async_soak.py --minutes 30 \\
      --json docs/async_soak.json --markdown docs/async_soak.md

Wall time: the server's start (~1-2 minutes on 2 cores), --minutes of traffic,
the ledger's comparison (grows with the run) and the stop (< 1 minute). Not
run in CI: a soak is a benchmark. Exit status: 0 PASS, 1 a check failed (the
server could not start included), 2 bad input or environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from vllm_epdp import model_runners
from vllm_epdp.cache import cache_root
from vllm_epdp.diagnostics import async_probe, ledger
from vllm_epdp.errors import EpdpError
from vllm_epdp.fuzz.targets import target
from vllm_epdp.harness import procs, serving, tiny_models
from vllm_epdp.patching.overlay import overlay_env

TARGET = "serve-tp2-dp2-ep"
CLIENT = Path(__file__).resolve().parents[1] / "examples" / "online_serving" / "soak_client.py"
PROGRESS_EVERY_S = 60.0
START_LIMIT_S = 900.0  # the server must answer /health within this
CLIENT_GRACE_S = 120.0  # past --minutes + the request timeout, the client is killed
STOP_LIMIT_S = 600.0  # ledger comparison and stop, on top of the traffic
VERDICT = re.compile(r"VERDICT: (PASS|FAIL|ERROR) (?:(\d+)/(\d+) requests)?(.*)")


def say(msg: str) -> None:
    print(f"[async_soak] {msg}", file=sys.stderr, flush=True)


def client_pauses(seconds: float, every: float, pause: float) -> int:
    """The pauses soak_client.py makes in ``seconds``: the first after
    ``every`` s of traffic, each next one ``every`` s after the last ended."""
    if every <= 0:
        return 0
    n, at = 0, every
    while at < seconds:
        n, at = n + 1, at + pause + every
    return n


def idle_phases(led, since: float, min_gap_s: float) -> int:
    """Gaps of at least ``min_gap_s`` between consecutive collectives of all
    processes together, after ``since`` (wall clock): times when every rank
    was idle."""
    times = sorted(
        e.t
        for members in led.groups.values()
        for _, entries in members.values()
        for e in entries
        if e.t and e.t >= since
    )
    return sum(1 for a, b in zip(times, times[1:]) if b - a >= min_gap_s)


def last_line(log: Path, prefix: str) -> str:
    """The last line of ``log`` that starts with ``prefix`` ('' if none)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return next((ln for ln in reversed(lines) if ln.startswith(prefix)), "")


def engine_steps(probe: Path) -> list[dict]:
    """Each engine core's step counts (the probe writes them every 256 steps and at exit)."""
    keys = ("dp_rank", "pid", "sync_steps", "queued_steps", "overlapped", "batch_queue_size")
    return [{k: e.get(k) for k in keys} for e in async_probe.read(probe)]


def run_client(args, url: str, workdir: Path, server: serving.Server, probe: Path) -> tuple[int | None, str, set]:
    """soak_client.py against ``url`` in a procs group of its own (hard
    deadline, nothing left behind); progress every minute. Returns its exit
    code (None: killed at the deadline), its verdict line, its processes left."""
    seconds = args.minutes * 60.0
    argv = [
        sys.executable, str(CLIENT), "--url", url, "--seconds", str(seconds), "--rate", str(args.rate),
        "--pause-every", str(args.pause_every), "--pause", str(args.pause), "--lengths", args.lengths,
        "--timeout", str(args.request_timeout), "--seed", str(args.seed),
    ]  # fmt: skip
    log = workdir / "soak_client.log"
    spec = procs.ProcSpec("soak_client", argv, dict(os.environ), log)
    group = procs.ProcGroup("soak_client", [spec], seconds + args.request_timeout + CLIENT_GRACE_S)
    next_report = [time.monotonic() + PROGRESS_EVERY_S]

    def on_tick(g: procs.ProcGroup) -> None:
        if not server.alive():  # stop at once: the client would only count failures
            raise EpdpError("the server died during the soak:\n" + server.log_tail())
        if time.monotonic() < next_report[0]:
            return
        next_report[0] += PROGRESS_EVERY_S
        for sg in server.groups:
            sg.members()  # remember the engine cores and workers, for the check of what is left
        overlapped = sum(e["overlapped"] for e in engine_steps(probe))
        soak = last_line(log, "[soak]") or "(no progress line yet)"
        say(f"{g.elapsed() / 60:.1f}/{args.minutes:g} min: {soak}; overlapped steps so far >= {overlapped}")

    with group:
        outcome = group.wait(poll_s=1.0, on_tick=on_tick)
    verdict = last_line(log, "VERDICT:") or f"no verdict: {outcome.describe()}"
    return outcome.returncodes.get("soak_client"), verdict, group.survivors()


def soak(args, env: dict[str, str], model: Path, workdir: Path) -> dict:
    dep = target(TARGET).deployment(str(model), args.runner, async_scheduling=True)
    probe = workdir / "async-probe"
    for stale in probe.glob("engine-*.json"):  # an earlier run in the same workdir
        stale.unlink()
    # A collective or step stuck for 120 s dumps every thread's stack into the
    # ledger, which its comparison then reports: a hang says where it is.
    env = dict(env, VLLM_EPDP_ASYNC_PROBE=str(probe), VLLM_EPDP_LEDGER_STALL_S="120")
    seconds = args.minutes * 60.0
    deadline = START_LIMIT_S + seconds + args.request_timeout + CLIENT_GRACE_S + STOP_LIMIT_S
    result: dict = {"deployment": dep.describe(), "problems": []}
    problems = result["problems"]
    say(f"starting {TARGET}: {dep.describe()} (server start ~1-2 min); workdir {workdir}")
    server = None
    started = time.monotonic()
    try:
        with serving.serve(dep, workdir / "server", env, start_limit_s=START_LIMIT_S, deadline_s=deadline) as server:
            result["server_start_s"] = round(time.monotonic() - started, 1)
            for g in server.groups:
                g.members()
            say(f"server up at {server.url} after {result['server_start_s']:.0f} s; {args.minutes:g} min of traffic")
            traffic_from = time.time()
            rc, verdict, client_left = run_client(args, server.url, workdir, server, probe)
            result["client_exit"], result["client_verdict"] = rc, verdict
            m = VERDICT.match(verdict)
            result["requests_sent"] = int(m.group(3)) if m and m.group(3) else None
            result["requests_completed"] = int(m.group(2)) if m and m.group(2) else None
            if rc != 0:
                problems.append(f"soak client (exit {rc}): {verdict}")
            if client_left:
                problems.append(f"soak client processes left: {sorted(client_left)}")
            say(f"traffic done: {verdict}; comparing the ledgers")
            result["runner_seen"] = model_runners.runner_in_logs(server.logs)
            if result["runner_seen"] != args.runner.upper():
                problems.append(
                    f"asked for runner {args.runner.upper()}, the server's log shows {result['runner_seen']}"
                )
            if not ledger.wait_quiet(server.ledger_dir, quiet_s=2.0, limit_s=120.0):
                problems.append("the engines did not go quiet within 120 s after the traffic")
            rep = ledger.report(server.ledger_dir)
            problems += [f"ledger: {p}" for p in rep.problems]
            result["ledger_entries"] = rep.ledger.entries
            result["ledger_groups"] = len(rep.ledger.groups)
            result["ledger_files"] = rep.ledger.files
            result["idle_phases_seen"] = idle_phases(rep.ledger, traffic_from, args.pause / 2)
            result["model_runner_steps"] = {f: dict(kinds) for f, kinds in sorted(rep.ledger.steps.items())}
            for g in server.groups:
                g.members()
            say("stopping the server")
    except EpdpError as exc:  # the server did not start, or died
        problems.append(exc.message)
    # serving.serve has stopped it (SIGINT, then the group killed); check.
    left = set()
    if server is not None:
        for g in server.groups:
            left |= g.survivors()
    steps = engine_steps(probe)  # after the stop: its pids must be gone (counts: as of the last write)
    for e in steps:
        info = procs.read_proc(e["pid"])
        if info is not None and info.state != "Z":
            left.add(e["pid"])
    if left:
        problems.append(f"server processes left after the stop: {sorted(left)}")
    problems += [f"async probe: {p}" for p in async_probe.problems(probe, expect_async=True)]
    result["engine_cores"] = steps
    result["pauses"] = client_pauses(seconds, args.pause_every, args.pause)
    result["processes_left"] = sorted(left)
    return result


def markdown(report: dict) -> str:
    steps = report.get("engine_cores") or []
    lines = [
        f"**{report['verdict']}**: {report['minutes']:g} min of traffic against {TARGET} ({report['deployment']}), "
        f"async scheduling on, ledger and async probe on; {report['machine']}; {report['wall_s'] / 60:.1f} min wall.",
        "",
        "| requests sent | completed | pauses (client) | idle phases (engines) | ledger entries | ledger groups |",
        "|---|---|---|---|---|---|",
        f"| {report.get('requests_sent')} | {report.get('requests_completed')} | {report['pauses']} | "
        f"{report.get('idle_phases_seen')} | {report.get('ledger_entries')} | {report.get('ledger_groups')} |",
        "",
        "| engine core (DP rank) | synchronous steps | batch-queue steps | overlapped | batch queue |",
        "|---|---|---|---|---|",
    ]
    for e in steps:
        lines.append(
            f"| {e['dp_rank']} (pid {e['pid']}) | {e['sync_steps']} | {e['queued_steps']} | {e['overlapped']} | "
            f"{e['batch_queue_size']} |"
        )
    lines.append("")
    lines.append("Engine core counts as of the async probe's last write (every 256 steps).")
    workers = report.get("model_runner_steps") or {}
    if workers:
        lines += ["", "| worker (ledger file) | model-runner steps by kind |", "|---|---|"]
        for f, kinds in workers.items():
            lines.append(f"| {f} | " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + " |")
    lines.append("")
    lines.append(f"Traffic: {report['traffic']}. Client: `{report.get('client_verdict')}`.")
    for p in report["problems"]:
        lines.append(f"- problem: {p}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of traffic (default 30)")
    ap.add_argument("--runner", choices=("v1", "v2"), default="v1", help="model runner (V2: Triton interpreter, slow)")
    ap.add_argument("--rate", type=float, default=1.0, help="mean request arrivals per second (default 1)")
    ap.add_argument("--lengths", default="1,1,2,4,8,16,32,64", help="max_tokens drawn per request (comma list)")
    ap.add_argument("--pause-every", type=float, default=45.0, help="seconds of traffic between pauses (default 45)")
    ap.add_argument(
        "--pause", type=float, default=15.0, help="seconds of silence per pause: long enough for DP waves to end"
    )
    ap.add_argument("--request-timeout", type=float, default=180.0, help="per request, s (a hang is a failure)")
    ap.add_argument("--seed", type=int, default=0, help="the client's random seed")
    ap.add_argument("--workdir", help="server logs, ledger, probe, client log (default: a temporary directory)")
    ap.add_argument("--json", metavar="FILE", help="write the report here")
    ap.add_argument("--markdown", metavar="FILE", help="write the markdown summary here")
    args = ap.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.pause < 0 or args.pause_every < 0:
        print("async_soak: --minutes and --rate must be > 0, --pause and --pause-every >= 0", file=sys.stderr)
        return 2

    started = time.monotonic()
    try:
        model = tiny_models.build("qwen3-moe", cache_root() / "models" / "qwen3-moe")
        env = overlay_env("patched")  # the series, 0014 included: CPU honours --async-scheduling
    except EpdpError as exc:
        print(f"async_soak: {exc.message}", file=sys.stderr)
        return exc.exit_code
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="async-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = soak(args, env, model, workdir)
    report = {
        "verdict": "FAIL" if result["problems"] else "PASS",
        "target": TARGET,
        "runner": args.runner,
        "minutes": args.minutes,
        "traffic": f"rate {args.rate:g}/s, lengths {args.lengths}, a {args.pause:g} s pause every "
        f"{args.pause_every:g} s of traffic, request timeout {args.request_timeout:g} s, seed {args.seed}",
        **result,
        "overlapped_steps": sum(e["overlapped"] for e in result["engine_cores"]),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
        "workdir": str(workdir),
        "wall_s": round(time.monotonic() - started, 1),
    }
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0 if report["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
