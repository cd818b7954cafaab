"""Every bad-input path of the CLI: one line `vllm-epdp: ...`, exit 2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tool_helpers as th

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def own_patches(fake_patches, tmp_path):
    """A copy of the synthetic series that a test may break."""
    dest = tmp_path / "own-patches"
    shutil.copytree(fake_patches, dest)
    return dest


def first_patch(patches: Path) -> Path:
    return sorted((patches / "v0.32.0").glob("0001-*.patch"))[0]


@pytest.mark.parametrize(
    "breakage, needle",
    [
        ("garbage", "no 'Subject:' mail header"),
        ("no-diff", "it contains no diff"),
        ("no-header-fields", "header lacks Root cause, Removal plan"),
        ("no-forwarded", "Forwarded: missing"),
        ("corrupt-hunk", "corrupt patch"),
        ("outside-vllm", "outside vllm/"),
    ],
)
def test_malformed_patch_is_named(site, own_patches, breakage, needle):
    path = first_patch(own_patches)
    text = path.read_text()
    if breakage == "garbage":
        path.write_text("this is not a patch at all\n")
    elif breakage == "no-diff":
        path.write_text(text.split("diff --git")[0])
    elif breakage == "no-header-fields":
        dropped = ("Root cause:", "Removal plan:", "  this")
        text = "\n".join(line for line in text.splitlines() if not line.startswith(dropped))
        path.write_text(text + "\n")
    elif breakage == "no-forwarded":
        path.write_text("".join(line for line in text.splitlines(True) if not line.startswith("Forwarded:")))
    elif breakage == "corrupt-hunk":
        path.write_text(text.replace("+VALUE = 2\n", "+VALUE = 2\n+extra line the counts do not allow\n"))
    elif breakage == "outside-vllm":
        path.write_text(text.replace("a/vllm/a.py", "a/setup.py").replace("b/vllm/a.py", "b/setup.py"))
    for cmd in (["status"], ["apply"]) if breakage == "garbage" else (["apply"],):
        r = th.run_cli(cmd, site, own_patches)
        message = th.assert_one_line_error(r, 2, "malformed patch", str(path), needle)
        assert r.stderr.strip().splitlines()[-1] == message


def test_non_utf8_patch(site, own_patches):
    path = first_patch(own_patches)
    path.write_bytes(b"\xff\xfe garbage\n")
    th.assert_one_line_error(th.run_cli(["status"], site, own_patches), 2, "not UTF-8", path.name)


def test_series_names_missing_file(site, own_patches):
    first_patch(own_patches).unlink()
    r = th.run_cli(["status"], site, own_patches)
    th.assert_one_line_error(r, 2, "does not exist", "fix the series file")


def test_unsupported_version_lists_supported(tmp_path, fake_patches):
    site = th.make_site(tmp_path, version="0.31.0")
    for cmd in (["status"], ["revert"]):
        r = th.run_cli(cmd, site, fake_patches)
        th.assert_one_line_error(r, 2, "no patch series for vLLM 0.31.0", "supported: 0.32.0, 0.33.0")


def test_local_version_label_is_ignored(tmp_path, fake_patches):
    site = th.make_site(tmp_path, version="0.32.0+cpu", dist="vllm")
    r = th.run_cli(["status"], site, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "vLLM          vllm 0.32.0+cpu" in r.stdout
    assert "V2 where Triton has an active driver" in r.stdout
    assert "not applied  0001" in r.stdout


def test_bad_version_option(site, fake_patches):
    r = th.run_cli(["status", "--version", "banana"], site, fake_patches)
    th.assert_one_line_error(r, 2, "'banana' is not a version number")


def test_patches_env_not_a_directory(site, tmp_path):
    r = th.run_cli(["status"], site, tmp_path / "nope")
    th.assert_one_line_error(r, 2, "VLLM_EPDP_PATCHES=", "is not a directory")


def test_vllm_not_installed(tmp_path, fake_patches):
    """A Python that cannot import vllm: -S drops site-packages; only our package
    and its one dependency (packaging) are on the path."""
    deps = tmp_path / "deps"
    deps.mkdir()
    import packaging

    os.symlink(Path(packaging.__file__).parent, deps / "packaging")
    env = th.cli_env(None, fake_patches)
    env["PYTHONPATH"] = os.pathsep.join([str(th.REPO_ROOT), str(deps)])
    for cmd in (["status"], ["apply"]):
        r = subprocess.run(
            [sys.executable, "-S", "-m", "vllm_epdp.cli", *cmd],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        th.assert_one_line_error(r, 2, "vLLM is not installed for", "--checkout DIR")


def test_package_without_dist_info(tmp_path, fake_patches):
    site = th.make_site(tmp_path)
    for info in site.glob("*.dist-info"):
        shutil.rmtree(info)
    r = th.run_cli(["status"], site, fake_patches)
    th.assert_one_line_error(r, 2, "was not installed from a wheel", f"--checkout {site}")


def test_usage_errors_exit_2(site, fake_patches):
    r = th.run_cli([], site, fake_patches)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "usage:" in r.stderr
    r = th.run_cli(["frobnicate"], site, fake_patches)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_help_documents_commands_and_exit_codes(site, fake_patches):
    r = th.run_cli(["--help"], site, fake_patches)
    assert r.returncode == 0
    for word in ("status", "check", "apply", "revert", "verify", "exit codes", "--checkout"):
        assert word in r.stdout or word in th.run_cli(["apply", "--help"], site, fake_patches).stdout


def test_status_works_without_verify_module(site, fake_patches, tmp_path):
    """`status` must not build the verify subcommand; `verify` says it is missing."""
    shadow = tmp_path / "shadow"
    pkg = shadow / "vllm_epdp"
    shutil.copytree(th.REPO_ROOT / "vllm_epdp", pkg, ignore=shutil.ignore_patterns("verify", "__pycache__"))
    env = th.cli_env(site, fake_patches)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(shadow)])
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "vllm_epdp.cli", *a], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run("status").returncode == 0
    th.assert_one_line_error(run("verify"), 2, "verify is not available")


def test_read_only_site_packages(tmp_path_factory, fake_patches):
    """As a user who may not write the tree (root may write anything, so the
    tool runs as `nobody`; without setpriv, or as non-root, chmod does it)."""
    base = Path(tempfile.mkdtemp(prefix="vllm-epdp-ro-"))  # /tmp/pytest-of-root is 0700
    try:
        series = base / "patches"
        shutil.copytree(fake_patches, series)
        site = th.make_site(base)
        before = th.snapshot(site)
        for p in [base, *base.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("needs setpriv to drop root")
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        else:
            prefix = []
            for p in site.rglob("*"):
                os.chmod(p, 0o555 if p.is_dir() else 0o444)
        r = th.run_cli(["status"], site, series, prefix=prefix, cwd=base)
        assert r.returncode == 0, r.stderr  # reading is fine
        for cmd in (["apply"], ["apply", "0003"]):
            r = th.run_cli(cmd, site, series, prefix=prefix, cwd=base)
            th.assert_one_line_error(r, 2, "cannot write", "read-only for this user", "--checkout DIR")
        assert th.snapshot(site) == before
        # revert needs the same rights
        assert th.run_cli(["apply"], site, series, cwd=base).returncode == 0
        r = th.run_cli(["revert"], site, series, prefix=prefix, cwd=base)
        th.assert_one_line_error(r, 2, "cannot write")
    finally:
        for p in [base, *base.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base)


def test_unforeseen_os_error_is_one_line(site, fake_patches):
    """A file system refusal no up-front check foresaw (here: a file where the
    journal directory must go) is still one line, exit 2, and changes nothing."""
    before = th.snapshot(site)
    (site / ".vllm-epdp-journal.new").write_text("in the way")
    r = th.run_cli(["apply"], site, fake_patches)
    th.assert_one_line_error(r, 2, ".vllm-epdp-journal.new", "run the command again")
    (site / ".vllm-epdp-journal.new").unlink()
    assert th.snapshot(site) == before
