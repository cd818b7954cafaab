"""Patches 0009 (padding rows stay out of the XPU GDN kernel's view) and 0010
(padding rows of per-token output buffers are zero), checked at the custom
ops every DP rank runs; see padding_rows_worker.py for the setup."""

from pathlib import Path

import pytest

from vllm_epdp.harness.ranks import run_ranks

pytestmark = pytest.mark.timeout(300)
HERE = Path(__file__).parent


def _run(env, tmp_path) -> dict:
    run = run_ranks(HERE / "padding_rows_worker.py", 1, tmp_path, env=env, timeout_s=240)
    assert run.ok, run.describe()
    return run.results[0]


@pytest.fixture(scope="module")
def patched(series_env, tmp_path_factory):
    return _run(series_env, tmp_path_factory.mktemp("patched"))


def test_xpu_gdn_kernel_sees_only_real_rows(patched):
    gdn = patched["xpu_gdn"]
    assert gdn["error"] is None
    assert gdn["rows_seen"] == [5, 5, 5, 5]  # num_actual_tokens, not 12
    assert gdn["core"] == {"real_ones": True, "tail_zero": True, "tail_finite": True}


def test_without_patch_xpu_gdn_kernel_sees_padding_rows(series_without, tmp_path):
    gdn = _run(series_without("0009"), tmp_path)["xpu_gdn"]
    # The reported failure: the kernel gets all 12 rows for 5 actual tokens.
    assert gdn["rows_seen"] == [12, 12, 12, 12]
    assert "12 rows, num_actual_tokens=5" in gdn["error"]


def test_padding_rows_zeroed(patched):
    assert patched["attn_dummy"] == {"all_zero": True, "finite": True}
    assert patched["attn_padded"] == {"real_ones": True, "tail_zero": True, "tail_finite": True}
    assert patched["attn_unpadded_real_ones"] is True
    assert patched["xpu_gdn"]["z"] == {"real_ones": True, "tail_zero": True, "tail_finite": True}
    assert patched["xpu_gdn_dummy_z_zero"] is True
    assert patched["mamba_dummy_zero"] is True


def test_without_patch_padding_rows_are_garbage(series_without, tmp_path):
    # 0013 edits the lines 0010 adds to attention.py: both come out.
    r = _run(series_without("0010", "0013"), tmp_path)
    # The known failure: an idle rank's dummy step and the padding rows of a
    # padded step keep whatever torch.empty held (NaN here).
    assert r["attn_dummy"]["finite"] is False
    assert r["attn_padded"]["real_ones"] is True
    assert r["attn_padded"]["tail_finite"] is False
    assert r["xpu_gdn"]["z"]["tail_finite"] is False
    assert r["xpu_gdn_dummy_z_zero"] is False
    assert r["mamba_dummy_zero"] is False
