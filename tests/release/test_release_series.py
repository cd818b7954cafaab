"""Each release's series on that release's own files (0.33.0, 0.34.0), with
the real tool and real `git apply`: as a pip install (site-packages with a
dist-info whose RECORD hashes the release's files) and as a git checkout
tagged vX. Applies, leaves files that byte-compile, reverts byte for byte;
status names the model runner the release has (0.34.0: V2 only, read off its
files, without the removed VLLM_USE_V2_MODEL_RUNNER). And the maintainer's
`check --release` on the same files, every failing hunk named."""

from __future__ import annotations

import json
import py_compile
import shutil

import pytest
import tool_helpers as th
from release_trees import make_site

from vllm_epdp import model_runners
from vllm_epdp.errors import EpdpError
from vllm_epdp.patching import releases
from vllm_epdp.patching.series import load_series

pytestmark = pytest.mark.timeout(300)


def changed_files(version: str) -> list[str]:
    return sorted({f for p in load_series(version) for f in p.files})


def assert_compiles(root, tmp_path, version) -> None:
    """Every file the series changes compiles (bytecode written aside, so
    the tree keeps no trace of it)."""
    for rel in changed_files(version):
        if rel.endswith(".py"):
            py_compile.compile(str(root / rel), cfile=str(tmp_path / "c.pyc"), doraise=True)


def states(r) -> dict[str, str]:
    return {p["number"]: p["state"] for p in json.loads(r.stdout)["patches"]}


def test_series_applies_and_reverts_on_site_packages(version, release_root, tmp_path):
    site = make_site(release_root, tmp_path, version)
    before = th.snapshot(site)
    n = len(load_series(version))

    r = th.run_cli(["status", "--json"], site, None)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vllm"]["version"] == version and info["series"]["version"] == version
    assert set(states(r).values()) == {"not applied"} and len(states(r)) == n
    # The runner-level patches protect runners this release has, and no other.
    protects = {p["number"]: p["model_runners"] for p in info["patches"] if p["model_runners"] is not None}
    has = ["V2"] if version == "0.34.0" else ["V1", "V2"]
    assert protects == {"0008": has, "0013": has}
    assert info["model_runner_warnings"] == []

    r = th.run_cli(["apply"], site, None)
    assert r.returncode == 0, r.stderr
    assert f"apply done: {n} patch(es) applied" in r.stderr
    assert set(states(th.run_cli(["status", "--json"], site, None)).values()) == {"applied"}
    assert_compiles(site, tmp_path, version)

    r = th.run_cli(["revert"], site, None)  # checks every file against RECORD
    assert r.returncode == 0, r.stderr
    assert th.snapshot(site) == before


def test_series_applies_and_reverts_on_a_checkout(version, release_root, tmp_path):
    checkout = tmp_path / "vllm-src"
    shutil.copytree(release_root / "vllm", checkout / "vllm")  # modes as upstream's git has them
    th.git(checkout, "init", "-q")
    th.git(checkout, "add", "-A")
    th.git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"vllm {version}")
    th.git(checkout, "tag", f"v{version}")

    r = th.run_cli(["check", "--checkout", str(checkout)], None, None)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("the series applies"), r.stdout
    assert th.run_cli(["apply", "--checkout", str(checkout)], None, None).returncode == 0
    r = th.run_cli(["status", "--checkout", str(checkout), "--json"], None, None)
    assert set(states(r).values()) == {"applied"}, r.stdout
    assert json.loads(r.stdout)["vllm"]["version"] == version
    assert_compiles(checkout, tmp_path, version)
    changed = th.git(checkout, "status", "--porcelain").splitlines()
    assert sorted(line[3:] for line in changed) == changed_files(version), changed
    assert th.run_cli(["revert", "--checkout", str(checkout)], None, None).returncode == 0
    assert th.git(checkout, "status", "--porcelain", "--ignored") == ""


def test_check_release_with_its_own_series(version, release_root):
    r = th.run_cli(["check", "--release", version, "--json"], None, None)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["series"] == version and report["series_chosen"] == "its own"
    assert set(states(r).values()) == {"applies"} and len(states(r)) == len(load_series(version))


