"""Upstream kits (vllm_epdp.upstream): each kit's test, in vLLM's layout, runs
from the installed release's own tests/ tree (its conftest.py, fixtures and
helpers) both ways: it must fail on the release's files and pass with the
series. One pytest process per direction runs every CPU kit. Also: every kit
names patches of the series, its tests pass vLLM's ruff, and the command
writes a kit that applies to the release."""

from __future__ import annotations

import subprocess

import pytest

from vllm_epdp.patching import patch_lint, releases
from vllm_epdp.cli import main
from vllm_epdp.patching.series import load_series, public_version, supported_versions
from vllm_epdp.patching.vllm_tree import detect_installed
from vllm_epdp.upstream import judge_results, testrun
from vllm_epdp.upstream.kits import load_kits

pytestmark = pytest.mark.timeout(900)
KITS = load_kits()


def installed_release() -> str:
    return str(public_version(detect_installed().version))


def runnable_here() -> list:
    """CPU kits whose patches the installed release's series holds."""
    names = {p.name for p in load_series(installed_release())}
    return [k for k in KITS if k.runs_here and set(k.patch_names) <= names]


@pytest.fixture(scope="module")
def runs(vllm_pristine, vllm_patched, tmp_path_factory):
    release = installed_release()
    root = releases.unpacked(release)
    kits = runnable_here()
    without = testrun.run_kits(kits, release, root, vllm_pristine, tmp_path_factory.mktemp("without"), "without")
    with_ = testrun.run_kits(kits, release, root, vllm_patched, tmp_path_factory.mktemp("with"), "with")
    return without, with_


@pytest.mark.parametrize("kit", runnable_here(), ids=lambda k: k.name)
def test_kit_fails_on_the_release_and_passes_with_the_series(runs, kit):
    without, with_ = runs
    verdict = judge_results(kit, without.of(kit), with_.of(kit))
    assert verdict is None, f"{verdict}\n--- without: {without.log}\n--- with: {with_.log}"


def test_every_kit_sends_patches_of_the_series():
    """Each kit serves every series holding its patch that it is written for
    (kit.toml `releases`, default all): there, the patches it carries are in
    the series too, before it."""
    assert KITS, "no kit found"
    for kit in KITS:
        releases_with = [
            v for v in supported_versions() if kit.patch in {p.name for p in load_series(v)} and kit.written_for(v)
        ]
        assert releases_with, f"{kit.name}: no series it is written for holds {kit.patch}"
        for release in releases_with:
            carried = kit.resolve(load_series(release))  # raises naming a patch the series lacks
            assert carried[-1].name == kit.patch, f"{kit.name}: its patch must come after the ones it carries"
            assert kit.test_functions(release), f"{kit.name}: no test_* function"


@pytest.mark.parametrize("release", sorted({supported_versions()[-1], installed_release()}))
def test_kit_tests_pass_vllm_ruff(release, tmp_path):
    """As vLLM's pre-commit would see them: ruff check and ruff format under
    the release's own settings, in the release's tree (ruff's isort tells
    first-party modules by what the tree holds), nothing added to a file a
    kit appends to."""
    root = releases.unpacked(release)
    tree = testrun.tests_tree(root, tmp_path)
    (tree / "vllm").symlink_to(root / "vllm", target_is_directory=True)
    files = sorted({test.path for kit in KITS for test in kit.tests})
    for kit in KITS:
        testrun.place(kit, release, root, tree)
    assert patch_lint.findings_added(tree, files, root) == []


def test_writes_a_kit_that_applies_to_the_release(tmp_path, capsys):
    """The newest series' kit of 0004, not run (CI runs the test above): a
    commit on the release's files, its format-patch applying to them, the PR
    description in the release's template, the issue text."""
    assert main(["upstream", "0004", "--out", str(tmp_path), "--no-run"]) == 0
    release = supported_versions()[-1]
    (patch,) = tmp_path.glob("0001-*.patch")
    repo = tmp_path / "vllm"
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "base.."], capture_output=True, text=True)
    assert log.stdout.splitlines() == [KITS_BY_PATCH["0004"].title]
    changed = subprocess.run(
        ["git", "-C", str(repo), "diff", "--name-only", "base"], capture_output=True, text=True
    ).stdout.split()
    assert "vllm/model_executor/layers/fused_moe/experts/cpu_moe.py" in changed
    assert "tests/kernels/moe/test_cpu_moe_expert_map.py" in changed
    assert ".buildkite/hardware_tests/cpu.yaml" in changed
    # The format-patch applies to the release's own files.
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "base"], check=True)
    check = subprocess.run(["git", "-C", str(repo), "apply", "--check", str(patch)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    pr = (tmp_path / "PR.md").read_text()
    template = (releases.unpacked(release) / ".github" / "PULL_REQUEST_TEMPLATE.md").read_text()
    for heading in [line for line in template.splitlines() if line.startswith("## ")]:
        assert heading in pr
    assert "expert_map" in pr.split("## Overview", 1)[1]
    assert "not run when this kit was written" in pr
    issue = (tmp_path / "ISSUE.md").read_text()
    assert issue.startswith("# [Bug]: ") and "### Your current environment" in issue
    assert "git am --signoff" in (tmp_path / "SEND.md").read_text()


def test_list_and_errors(tmp_path, capsys):
    assert main(["upstream", "--list"]) == 0
    listed = capsys.readouterr().out
    for kit in KITS:
        assert f"kit {kit.name}" in listed
    patches = load_series(supported_versions()[-1])
    carried = {name for k in KITS for name in k.carries}
    without_kit = [p for p in patches if p.name not in {k.patch for k in KITS} | carried]
    if without_kit:
        assert main(["upstream", without_kit[0].number, "--out", str(tmp_path / "x")]) == 2
        assert "has no kit yet" in capsys.readouterr().err
    # 0002 (a new module) has no kit of its own: it goes with 0003's and 0006's.
    assert "0002  carried by 0003-" in listed
    assert main(["upstream", "0002", "--out", str(tmp_path / "y")]) == 2
    assert "goes upstream inside the pull requests of the kits 0003-" in capsys.readouterr().err
    assert main(["upstream", "0004"]) == 2
    assert main(["upstream", "0004", "--out", str(tmp_path), "--release", "0.1.0"]) == 2
    assert "no series for vLLM 0.1.0" in capsys.readouterr().err


KITS_BY_PATCH = {k.patch[:4]: k for k in KITS}
