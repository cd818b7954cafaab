"""Idle DP ranks (issue 4, patch slot 0012): real offline DP runs (one process
per DP rank, vLLM's DPEngineCoreProc, gloo) of the tiny Qwen3-MoE, DP=2, with
the collective ledger on. EP is off: the DP-group bookkeeping under test does
not depend on it, and the runs need only the CPU collective patch.

What these pin down (see docs/idle_ranks.md):
* requests finishing at different steps, one rank idle for ~20 steps while
  its peer works: every member of every group posts the same collectives;
* the upstream proposal for #43547 (#44601, #51984, #53578: the runner joins
  the DP step on zero scheduled tokens for every backend) makes the idle rank
  post one DP collective more than its peer when its last request finishes,
  because DPEngineCoreProc already runs a dummy batch for that step;
* (not a test: timing-dependent) offline DP has no coordinator: a rank that
  submits new requests after every rank has gone idle steps alone and hangs
  in the DP collective; docs/idle_ranks.md, run 4.
"""

from pathlib import Path

import pytest

from tests.runner.dp_runs import run_schedule
from tests.runner.variants import env_with, overlay_with_edit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

NAIVE_GATE = (
    "vllm/v1/worker/gpu_model_runner.py",
    '''                if (
                    self.parallel_config.distributed_executor_backend
                    == "external_launcher"
                    and self.parallel_config.data_parallel_size > 1
                ):''',
    '''                if self.parallel_config.data_parallel_size > 1:''',
)
# rank 0: one wave, requests finishing after 4, 12 and 30 tokens; rank 1: one
# wave finishing after 3 and 9 tokens, then idle while rank 0 works.
UNEVEN = [[[4, 12, 30]], [[3, 9]]]


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    from vllm_epdp import tiny_models

    return tiny_models.build("qwen3-moe", tmp_path_factory.mktemp("tiny") / "qwen3-moe")


def _dp_counts(run) -> dict:
    return {k: v for k, v in run["counts"].items() if not k.startswith("unknown")}


def test_idle_rank_stays_in_step(series_env, moe_model, tmp_path):
    run = run_schedule(series_env, moe_model, tmp_path, UNEVEN, timeout_s=300)
    assert run["outcome"].ok, run["outcome"].describe()
    assert run["ledger_mismatches"] == []
    assert sorted(len(r["token_ids"]) for r in run["results"].values()) == [3, 4, 9, 12, 30]


@pytest.mark.experiment
def test_upstream_idle_join_proposal_double_joins(moe_model, tmp_path):
    env = env_with(overlay_with_edit("naive-idle-join", *NAIVE_GATE))
    run = run_schedule(env, moe_model, tmp_path, UNEVEN, timeout_s=240)
    # The known failure of that proposal under DPEngineCoreProc.
    assert run["ledger_mismatches"], "expected the ranks' DP collectives to diverge"
    assert not run["outcome"].ok

