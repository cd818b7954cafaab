# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Model Runner V2 under torchrun: a DP rank with nothing scheduled still
joins the step's DP sync and forward.

With the external launcher there is no DP engine core to run a dummy batch
for an idle rank; the runner itself must, as V1's does. Otherwise the idle
rank's next collective (the engine's has-unfinished all-reduce on the same
group) meets its peers' DP sync, and the ranks part.

The runner is built without a model here: the steps before the zero-token
branch are no-ops, and what the branch runs is recorded.
"""

from types import SimpleNamespace

import pytest

from vllm.v1.worker.gpu.model_runner import GPUModelRunner

EMPTY_OUTPUT = object()


def _runner(monkeypatch, dp_size: int, backend: str) -> tuple[GPUModelRunner, list]:
    runner = object.__new__(GPUModelRunner)
    dummy_runs: list = []
    for step in (
        "update_pp_decode_requests",
        "finish_requests",
        "free_states",
        "add_requests",
        "update_requests",
    ):
        monkeypatch.setattr(runner, step, lambda *args: None, raising=False)
    runner.draft_tokens_handler = SimpleNamespace(begin_step=lambda _: None)
    runner.encoder_cache = None
    runner.block_tables = SimpleNamespace(apply_staged_writes=lambda: None)
    runner.aux_output_connector = None
    runner.kv_connector = SimpleNamespace(no_forward=lambda _: EMPTY_OUTPUT)
    monkeypatch.setattr(
        runner,
        "_merge_ec_connector_no_forward",
        lambda scheduler_output, output: output,
        raising=False,
    )
    runner.parallel_config = SimpleNamespace(
        data_parallel_size=dp_size, distributed_executor_backend=backend
    )
    runner.decode_query_len = 1
    monkeypatch.setattr(
        runner,
        "_dummy_run",
        lambda *args, **kwargs: dummy_runs.append((args, kwargs)),
        raising=False,
    )
    return runner, dummy_runs


def _zero_token_step() -> SimpleNamespace:
    return SimpleNamespace(
        total_num_scheduled_tokens=0,
        num_scheduled_tokens={},
        aux_output_connector_metadata=None,
    )


def test_torchrun_dp_zero_token_step_runs_dummy_batch(monkeypatch):
    runner, dummy_runs = _runner(monkeypatch, 2, "external_launcher")
    assert runner.execute_model(_zero_token_step()) is EMPTY_OUTPUT
    assert dummy_runs == [((1,), {"uniform_decode": True})]


@pytest.mark.parametrize(
    "dp_size,backend", [(2, "mp"), (1, "external_launcher")], ids=["engine_dp", "no_dp"]
)
def test_zero_token_step_skips_forward_otherwise(monkeypatch, dp_size, backend):
    """A DP engine core runs the dummy batch itself; without DP there is no
    peer to wait for."""
    runner, dummy_runs = _runner(monkeypatch, dp_size, backend)
    assert runner.execute_model(_zero_token_step()) is EMPTY_OUTPUT
    assert dummy_runs == []
