"""The tool on versions without a series, --version forcing, and
`check --release X` (on a stand-in release in a cache of its own; the real
0.33.0 release is in tests/release)."""

from __future__ import annotations

import json
import shutil

import pytest
import tool_helpers as th

from vllm_epdp.patching import series
from vllm_epdp.patching.vllm_tree import model_runner

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "version, nearest",
    [
        ("0.31.0", "0.32.0"),  # older than every series: the oldest
        ("0.32.1", "0.32.0"),  # between: the newest not newer
        ("0.34.0", "0.33.0"),
        ("0.33.0rc1", "0.32.0"),
    ],
)
def test_nearest_series(patches_env, version, nearest):
    assert series.nearest_series(version) == nearest


def test_no_series_names_the_nearest_and_how_to_try_it(tmp_path, fake_patches):
    site = th.make_site(tmp_path, version="0.34.0")
    for cmd in (["status"], ["check"], ["apply"]):
        r = th.run_cli(cmd, site, fake_patches)
        th.assert_one_line_error(
            r,
            2,
            "no patch series for vLLM 0.34.0",
            "supported: 0.32.0, 0.33.0",
            "nearest: 0.33.0",
            "vllm-epdp check --release 0.34.0 --version 0.33.0",
        )


def test_forced_version_warns_and_reports_the_real_vllm(tmp_path, fake_patches):
    site = th.make_site(tmp_path, version="0.31.0", dist="vllm")
    r = th.run_cli(["status", "--version", "0.32.0"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "warning: --version 0.32.0: using the 0.32.0 series on vllm 0.31.0" in r.stderr
    assert "vLLM          vllm 0.31.0" in r.stdout
    assert "as vLLM 0.31.0 decides" in r.stdout  # 0.31.0's rule (unknown to us), not 0.32.0's
    assert "v0.32.0 (--version)" in r.stdout
    info = json.loads(th.run_cli(["status", "--json", "--version", "0.32.0"], site, fake_patches).stdout)
    assert info["vllm"]["version"] == "0.31.0"
    assert info["series"]["version"] == "0.32.0" and info["series"]["forced"] is True
    # The runner is the real version's: 0.33.0's series forced onto 0.32.0
    # reports 0.32.0's rule, word for word.
    r = th.run_cli(["status", "--version", "0.33.0"], th.make_site(tmp_path / "b", dist="vllm"), fake_patches)
    assert "vLLM          vllm 0.32.0" in r.stdout, r.stdout
    assert f"model runner  {model_runner('vllm', '0.32.0')}" in r.stdout, r.stdout
    # Naming the detected version is no forcing.
    r = th.run_cli(["status", "--version", "0.31.0+cpu"], site, fake_patches)
    assert "warning" not in r.stderr


def test_checkout_of_unknown_version_stays_unknown(tmp_path, fake_patches):
    checkout = tmp_path / "src"
    th.init_repo(checkout)
    (checkout / "vllm/_version.py").unlink()
    th.git(checkout, "tag", "-d", "v0.32.0")
    r = th.run_cli(["status", "--checkout", str(checkout), "--version", "0.32.0", "--json"], None, fake_patches)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vllm"]["version"] is None and info["vllm"]["model_runner"].startswith("unknown")
    assert info["series"]["version"] == "0.32.0"
    r = th.run_cli(["status", "--checkout", str(checkout)], None, fake_patches)
    th.assert_one_line_error(r, 2, "cannot tell which vLLM version", "--version")


def fake_release(cache, version="0.32.0"):
    """A stand-in for release `version`'s unpacked sdist in the cache layout
    of vllm_epdp.patching.releases (so check --release never goes to the network)."""
    root = cache / "releases" / f"vllm-{version}"
    th.write_files(root, th.BASE_FILES, version)
    (root / "pyproject.toml").write_text("[project]\nname = 'vllm'\n")
    return root


def release_states(r) -> dict[str, str]:
    return {p["number"]: p["state"] for p in json.loads(r.stdout)["patches"]}


def test_check_release_per_patch(tmp_path, fake_patches):
    cache = tmp_path / "cache"
    root = fake_release(cache)
    before = th.snapshot(root)
    check = lambda *a: th.run_cli(
        ["check", "--release", "0.32.0", *a],
        None,
        fake_patches,  # noqa: E731
        cwd=tmp_path,
        VLLM_EPDP_CACHE=cache,
    )
    r = check()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "series 0.32.0 (its own)" in r.stdout and "(3 applies)" in r.stdout

    # Upstream took 0003 (the same new files): already upstream, not a conflict.
    th.write_files(root, {"vllm/newpkg/__init__.py": "", "vllm/newpkg/c.py": "C = 'new'\n"})
    # ... and changed the line 0001's first hunk changes: 0001 conflicts,
    # 0002 (stacked on 0001 in vllm/a.py) cannot go on either and says why.
    a = root / "vllm/a.py"
    a.write_text(a.read_text().replace("VALUE = 1", "VALUE = 10"))
    before = th.snapshot(root)
    r = check("--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert release_states(r) == {"0001": "conflicts", "0002": "conflicts", "0003": "already upstream"}
    details = {p["number"]: p["details"] for p in json.loads(r.stdout)["patches"]}
    assert details["0001"] == ["vllm/a.py hunk #1 (@@ -1,4 +1,4 @@) does not apply"]
    assert any("builds on 0001, which did not apply" in d for d in details["0002"])
    r = check()
    assert r.stdout.rstrip().endswith("(1 already upstream, 2 conflicts)"), r.stdout
    assert th.snapshot(root) == before, "check --release must not write the release tree"


def test_check_release_without_its_own_series_takes_the_nearest(tmp_path, fake_patches):
    cache = tmp_path / "cache"
    fake_release(cache, "0.32.5")
    r = th.run_cli(["check", "--release", "0.32.5"], None, fake_patches, cwd=tmp_path, VLLM_EPDP_CACHE=cache)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "series 0.32.0 (the nearest; there is no 0.32.5 series)" in r.stdout
    r = th.run_cli(
        ["check", "--release", "0.32.5", "--checkout", str(tmp_path)],
        None,
        fake_patches,
        cwd=tmp_path,
        VLLM_EPDP_CACHE=cache,
    )
    th.assert_one_line_error(r, 2, "--release and --checkout")
    shutil.rmtree(cache)
