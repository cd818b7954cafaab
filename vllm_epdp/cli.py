"""``vllm-epdp``: see which EP+DP fixes a vLLM has, apply them, take them out.

Errors the user can act on are EpdpError: one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from vllm_epdp import __version__
from vllm_epdp.errors import EpdpError

if TYPE_CHECKING:
    from vllm_epdp.model_runners import Choice
    from vllm_epdp.patching import PatchStatus
    from vllm_epdp.patching.series import Patch
    from vllm_epdp.patching.vllm_tree import VllmTree

EXIT_CODES = """\
exit codes:
  0    done / the series applies
  1    a check failed: a patch conflicts, or a revert would not restore the wheel's files
  2    usage or environment error (vLLM not found, unsupported version, read-only
       site-packages, malformed patch, ...)
  130  interrupted (SIGINT; 143 for SIGTERM): every change was rolled back
"""

DESCRIPTION = """\
A maintained patch series for vLLM that makes Expert Parallelism + Data
Parallelism correct, and the tool to apply it. By default it works on the vLLM
that this Python imports (site-packages of the current environment); with
--checkout DIR on a vLLM source tree instead. Patches are applied with `git apply`;
apply and revert are all or nothing."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-epdp",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"vllm-epdp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_patch_commands(sub)
    _add_run_commands(sub, argv)
    return parser


def _patch_command(sub: argparse._SubParsersAction, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A command that works on a vLLM tree: --checkout and --version on each."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkout",
        metavar="DIR",
        help="patch the vLLM source tree in DIR (a git checkout) instead of the installed vLLM",
    )
    p.add_argument(
        "--version",
        dest="vllm_version",
        metavar="VERSION",
        help="use the series of this vLLM version (default: the detected version's; "
        "needed for a checkout whose version cannot be read from vllm/_version.py "
        "or a git tag). Forcing another version's series prints a warning; what "
        "is reported about the vLLM (its version, its model runner) stays what "
        "was detected",
    )
    return p


def _add_patch_commands(sub: argparse._SubParsersAction) -> None:
    """status, check, apply, revert: the series on a vLLM tree."""
    p = _patch_command(
        sub,
        "status",
        "show the detected vLLM and the state of every patch",
        "Show the detected vLLM (distribution, version, location, model runner) and, for every "
        "patch of its series: applied / not applied / conflicts (with the file and hunk) / "
        "outdated (an older revision of the patch, recorded when it was applied, is on "
        "disk: revert, then apply). Changes nothing. Exit 1 if a patch conflicts or is "
        "outdated.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p = _patch_command(
        sub,
        "check",
        "dry run: does the series apply?",
        "Dry run of `apply`: try every selected patch on top of the earlier ones, change "
        "nothing. Exit 0 if the series applies (or is applied already), 1 if a patch conflicts.\n\n"
        "With --release X: try the series on release X's own Python files instead (its sdist "
        "from PyPI, ~45 MB, downloaded once into the cache of vllm_epdp.patching.releases), and say "
        "for every patch: applies / already upstream / conflicts (file and hunk). The series "
        "is X's own if there is one, else the nearest (or --version's). Exit 0 only if every "
        "patch applies. What a maintainer runs the day a release appears.",
    )
    p.add_argument("patches", nargs="*", metavar="PATCH", help="patch number (0003) or file name; default: all")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--release", metavar="X", help="check release X's files (from its sdist) instead of a vLLM here")
    p = _patch_command(
        sub,
        "apply",
        "apply the series (or the named patches), all or nothing",
        "Apply the named patches (default: the whole series) in series order. Every patch is "
        "checked first; a failure or an interruption rolls every file back. Patches that are "
        "already applied are skipped, so running it twice changes nothing.",
    )
    p.add_argument("patches", nargs="*", metavar="PATCH", help="patch number (0003) or file name; default: all")
    p = _patch_command(
        sub,
        "revert",
        "take the series (or the named patches) out again",
        "Revert the named applied patches (default: all), last first. On an installed vLLM "
        "every file they touched must afterwards hash as recorded in the wheel's RECORD "
        "(checked before and after). All or nothing, like apply. A patch applied in an "
        "older revision (a later vllm-epdp changed it) is taken off in the revision "
        "recorded when it was applied.",
    )
    p.add_argument("patches", nargs="*", metavar="PATCH", help="patch number (0003) or file name; default: all")