def test_runner_named_from_the_files(version, release_root, tmp_path):
    """The runner report on the release's own files, no engine and no
    import of vLLM where the files answer: 0.34.0 has V2 alone, and the
    tool neither sets VLLM_USE_V2_MODEL_RUNNER for it (0.34.0 raises on 0
    and warns on 1) nor lets a run ask for V1; 0.33.0 keeps both and the
    variable. status of a checkout states the runner too."""
    package = release_root / "vllm"
    env = {"PYTHONPATH": str(release_root)}
    if version == "0.34.0":
        assert model_runners.present(package) == ("V2",) and model_runners.available(env) == ["v2"]
        assert model_runners.predict(env) == model_runners.Choice("V2", model_runners.NO_V1_WHY)
        assert "VLLM_USE_V2_MODEL_RUNNER" not in model_runners.runner_env("v2", env)
        with pytest.raises(EpdpError, match="Model Runner V1 is not in this vLLM"):
            model_runners.runner_env("v1", env)
    else:
        assert model_runners.present(package) == ("V1", "V2") and model_runners.available(env) == ["v1", "v2"]
        assert model_runners.runner_env("v1", env)["VLLM_USE_V2_MODEL_RUNNER"] == "0"
        assert model_runners.runner_env("v2", env)["VLLM_USE_V2_MODEL_RUNNER"] == "1"
    checkout = tmp_path / "src"
    shutil.copytree(package, checkout / "vllm")
    r = th.run_cli(["status", "--checkout", str(checkout), "--version", version, "--json"], None, None)
    stated = json.loads(r.stdout)["vllm"]["model_runner"]
    assert stated.startswith("V2, the only one") == (version == "0.34.0"), stated


def test_check_release_names_what_0_32_0_series_lacks():
    """The day 0.33.0 appeared: the 0.32.0 series on its files."""
    releases.unpacked("0.33.0")
    r = th.run_cli(["check", "--release", "0.33.0", "--version", "0.32.0"], None, None)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "warning: --version 0.32.0" in r.stderr
    assert "0011 Turn async scheduling off by default under expert + data parallelism on XPU: CONFLICTS" in r.stdout
    assert "    vllm/config/vllm.py hunk #3 (@@ -1631,6 +1656,16 @@) does not apply" in r.stdout
    assert "    vllm/v1/engine/core.py hunk #3 (@@ -2233,6 +2247,8 @@) does not apply" in r.stdout
    # The totals agree with the per-patch lines (which other patches conflict
    # follows the 0.32.0 series as it changes: 0001's import edits, say).
    conflicts = r.stdout.count(": CONFLICTS")
    applies = r.stdout.count(": applies")
    assert conflicts >= 2 and applies + conflicts == len(load_series("0.32.0")), r.stdout
    assert r.stdout.rstrip().endswith(f"({applies} applies, {conflicts} conflicts)"), r.stdout


def test_check_release_names_every_failing_hunk():
    """The day 0.34.0 appeared: the 0.33.0 series on its files. A patch with
    several hunks that no longer fit has each of them named, not only the
    first one git stops at (0008: the imports and a docstring paragraph
    upstream removed; 0013: both of its hunks, behind 0010)."""
    releases.unpacked("0.34.0")
    r = th.run_cli(["check", "--release", "0.34.0", "--version", "0.33.0"], None, None)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert (
        "0008 Pad every DP rank to the same token count when expert parallelism is on: CONFLICTS\n"
        "    vllm/v1/worker/gpu/dp_utils.py hunk #1 (@@ -9,7 +9,10 @@) does not apply\n"
        "    vllm/v1/worker/gpu/dp_utils.py hunk #3 (@@ -59,8 +63,9 @@) does not apply\n"
    ) in out
    assert (
        "    vllm/model_executor/layers/attention/attention.py hunk #1 (@@ -18,6 +18,9 @@) does not apply\n"
        "    vllm/model_executor/layers/attention/attention.py hunk #2 (@@ -801,6 +804,9 @@) does not apply\n"
        "    builds on 0010, which did not apply: this may clear once that one is fixed\n"
    ) in out
    # 0014 conflicts behind 0011 (same file), 0015 and 0016 apply as they are.
    assert "0014 CPU: honour an explicit --async-scheduling: CONFLICTS\n" in out
    assert out.rstrip().endswith("(10 applies, 6 conflicts)"), out
