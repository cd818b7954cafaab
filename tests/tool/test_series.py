"""Series discovery and patch parsing (in-process, fast)."""

from __future__ import annotations

import pytest

from vllm_epdp.errors import EpdpError
from vllm_epdp.patching import series
from vllm_epdp.patching.series import FileChange, Hunk, Patch

pytestmark = pytest.mark.timeout(60)


def test_synthetic_series_parses(patches_env):
    assert series.supported_versions() == ["0.32.0", "0.33.0"]
    patches = series.load_series("0.32.0")
    assert [p.number for p in patches] == ["0001", "0002", "0003"]
    p1, p2, p3 = patches
    assert p1.subject == "Change VALUE and line 30"
    assert p1.headers["Root cause"] == "it is synthetic; this continuation line is part of the root cause."
    assert p1.tested_by == ["tests/tool/test_synthetic.py::test_round_trip"]
    assert p1.files == ("vllm/a.py",)
    assert [h.header for h in p1.changes[0].hunks] == ["@@ -1,4 +1,4 @@", "@@ -27,7 +27,7 @@"]
    assert p2.files == ("vllm/a.py", "vllm/sub/b.py")
    assert p3.created_files == ("vllm/newpkg/__init__.py", "vllm/newpkg/c.py")
    assert series.load_series("0.33.0") == []


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.32", "v0.32.0"])
def test_version_matching(patches_env, version):
    # local labels ("+cpu") are ignored; PEP 440 also allows "0.32" and a leading "v"
    assert series.series_dir(version).name == "v0.32.0"


@pytest.mark.parametrize("version", ["0.32.1", "0.32.0rc1", "0.32.0.dev3"])
def test_other_versions_are_unsupported(patches_env, version):
    with pytest.raises(EpdpError, match=r"supported: 0\.32\.0, 0\.33\.0"):
        series.series_dir(version)


def test_select(patches_env):
    patches = series.load_series("0.32.0")
    pick = lambda *names: [p.number for p in series.select(patches, list(names))]  # noqa: E731
    assert pick() == ["0001", "0002", "0003"]
    assert pick("3", "0001") == ["0001", "0003"]  # series order, whatever the command line order
    assert pick("0002-Change-line-32-and-b") == ["0002"]
    assert pick(str(patches[0].path)) == ["0001"]
    with pytest.raises(EpdpError, match="matches no patch"):
        series.select(patches, ["0004"])


def test_hunk_lookup_uses_new_lines_when_reverting():
    hunk = Hunk(2, 897, 898, "@@ -897,7 +898,7 @@")
    patch = Patch(
        "0001-x.patch", None, "x", {}, (FileChange("vllm/x.py", hunks=(Hunk(1, 8, 8, "@@ -8,7 +8,7 @@"), hunk)),)
    )
    assert patch.find_hunk("vllm/x.py", 897) is hunk
    assert patch.find_hunk("vllm/x.py", 898, reverse=True) is hunk
    assert patch.find_hunk("vllm/x.py", 898) is None
    assert hunk.describe("vllm/x.py") == "vllm/x.py hunk #2 (@@ -897,7 +898,7 @@)"


def test_repository_series_is_well_formed(monkeypatch):
    """The project's own series, every version: every patch parses, has all
    header fields, and names test node ids that exist as files."""
    monkeypatch.delenv("VLLM_EPDP_PATCHES", raising=False)
    assert {"0.32.0", "0.33.0", "0.34.0"} <= set(series.supported_versions())
    root = series.patches_root().parent
    for version in series.supported_versions():
        for patch in series.load_series(version):
            assert patch.tested_by, patch.name
            for node in patch.tested_by:
                assert (root / node.split("::")[0]).is_file(), f"{version} {patch.name}: Tested by {node}: no such file"


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_tested_by_names_existing_tests(monkeypatch, version):
    """The 0.33.0 and 0.34.0 headers name test functions, not only files: each
    exists (a parametrized one as name[id]: the release it runs on)."""
    monkeypatch.delenv("VLLM_EPDP_PATCHES", raising=False)
    root = series.patches_root().parent
    for patch in series.load_series(version):
        for node in patch.tested_by:
            path, _, name = node.partition("::")
            name, _, param = name.partition("[")
            if name:
                assert f"def {name}(" in (root / path).read_text(), f"{patch.name}: no test {node}"
            if param:
                assert param == f"{version}]", f"{patch.name}: {node} runs on another release"
