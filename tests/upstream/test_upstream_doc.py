"""docs/upstream.md says, for every patch of the series, whether a kit exists
and points to the header for where upstream stands: it must list every patch,
name no patch that does not exist, say `vllm-epdp upstream NNNN` exactly where
a kit exists, and repeat no issue or pull request number on an Upstream line
(the header's fields are the one place for them)."""

from __future__ import annotations

import re

from vllm_epdp.patching.series import load_series, supported_versions
from vllm_epdp.upstream.kits import kit_for, load_kits

SECTION = re.compile(r"^## (\d{4}) (.+)$", re.M)


def sections(repo_root) -> dict[str, str]:
    text = (repo_root / "docs" / "upstream.md").read_text()
    found = list(SECTION.finditer(text))
    out = {}
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        assert m.group(1) not in out, f"patch {m.group(1)} has two sections"
        out[m.group(1)] = text[m.start() : end]
    return out


def all_patches() -> dict[str, object]:
    """number -> patch, over every series (the newest one's wins)."""
    out = {}
    for version in supported_versions():
        for patch in load_series(version):
            out[patch.number] = patch
    return out


def test_every_patch_and_no_other(repo_root):
    listed, patches = sections(repo_root), all_patches()
    assert sorted(set(patches) - set(listed)) == [], "patches without a section in docs/upstream.md"
    assert sorted(set(listed) - set(patches)) == [], "sections for patches no series holds"


def test_each_section_has_upstream_kit_objection_answer(repo_root):
    for number, body in sections(repo_root).items():
        for field in ("- Upstream:", "- Kit:", "- Likely objection:", "- Our answer:"):
            assert field in body, f"{number}: no '{field}' line"


def test_kit_lines_match_the_kits(repo_root):
    kits = load_kits()
    patches = all_patches()
    for number, body in sections(repo_root).items():
        kit = kit_for(patches[number], kits)
        command = f"`vllm-epdp upstream {number}`"
        if kit is not None:
            assert command in body, f"{number} has kit {kit.name}: say {command}"
            for test in kit.tests:
                assert test.path in body, f"{number}: name the kit's test {test.path}"
        else:
            assert command not in body, f"{number} has no kit: its Kit line must not offer one"


UPSTREAM_LINE = re.compile(r"^- Upstream:(.*?)(?=^- |\Z)", re.M | re.S)


def test_upstream_lines_leave_numbers_to_the_headers(repo_root):
    for number, body in sections(repo_root).items():
        (line,) = UPSTREAM_LINE.findall(body)
        assert not re.search(r"#\d+", line), f"{number}: the Upstream line names {line.strip()!r}; say it in the header"
