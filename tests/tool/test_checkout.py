"""`--checkout DIR`: a vLLM source tree (a synthetic git checkout here; the real
one is in test_real_vllm.py)."""

from __future__ import annotations

import shutil

import pytest
import tool_helpers as th

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "vllm-checkout"
    th.init_repo(root)
    return root


def test_check_apply_revert_on_a_checkout(checkout, fake_patches):
    r = th.run_cli(["check", "--checkout", str(checkout)], None, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "0001 Change VALUE and line 30: applies" in r.stdout and "the series applies" in r.stdout
    r = th.run_cli(["apply", "--checkout", str(checkout)], None, fake_patches)
    assert r.returncode == 0, r.stderr
    assert th.git(checkout, "status", "--porcelain").split() == [
        "M",
        "vllm/a.py",
        "M",
        "vllm/sub/b.py",
        "??",
        "vllm/newpkg/",
    ]
    r = th.run_cli(["status", "--checkout", str(checkout)], None, fake_patches)
    assert r.returncode == 0, r.stderr
    assert "source tree 0.32.0" in r.stdout and "applied  0003" in r.stdout
    r = th.run_cli(["check", "--checkout", str(checkout)], None, fake_patches)
    assert r.returncode == 0 and "already applied" in r.stdout
    r = th.run_cli(["revert", "--checkout", str(checkout)], None, fake_patches)
    assert r.returncode == 0, r.stderr
    assert th.git(checkout, "status", "--porcelain", "--ignored") == ""


def test_checkout_with_conflicting_change(checkout, fake_patches):
    a = checkout / "vllm/a.py"
    a.write_text(a.read_text().replace("VALUE = 1", "VALUE = 10"))
    r = th.run_cli(["check", "--checkout", str(checkout)], None, fake_patches)
    assert r.returncode == 1
    assert "vllm/a.py hunk #1 (@@ -1,4 +1,4 @@) does not apply" in r.stdout


def test_version_from_git_tag(checkout, fake_patches):
    (checkout / "vllm/_version.py").unlink()
    th.git(checkout, "commit", "-qam", "no generated version file")
    r = th.run_cli(["status", "--checkout", str(checkout)], None, fake_patches)
    th.assert_one_line_error(r, 2, "cannot tell which vLLM version", "v0.32.0-1-g", "--version")
    r = th.run_cli(["status", "--checkout", str(checkout), "--version", "0.32.0"], None, fake_patches)
    assert r.returncode == 0, r.stderr
    th.git(checkout, "tag", "-f", "v0.32.0")
    r = th.run_cli(["status", "--checkout", str(checkout)], None, fake_patches)
    assert r.returncode == 0 and "source tree 0.32.0" in r.stdout


def test_not_a_checkout(tmp_path, fake_patches):
    r = th.run_cli(["check", "--checkout", str(tmp_path)], None, fake_patches)
    th.assert_one_line_error(r, 2, "is not a vLLM checkout", "vllm/__init__.py")
    r = th.run_cli(["check", "--checkout", str(tmp_path / "nope")], None, fake_patches)
    th.assert_one_line_error(r, 2, "no such directory")


def test_trees_inside_another_git_repository(tmp_path, fake_patches):
    """A venv inside a project's git work tree (like .venv here), and a source
    tree copied into one: git must not treat the patch paths as outside."""
    outer = tmp_path / "project"
    outer.mkdir()
    th.git(outer, "init", "-q")
    site = th.make_site(outer / "venv")
    before = th.snapshot(site)
    assert th.run_cli(["apply"], site, fake_patches, cwd=outer).returncode == 0
    assert "VALUE = 2" in (site / "vllm/a.py").read_text()
    assert th.run_cli(["revert"], site, fake_patches, cwd=outer).returncode == 0
    assert th.snapshot(site) == before
    tree = outer / "src"
    shutil.copytree(site, tree, ignore=shutil.ignore_patterns("*.dist-info"))
    r = th.run_cli(["apply", "--checkout", str(tree)], None, fake_patches, cwd=outer)
    assert r.returncode == 0, r.stderr
    assert "VALUE = 2" in (tree / "vllm/a.py").read_text()
