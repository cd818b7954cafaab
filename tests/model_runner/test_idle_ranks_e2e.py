"""Idle DP ranks and DP waves (issue 4, patch 0012): real offline DP runs (one
process per DP rank, vLLM's DPEngineCoreProc, gloo) of the tiny Qwen3-MoE,
DP=2+EP, with the collective ledger on.

What these pin down (see docs/idle_ranks.md):
* requests finishing at different steps, one rank idle for ~20 steps while
  its peer works, then rounds of 1-token requests (7 on one rank, 1 on the
  other): every member of every group posts the same collectives;
* without 0012 the first such round hangs: rank 0's batch is split across
  two waves (the wave ends at its first step, before the rest of the batch
  arrived) and rank 0 steps alone in the DP all-reduce. Both tests run with
  a slow front-end (a pause after each request sent) so that the batch
  always arrives over several steps; with the front-end at full speed the
  split happened in 3 of 3 runs on a quiet machine but not in one CI run;
* the upstream proposal for #43547 (#44601, #51984, #53578: the runner joins
  the DP step on zero scheduled tokens for every backend) makes the idle rank
  post one DP collective more than its peer when its last request finishes,
  because DPEngineCoreProc already runs a dummy batch for that step;
* (not a test: timing-dependent) offline DP has no coordinator: a rank that
  submits new requests after every rank has gone idle steps alone and hangs
  in the DP collective; docs/idle_ranks.md, run 4.
"""

import pytest

from tests.model_runner.dp_runs import run_schedule
from tests.model_runner.edits import NAIVE_IDLE_JOIN
from vllm_epdp.patching.overlay import env_with
from vllm_epdp.patching.variants import overlay_with_edit, overlay_without

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# rank 0: one wave, requests finishing after 4, 12 and 30 tokens; rank 1: one
# wave finishing after 3 and 9 tokens, then idle while rank 0 works.
UNEVEN = [[[4, 12, 30]], [[3, 9]]]
# A round of 1-token requests, 7 on rank 0 and 1 on rank 1 (every rank calls
# generate() once per round), after a 16-token round.
ONE_TOKEN_ROUND = [[1] * 7, [1]]
SPLIT_BATCH = [[[16], ONE_TOKEN_ROUND[0]], [[16], ONE_TOKEN_ROUND[1]]]
# Each front-end waits this long after sending a request (slow prompt
# preparation), so a batch reaches its engine over several steps: the split
# no longer depends on the machine's load. Far longer than a tiny model's step.
FRONTEND_GAP_S = 0.5


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    from vllm_epdp.harness import tiny_models

    return tiny_models.build("qwen3-moe", tmp_path_factory.mktemp("tiny") / "qwen3-moe")


def _dp_counts(run) -> dict:
    return {k: v for k, v in run["counts"].items() if not k.startswith("unknown")}


# Where each runner's worker waits in the DP step's all-reduce.
DP_SYNC = {"v1": "coordinate_batch_across_dp", "v2": "sync_cudagraph_and_dp_padding"}


# 0012 with idle ranks runs in CI on both runners through verify's quick plan
# (offline DP=2 + EP, uneven waves) and the offline fuzz seeds; this run with
# the ledger's step checks is the full tier.
@pytest.mark.full
@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_idle_rank_and_split_batches_stay_in_step(series_env, moe_model, tmp_path, runner):
    schedule = [UNEVEN[r] + [ONE_TOKEN_ROUND[r]] * 3 for r in range(2)]
    run = run_schedule(
        series_env, moe_model, tmp_path, schedule, ep=True, timeout_s=300, frontend_gap_s=FRONTEND_GAP_S,
        runner=runner, nan_watch=True,
    )  # fmt: skip
    assert run["outcome"].ok, run["outcome"].describe()
    assert run["runners"] == [runner.upper()]
    assert run["ledger_mismatches"] == []
    assert sorted(len(r["token_ids"]) for r in run["results"].values()) == [1] * 24 + [3, 4, 9, 12, 30]
    # The plugin put the ledger's vLLM layer in every worker: the MoE
    # collectives are GroupCoordinator entries, and the steps are marked
    # (a rank idle while its peer works runs the engine's dummy batches).
    assert ("vllm", "dispatch") in run["ledger_ops"] or ("vllm", "dispatch_router_logits") in run["ledger_ops"]
    workers = [kinds for kinds in run["ledger_steps"] if "execute_model" in kinds]
    assert len(workers) == 2, run["ledger_steps"]
    assert any(kinds.get("execute_dummy_batch") for kinds in workers), run["ledger_steps"]


@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_without_0012_split_batch_hangs(moe_model, tmp_path, runner):
    """The known failure: the 1-token round never finishes on rank 0."""
    env = env_with(overlay_without("0012"))
    run = run_schedule(
        env, moe_model, tmp_path, SPLIT_BATCH, ep=True, timeout_s=300, stall_s=30, frontend_gap_s=FRONTEND_GAP_S,
        runner=runner,
    )  # fmt: skip
    outcome = run["outcome"]
    assert not outcome.ok and outcome.timed_out, outcome.describe()
    assert run["ledger_mismatches"], "expected rank 0 one DP collective ahead"
    assert DP_SYNC[runner] in outcome.stacks  # rank 0's worker, in its runner's DP sync
    assert "_process_input_queue" in outcome.stacks  # rank 1's engine, idle


@pytest.mark.experiment
def test_upstream_idle_join_proposal_double_joins(moe_model, tmp_path):
    env = env_with(overlay_with_edit("naive-idle-join", *NAIVE_IDLE_JOIN))
    run = run_schedule(env, moe_model, tmp_path, UNEVEN, timeout_s=240)
    # The known failure of that proposal under DPEngineCoreProc.
    assert run["ledger_mismatches"], "expected the ranks' DP collectives to diverge"
    assert not run["outcome"].ok
