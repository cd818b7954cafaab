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


VLLM = "https://github.com/vllm-project/vllm"
# A patch that creates one file: enough for parse_patch's diff and git checks.
NEW_FILE_DIFF = """---
diff --git a/vllm/x.py b/vllm/x.py
new file mode 100644
index 0000000..1337d5e
--- /dev/null
+++ b/vllm/x.py
@@ -0,0 +1 @@
+X = 1
"""


def write_patch(tmp_path, upstream: str = "not reported", fields: str = "Forwarded: no\n"):
    """A one-file patch whose header has the required fields, the Upstream:
    prose ``upstream`` and the upstream field lines ``fields``."""
    path = tmp_path / "0001-Add-x.patch"
    path.write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: t <t@t>\nSubject: [PATCH] Add x\n\n"
        "Symptom: s\nRoot cause: r\nFix: f\nTested by: tests/tool/test_series.py\n"
        f"Upstream: {upstream}\n{fields}Removal plan: none\n" + NEW_FILE_DIFF
    )
    return path


def test_upstream_fields_of_the_synthetic_series(patches_env):
    p1, p2, p3 = series.load_series("0.32.0")
    assert (p1.forwarded, p1.bugs, p1.applied_upstream, p1.related) == ("no", (), None, ())
    assert p2.forwarded == f"{VLLM}/pull/103"
    assert p2.bugs == (f"{VLLM}/issues/101", f"{VLLM}/issues/102")  # Bug: repeats, one URL each
    assert p2.related == (f"{VLLM}/pull/99",)
    assert (p3.forwarded, p3.applied_upstream) == ("not-needed", "0.33.0")
    assert p2.state_json("applied", [])["upstream"] == {
        "forwarded": f"{VLLM}/pull/103",
        "bugs": [f"{VLLM}/issues/101", f"{VLLM}/issues/102"],
        "applied_upstream": None,
        "related": [f"{VLLM}/pull/99"],
    }
    assert [p.upstream_short for p in (p1, p2, p3)] == [
        "forwarded: no",
        "forwarded: #103; bug #101, #102",
        "applied: 0.33.0",
    ]


def test_header_without_forwarded_is_refused(tmp_path):
    path = write_patch(tmp_path, fields="")
    with pytest.raises(
        EpdpError, match=r"malformed patch .*0001-Add-x\.patch: Forwarded: missing; add 'Forwarded: no'"
    ):
        series.parse_patch(path)


@pytest.mark.parametrize(
    "upstream, fields, needle",
    [
        (
            "not reported",
            "Forwarded: yes\n",
            "Forwarded: 'yes' is not no, not-needed or a vLLM issue or pull request URL",
        ),
        ("not reported", "Forwarded: no\nForwarded: no\n", "Forwarded: given 2 times"),
        ("not reported", "Forwarded:\n", "Forwarded: empty"),
        ("not reported", f"Forwarded: {VLLM}/commit/abc\n", "Forwarded: '"),
        ("not reported", "Forwarded: no\nBug: #123\n", "Bug: '#123' is not a vLLM issue or pull request URL"),
        (
            "not reported",
            f"Forwarded: no\nBug: {VLLM}/issues/1, {VLLM}/issues/2\n",
            "one URL per Bug: line; repeat the field for more",
        ),
        (
            "not reported",
            "Forwarded: no\nApplied-Upstream: soon\n",
            "Applied-Upstream: 'soon' is neither a vLLM version",
        ),
        (
            "#57837 (open)",
            "Forwarded: no\n",
            "the prose names #57837, which no Forwarded, Bug, Applied-Upstream or Related",
        ),
        ("not reported (came with vllm#31525)", "Forwarded: no\n", "the prose names #31525"),
    ],
)
def test_bad_upstream_field_is_named(tmp_path, upstream, fields, needle):
    with pytest.raises(EpdpError) as err:
        series.parse_patch(write_patch(tmp_path, upstream, fields))
    message = str(err.value)
    assert "0001-Add-x.patch" in message and needle in message and "\n" not in message


def test_prose_numbers_carried_by_fields_are_accepted(tmp_path):
    fields = (
        f"Forwarded: {VLLM}/pull/3\nBug: {VLLM}/issues/1\nRelated: {VLLM}/pull/2\nApplied-Upstream: {VLLM}/pull/4\n"
    )
    patch = series.parse_patch(
        write_patch(tmp_path, "#1 fixed by vllm#3, see #2; merged as #4 (not intel/llm-scaler#178)", fields)
    )
    assert patch.bugs == (f"{VLLM}/issues/1",) and patch.applied_upstream == f"{VLLM}/pull/4"


def test_repository_series_agree_on_upstream_fields(monkeypatch):
    """A patch is one fix in every series that holds it (docs/design.md): its
    upstream fields must not differ from one series to the next."""
    monkeypatch.delenv("VLLM_EPDP_PATCHES", raising=False)
    seen: dict[str, tuple[str, dict]] = {}
    for version in series.supported_versions():
        for patch in series.load_series(version):
            first = seen.setdefault(patch.number, (version, patch.upstream_json()))
            assert patch.upstream_json() == first[1], (
                f"{patch.name}: upstream fields differ in {first[0]} and {version}"
            )
