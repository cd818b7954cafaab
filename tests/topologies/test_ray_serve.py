"""`vllm serve` on Ray on one host, as users run it when they outgrow the mp
backend (patch 0015): a Ray cluster of our own on loopback with a fixed CPU
count (vllm_epdp.harness.ray_cluster), then

- ``--data-parallel-backend ray``: DP=2 + EP, each DP rank an engine-core
  actor placed by Ray, its worker a Ray actor (vLLM picks the Ray executor
  for the Ray DP backend);
- ``--distributed-executor-backend ray``: TP=2 + EP, the two TP workers Ray
  actors;

each with RayExecutorV2 (0.32.0's default) and the legacy executor
(VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0), on Model Runner V1, and on V2 with
RayExecutorV2 (under the legacy executor the run gives DP=1's answers but
no worker logs which runner it built, so V2 is not asserted there). What must
hold: greedy fp32 answers identical to a DP=1 server's, the collective
ledger agreeing in every group, the runner and executor asked for being the
ones that ran, and nothing left afterwards (no process of the server or of
Ray, no Ray files outside the test's directory). The series without 0015
stops where released vLLM stops.

CI runs the refusal and one Ray DP case; the other cases carry the ``full``
marker (VLLM_EPDP_FULL=1).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.topologies.serve_checks import client, left_running, pids_of
from vllm_epdp import model_runners
from vllm_epdp.diagnostics import ledger
from vllm_epdp.harness import cpu_host, procs, ray_cluster, serving, tiny_models, topology_ray
from vllm_epdp.harness.ports import free_port
from vllm_epdp.patching.overlay import env_with
from vllm_epdp.patching.variants import overlay_without

pytestmark = [pytest.mark.e2e]
FULL = pytest.mark.full
# What each executor logs when it starts (vLLM 0.32.0).
EXECUTOR_LOG = {"v2": "RayWorkerProc", "legacy": "RayWorkerWrapper"}


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> Path:
    return tiny_models.build("qwen3-moe", tmp_path_factory.mktemp("ray") / "qwen3-moe")


@pytest.fixture(scope="module")
def dp1_reference(tiny_moe, vllm_patched, tmp_path_factory) -> Path:
    """The same requests answered by a DP=1 server (mp, one engine)."""
    work = tmp_path_factory.mktemp("dp1")
    ref = work / "ref.json"
    deployment = serving.Deployment(str(tiny_moe), dp=1, ep=False)
    with serving.serve(deployment, work, env=vllm_patched, ledger=False, deadline_s=1200) as server:
        verdict = client(server.url, work / "client.log", "--num-requests", "8", "--save", str(ref))
    assert verdict.startswith("VERDICT: PASS"), verdict
    return ref


def ray_files_outside() -> set[str]:
    """Ray's default temp dir: what a cluster that ignored --temp-dir, or a
    private Ray started by vLLM, would leave there."""
    default = Path(tempfile.gettempdir()) / "ray"
    return {p.name for p in default.iterdir()} if default.is_dir() else set()


@pytest.mark.timeout(600)
def test_without_the_patch_vllm_stops_at_the_ray_device(tiny_moe, tmp_path):
    """The series without 0015 is vLLM as released, for Ray: the Ray DP
    backend stops while placing the DP ranks, with vLLM's own error."""
    env = cpu_host.cpu_env(env_with(overlay_without("0015")), 2, hub_offline=True)
    deployment = serving.Deployment(str(tiny_moe), dp=2, topology="ray")
    argv = deployment.one_host_argv(free_port()) + topology_ray.backend_args(deployment)
    log = tmp_path / "server.log"
    with ray_cluster.cluster(tmp_path, env, num_cpus=topology_ray.NUM_CPUS) as ray:
        spec = procs.ProcSpec("server", argv, ray.client_env(env), log)
        outcome = procs.run_group("vllm serve, Ray DP, series without 0015", [spec], timeout_s=420)
        members = ray.members()
    assert not outcome.timed_out and not outcome.ok, outcome.describe()
    assert "No  found in Ray cluster." in log.read_text(errors="replace"), outcome.describe()
    assert not {pid for pid in members if (info := procs.read_proc(pid)) and info.state != "Z"}


def serve_and_check(deployment: serving.Deployment, env, reference: Path, workdir: Path) -> None:
    """Serve ``deployment``, 16 requests 8 at a time against the DP=1
    answers; then the checks every Ray case shares."""
    before = ray_files_outside()
    with serving.serve(deployment, workdir, env=env, deadline_s=1500) as server:
        pids = pids_of(server.groups)
        verdict = client(
            server.url, workdir / "client.log",
            "--num-requests", "16", "--concurrency", "8", "--reference", str(reference),
        )  # fmt: skip
        pids |= pids_of(server.groups)
        quiet = ledger.wait_quiet(server.ledger_dir)
        alive = server.alive()
        tail = server.log_tail(60)
    assert alive, "a process exited while serving:\n" + tail
    assert verdict.startswith("VERDICT: PASS 16/16 answers matched"), verdict + "\n" + tail

    text = server.logs[0].read_text(errors="replace")
    assert model_runners.runner_in_logs(server.logs[:1]) == deployment.runner.upper(), tail
    assert f"({EXECUTOR_LOG[deployment.ray_executor]} pid=" in text, tail  # workers are Ray actors
    if deployment.topology == "ray":
        assert "Creating placement groups for data parallel" in text
        assert text.count("(DPMoEEngineCoreActor pid=") > 0  # DP ranks are Ray actors

    assert quiet, "the engines' ledgers kept growing after the last request"
    writers = {int(p.stem) for p in server.ledger_dir.glob("*.jsonl")}
    assert len(writers) >= deployment.dp * deployment.tp, writers
    mismatches = ledger.compare(server.ledger_dir)
    assert mismatches == [], "\n".join(mismatches + ledger.summary(server.ledger_dir))

    assert not left_running(pids), left_running(pids)
    assert ray_files_outside() <= before  # Ray's files stayed in the test's directory


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("executor", "runner"),
    [
        ("v2", "v1"),
        pytest.param("legacy", "v1", marks=FULL),
        pytest.param("v2", "v2", marks=FULL),
        # Not ("legacy", "v2"): answers equal DP=1 (16/16 measured) but the
        # legacy executor's workers never show V2's log line, so which runner
        # ran is not established (open; see the report of patch 0015).
    ],
)
def test_ray_dp_backend_matches_dp1(executor, runner, tiny_moe, vllm_patched, dp1_reference, tmp_path):
    deployment = serving.Deployment(str(tiny_moe), dp=2, topology="ray", ray_executor=executor, runner=runner)
    serve_and_check(deployment, vllm_patched, dp1_reference, tmp_path)


@pytest.mark.full
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("executor", "runner"), [("v2", "v1"), ("legacy", "v1"), ("v2", "v2")])
def test_ray_executor_tp2_matches_dp1(executor, runner, tiny_moe, vllm_patched, dp1_reference, tmp_path):
    deployment = serving.Deployment(
        str(tiny_moe), dp=1, tp=2, topology="ray-executor", ray_executor=executor, runner=runner
    )
    serve_and_check(deployment, vllm_patched, dp1_reference, tmp_path)
