"""Run kit tests as vLLM's own CI would, against a vLLM chosen by PYTHONPATH.

The tests run from a copy of the release's ``tests/`` tree (its conftest.py
files, fixtures and helpers are the ones a maintainer's CI loads) with the
release's ``pyproject.toml`` beside it (pytest markers), the kit files placed
at their paths in it. The copy is hard links (2,400 files, no data copied);
a file a kit appends to is written anew, never through a link. The tree holds
no ``vllm/``: vLLM is imported from the overlay put first on PYTHONPATH
(vllm_epdp.patching.overlay / variants), with its compiled kernels.

One pytest process runs any number of kits (vLLM's tests/conftest.py imports
vLLM, transformers and PIL: ~13 s of CPU per process); the outcome of every
test comes back from pytest's JUnit XML.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from vllm_epdp.harness import procs
from vllm_epdp.errors import EpdpError
from vllm_epdp.upstream.kits import Kit


@dataclass(frozen=True)
class TestResult:
    node: str  # "tests/distributed/test_x.py::test_y[param]"
    kit: str
    outcome: str  # "passed", "failed", "error", "skipped"
    seconds: float
    message: str = ""  # first line of the failure or skip reason


@dataclass
class Run:
    """One pytest process over some kits' tests."""

    label: str
    argv: list[str]
    results: list[TestResult] = field(default_factory=list)
    wall_s: float = 0.0
    returncode: int | None = None
    log: Path | None = None

    def of(self, kit: Kit) -> list[TestResult]:
        return [r for r in self.results if r.kit == kit.name]

    def counts(self, kit: Kit) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.of(kit):
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out


def place(kit: Kit, release: str, release_root: Path, tree: Path) -> list[str]:
    """Write the kit's test files into ``tree`` (a copy of the release's tree,
    or the kit's git repository; kits placed before stay): return the pytest
    node ids of the kit's tests (a new file, or file::function appended)."""
    nodes = []
    for test in kit.tests:
        ours = kit.source(test, release).read_text(encoding="utf-8")
        dest = tree / test.path
        if test.mode == "new":
            if (release_root / test.path).exists():
                raise EpdpError(f"kit {kit.name}: vLLM {release} has {test.path} already: make the kit append to it")
            if dest.exists():
                raise EpdpError(f"kit {kit.name}: another kit writes {test.path} too: append to it instead")
            text = ours
            nodes.append(test.path)
        else:
            if not dest.is_file():
                raise EpdpError(f"kit {kit.name}: vLLM {release} has no {test.path} to append to")
            # The tree's file: vLLM's, or vLLM's with another kit's functions.
            text = join_appended(dest.read_text(encoding="utf-8"), ours)
            nodes += [f"{test.path}::{name}" for name in kit.test_functions(release) if _in_file(ours, name)]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()  # a hard link into the release cache: never write through
        dest.write_text(text, encoding="utf-8")
    return nodes


def join_appended(upstream: str, ours: str) -> str:
    """vLLM's file with our functions after it, two blank lines between (as
    ruff format wants top-level definitions)."""
    return upstream.rstrip("\n") + "\n\n\n" + ours.lstrip("\n")


def _in_file(text: str, name: str) -> bool:
    return f"def {name}(" in text


def tests_tree(release_root: Path, dest: Path) -> Path:
    """A hard-linked copy of the release's tests/ and pyproject.toml at dest."""

    def link(src: str, dst: str) -> str:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)
        return dst

    shutil.copytree(release_root / "tests", dest / "tests", copy_function=link)
    shutil.copy2(release_root / "pyproject.toml", dest / "pyproject.toml")
    return dest


def run_kits(
    kits: list[Kit],
    release: str,
    release_root: Path,
    env: dict,
    workdir: Path,
    label: str,
    timeout_s: float = 900.0,
) -> Run:
    """Run every test of ``kits`` in one pytest process under ``env`` (whose
    PYTHONPATH selects the vLLM); the outcome of each test, nothing asserted."""
    tree = tests_tree(release_root, workdir / "tree")
    owner: dict[str, str] = {}  # a new file, or file::function appended -> kit
    nodes: list[str] = []
    for kit in kits:
        for node in place(kit, release, release_root, tree):
            owner[node] = kit.name
            nodes.append(node)
    junit = workdir / "junit.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
        *nodes,
    ]
    log = workdir / "pytest.log"
    run_env = dict(env, PYTHONDONTWRITEBYTECODE="1")
    outcome = procs.run_group(
        f"kit tests ({label})", [procs.ProcSpec("pytest", argv, run_env, log, str(tree))], timeout_s
    )
    run = Run(label, argv, wall_s=outcome.wall_s, returncode=outcome.returncodes.get("pytest"), log=log)
    if outcome.timed_out or not junit.is_file():
        raise EpdpError(f"kit tests ({label}) did not finish: {outcome.describe(log_lines=40)}")
    run.results = parse_junit(junit, owner)
    return run


def parse_junit(path: Path, owner: dict[str, str]) -> list[TestResult]:
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        node = f"{file}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = _first_line(child.get("message") or child.text or "", child.text or "")
                break
        kit = owner.get(node.split("[")[0]) or owner.get(file, "")
        results.append(TestResult(node, kit, outcome, float(case.get("time") or 0.0), message))
    return results


def _first_line(text: str, report: str = "") -> str:
    """The line that says what failed: pytest's message, or, where that only
    wraps a worker's exception (torch.multiprocessing's ProcessRaisedException),
    the worker's own last exception line, from the message or, where pytest
    cut the message short, from the full report (its lines marked "E")."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") or "ProcessRaisedException" in lines[0]:
        detail = lines[1:] + [re.sub(r"^E\s+", "", line.strip()) for line in report.splitlines()]
        raised = [line for line in detail if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
        if raised:
            return raised[-1][:300]
    return lines[0][:300]