def _add_run_commands(sub: argparse._SubParsersAction, argv: list[str]) -> None:
    """ledger, verify, fuzz, upstream: the commands that run or read vLLM runs
    (verify's and fuzz's options are built only when that command is asked for:
    they import more)."""
    ledger = sub.add_parser(
        "ledger",
        help="compare the collective ledgers of a run (VLLM_EPDP_LEDGER=DIR)",
        description="Run vLLM with VLLM_EPDP_LEDGER=DIR (vllm-epdp installed: its vLLM plugin records "
        "every collective per rank and group: vLLM's GroupCoordinator calls, whatever the backend, "
        "torch.distributed calls that bypass it, CUDA/XPU graph replays, and the model runner's "
        "steps; VLLM_EPDP_LEDGER_STALL_S=N adds a watchdog that dumps every thread's stack when a "
        "collective or step hangs for N seconds), then `vllm-epdp ledger compare DIR`: exit 0 if "
        "all members of every group posted the same sequence, 1 with the first differing entry of "
        "each member and its step if not (or a stall dump, an unreadable line, no entry at all). "
        "`summary DIR` counts per group, `stalls DIR` prints the stall dumps' stacks.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ledger.add_argument("ledger_args", nargs=argparse.REMAINDER, metavar="compare|summary|stalls DIR")

    verify = sub.add_parser(
        "verify",
        help="run DP x EP targets and compare them with a single-rank reference",
        description="Compare DP/TP/EP runs against a DP=1 reference.",
    )
    if _first_positional(argv) == "verify":
        _verify_module().add_arguments(verify)

    fuzz = sub.add_parser(
        "fuzz",
        help="random request schedules against a DP x EP server, judged against DP=1",
        description="Draw request schedules (bursts, pauses that end DP waves, 1-token and long prompts, "
        "n=2, streaming, client aborts, KV pressure) with Hypothesis, run each against a DP x EP "
        "server kept up between schedules, and judge it: every answer equal to a DP=1 server's, no "
        "NaN, no hang, the collective ledger agreeing. A failure is shrunk to a small schedule and "
        "saved; --replay runs it again.",
        epilog="exit codes: 0 every schedule passed, 1 a schedule failed, 2 usage or environment error",
    )
    if _first_positional(argv) == "fuzz":
        from vllm_epdp import fuzz as fuzz_module

        fuzz_module.add_arguments(fuzz)

    from vllm_epdp import upstream

    upstream_cmd = sub.add_parser(
        "upstream",
        help="write one patch as a pull request kit for vLLM (commit, test, description, issue)",
        description=upstream.DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upstream.add_arguments(upstream_cmd)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command == "verify":
            return int(_verify_module().run(args) or 0)
        if args.command == "fuzz":
            from vllm_epdp import fuzz as fuzz_module

            return fuzz_module.run(args)
        if args.command == "upstream":
            from vllm_epdp import upstream

            return upstream.run(args)
        if args.command == "ledger":
            from vllm_epdp.diagnostics import ledger

            return ledger.main(args.ledger_args)
        return COMMANDS[args.command](args)
    except EpdpError as e:
        print(f"vllm-epdp: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vllm-epdp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `vllm-epdp status | head`: the reader left; not an error worth a line.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # The file system said no where our own checks did not foresee it
        # (disk full, permissions that os.access cannot see, ...).
        where = f" ({e.filename})" if e.filename else ""
        print(f"vllm-epdp: {e.strerror or e}{where}: fix that and run the command again", file=sys.stderr)
        return 2


def _first_positional(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _verify_module() -> ModuleType:
    try:
        import vllm_epdp.verify as verify
    except ModuleNotFoundError as e:
        if e.name in ("vllm_epdp.verify",):
            raise EpdpError("verify is not available in this build of vllm-epdp (no vllm_epdp.verify module)") from None
        raise
    if not (hasattr(verify, "add_arguments") and hasattr(verify, "run")):
        raise EpdpError("verify is not available in this build of vllm-epdp (vllm_epdp.verify lacks add_arguments/run)")
    return verify


# ---------------------------------------------------------------------- commands


def _target_and_series(args: argparse.Namespace) -> tuple[VllmTree, Path, list[Patch]]:
    from vllm_epdp.patching.series import load_series, series_dir
    from vllm_epdp.patching.vllm_tree import detect_checkout, detect_installed

    if args.checkout:
        target = detect_checkout(args.checkout)
    else:
        target = detect_installed()
    version = args.vllm_version or target.require_version()
    _warn_if_forced(args.vllm_version, target.version, target.describe())
    return target, series_dir(version), load_series(version)


def _warn_if_forced(forced: str | None, detected: str | None, what: str) -> None:
    """Forcing another release's series is allowed (the way to try a series
    on a release that has none), but said aloud: it was not written for
    these files. The target's own version is reported as detected."""
    from vllm_epdp.patching.series import public_version

    if forced is not None and detected is not None and public_version(forced) != public_version(detected):
        print(
            f"vllm-epdp: warning: --version {forced}: using the {public_version(forced)} series on "
            f"{what}, which it was not written for; the version and model runner reported are "
            "the detected ones",
            file=sys.stderr,
        )


def cmd_status(args: argparse.Namespace) -> int:
    from vllm_epdp import model_runners, patching

    target, directory, patches = _target_and_series(args)
    states = patching.status(target, patches)
    pending = patching.journal_pending(target.root)
    picked, runner_warnings = _runner_check(target, patches)
    runner_warnings += model_runners.absent_runners(patches, target.package_dir)
    if args.json:
        print(
            json.dumps(
                {
                    "vllm": {
                        "kind": target.kind,
                        "distribution": target.distribution,
                        "version": target.version,  # as detected, whatever --version says
                        "location": str(target.package_dir),
                        "root": str(target.root),
                        "model_runner": target.model_runner,
                        # What this vLLM picks for a plain configuration, asked of it (None: could not ask).
                        "model_runner_picked": picked and {"runner": picked.runner, "why": picked.why},
                    },
                    "model_runner_warnings": runner_warnings,
                    "series": {
                        "dir": str(directory),
                        "version": directory.name[1:],
                        "forced": bool(args.vllm_version),
                        "patches": len(patches),
                    },
                    "interrupted_run_journal": pending,
                    "patches": [
                        {**s.to_json(), "model_runners": _protects(s.patch, target.package_dir)} for s in states
                    ],
                },
                indent=2,
            )
        )
    else:
        print(f"vLLM          {target.distribution or 'source tree'} {target.version or 'unknown'}")
        print(f"location      {target.package_dir}")
        print(f"model runner  {target.model_runner}")
        if picked is not None:
            print(f"              this vLLM picks {picked.runner}: {picked.why}")
        for warning in runner_warnings:
            print(f"WARNING       {warning}")
        forced = " (--version)" if args.vllm_version else ""
        print(f"series        {directory}{forced} ({len(patches)} patch{'es' if len(patches) != 1 else ''})")
        if pending:
            print("WARNING       an interrupted run left a journal; `vllm-epdp apply` or `revert` rolls it back first")
        print()
        _print_table(states, lambda p: _protects(p, target.package_dir))
    return 1 if any(s.state in _BLOCKED for s in states) else 0


def _protects(patch: Patch, package_dir: Path | None) -> list[str] | None:
    """The model runners a runner-level patch protects in this vLLM (those of
    its header that the vLLM has), None for a patch both runners share."""
    from vllm_epdp import model_runners

    covered = model_runners.protected(patch, package_dir)
    return None if covered is None else list(covered)


def _runner_check(target: VllmTree, patches: list[Patch]) -> tuple[Choice | None, list[str]]:
    """(the runner the installed vLLM picks or None, warnings for runner-level
    patches that do not cover it). Asks vLLM itself, so only for the vLLM this
    Python imports; a checkout or an unimportable vLLM gets no answer."""
    from vllm_epdp import model_runners

    if target.kind != "installed":
        return None, []
    try:
        picked = model_runners.predict()
    except EpdpError:
        return None, []
    return picked, model_runners.uncovered(patches, picked)


# States that keep `apply` from running (exit 1 for status and check).
_BLOCKED = ("conflicts", "outdated")


def _print_table(
    states: Sequence[PatchStatus], protects: Callable[[Patch], list[str] | None] = lambda patch: None
) -> None:
    if not states:
        print("(the series has no patches)")
        return
    width = max(len(s.state) for s in states)
    for s in states:
        covered = protects(s.patch)
        runner = "" if covered is None else f"  [model runner: {'/'.join(covered) or 'none here'}]"
        upstream = f"  [{s.patch.upstream_short}]" if s.patch.forwarded else ""
        print(f"  {s.state:<{width}}  {s.patch.number}  {s.patch.subject}{runner}{upstream}")
        for d in s.details:
            print(f"  {'':<{width}}        {d}")


def cmd_check(args: argparse.Namespace) -> int:
    from vllm_epdp import patching

    if args.release:
        return _check_release(args)
    target, _, patches = _target_and_series(args)
    states = patching.check(target, patches, args.patches)
    ok = not any(s.state in _BLOCKED for s in states)
    if args.json:
        print(json.dumps({"ok": ok, "patches": [s.to_json() for s in states]}, indent=2))
    else:
        words = {
            patching.APPLIED: "already applied",
            patching.NOT_APPLIED: "applies",
            patching.CONFLICTS: "CONFLICTS",
            patching.OUTDATED: "OUTDATED (an older revision is applied)",
        }
        for s in states:
            print(f"{s.patch.number} {s.patch.subject}: {words[s.state]}")
            for d in s.details:
                print(f"    {d}")
        print(f"{target.describe()}: " + ("the series applies" if ok else "the series does NOT apply"))
    return 0 if ok else 1


def _check_release(args: argparse.Namespace) -> int:
    """check --release X: the series on release X's own files (see release_check)."""
    from vllm_epdp.patching import release_check, releases
    from vllm_epdp.patching.series import has_series, load_series, nearest_series, public_version, select

    if args.checkout:
        raise EpdpError("--release and --checkout name two different trees: pass one of them")
    release = str(public_version(args.release))
    if args.vllm_version:
        version, why = args.vllm_version, "--version"
        _warn_if_forced(version, release, f"vLLM {release}")
    elif has_series(release):
        version, why = release, "its own"
    else:
        version, why = nearest_series(release), f"the nearest; there is no {release} series"
        if version is None:
            raise EpdpError("no patch series at all in this vllm-epdp: reinstall it")
    patches = select(load_series(version), args.patches)
    root = releases.unpacked(release)
    states = release_check.judge(root, patches)
    ok = all(s.state == release_check.APPLIES for s in states)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "release": release,
                    "files": str(root / "vllm"),
                    "series": str(public_version(version)),
                    "series_chosen": why,
                    "patches": [s.to_json() for s in states],
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    print(f"vLLM {release} release files ({root / 'vllm'}), series {public_version(version)} ({why})")
    for s in states:
        print(f"{s.patch.number} {s.patch.subject}: {s.state.upper() if s.state != 'applies' else s.state}")
        for d in s.details:
            print(f"    {d}")
    counts = {
        state: sum(s.state == state for s in states)
        for state in (release_check.APPLIES, release_check.UPSTREAM, release_check.CONFLICTS)
    }
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    verdict = "the series applies" if ok else "the series does NOT apply as it is"
    print(f"vLLM {release}: {verdict} ({summary})")
    return 0 if ok else 1


def cmd_apply(args: argparse.Namespace) -> int:
    from vllm_epdp import patching

    target, _, patches = _target_and_series(args)
    print(f"vllm-epdp: {target.describe()}", file=sys.stderr)
    patching.apply(target, patches, args.patches)
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    from vllm_epdp import patching

    target, _, patches = _target_and_series(args)
    print(f"vllm-epdp: {target.describe()}", file=sys.stderr)
    patching.revert(target, patches, args.patches)
    return 0


COMMANDS = {"status": cmd_status, "check": cmd_check, "apply": cmd_apply, "revert": cmd_revert}


if __name__ == "__main__":
    sys.exit(main())
