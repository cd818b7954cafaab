"""Patch 0008: under EP with DP > 1 every DP rank runs the same (padded)
token count each step, eager included, in both model runners' DP syncs."""

from pathlib import Path

import pytest

from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(400)
HERE = Path(__file__).parent

STEPS = [[37, 1], [1, 512], [5, 5]]


def _run(env, tmp_path):
    run = run_ranks(HERE / "dp_padding_worker.py", 2, tmp_path, env=env, timeout_s=300)
    assert run.ok, run.describe()
    return run.results


def padded(rank):
    return [[max(c), [max(c)] * 2] for c in STEPS]


def unpadded(rank):
    return [[c[rank], c] for c in STEPS]


def test_ep_dp_ranks_agree_on_padded_count(series_env, tmp_path):
    results = _run(series_env, tmp_path)
    for rank, r in enumerate(results):
        for runner in ("v1", "v2"):
            assert r[f"{runner}_ep"] == padded(rank), runner
            # Dense DP (no EP) keeps its unpadded eager behaviour.
            assert r[f"{runner}_no_ep"] == unpadded(rank), runner


def test_without_patch_ranks_run_uneven_counts(series_without, tmp_path):
    results = _run(series_without("0008"), tmp_path)
    for rank, r in enumerate(results):
        # The known failure, in both runners: eager EP+DP ranks disagree on
        # the row count.
        assert r["v1_ep"] == unpadded(rank)
        assert r["v2_ep"] == unpadded(rank)
