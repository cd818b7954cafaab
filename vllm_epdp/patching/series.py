"""Find patch series, parse them, and pick patches out of them.

Layout: ``<patches root>/v<version>/series`` lists patch files in apply order
(quilt style: one file name per line, ``#`` starts a comment). Each patch is
``git format-patch`` output whose commit message carries the header fields in
``HEADER_FIELDS`` at the start of a line; continuation lines are indented.

Upstream state, next to the ``Upstream:`` prose, in fields after Debian's DEP-3
(one value per line; ``Bug:`` and ``Related:`` may repeat, one URL each, as DEP-3's
``Bug:`` does; URLs name vLLM's issues or pull requests,
``https://github.com/vllm-project/vllm/issues/N`` or ``.../pull/N``):

  Forwarded:         required: ``no`` (not proposed yet), ``not-needed`` (never
                     proposed on its own: it serves our CPU testing or rides in
                     another patch's kit), or the URL where it was proposed
  Bug:               optional, repeatable: an upstream issue the patch fixes
  Applied-Upstream:  optional: the vLLM version or URL that has the fix
  Related:           optional, repeatable: an upstream thread the prose cites
                     that the patch neither fixes nor was proposed in

Every ``#N`` (or ``vllm#N``) in the ``Upstream:`` prose must be one of those URLs,
so a query of the fields sees every thread the header names.

The patches root is, in this order: ``$VLLM_EPDP_PATCHES``; ``vllm_epdp/_patches``
(a wheel, where hatch force-includes the repository's ``patches/``); the
repository's ``patches/`` (a source checkout or an editable install).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from vllm_epdp.errors import EpdpError

HEADER_FIELDS = ("Symptom", "Root cause", "Fix", "Tested by", "Upstream", "Removal plan")
# Optional: "Model runners: V1, V2" on a patch that changes model-runner code,
# naming the runners it covers (status warns when vLLM runs another one).
OPTIONAL_FIELDS = ("Model runners", "Rebased")
MODEL_RUNNERS = ("V1", "V2")
# The upstream state as data (module docstring): Forwarded is required.
UPSTREAM_FIELDS = ("Forwarded", "Bug", "Applied-Upstream", "Related")
REPEATABLE_FIELDS = ("Bug", "Related")
FORWARDED_WORDS = ("no", "not-needed")

_FIELD_RE = re.compile(
    r"^({}):\s*(.*)$".format("|".join(re.escape(f) for f in HEADER_FIELDS + OPTIONAL_FIELDS + UPSTREAM_FIELDS))
)
_UPSTREAM_URL_RE = re.compile(r"^https://github\.com/vllm-project/vllm/(?:issues|pull)/(\d+)$")
# "#57837" or "vllm#31525", not "intel/llm-scaler#178" (another project's thread).
_PROSE_NUMBER_RE = re.compile(r"(?:(?<![\w/.-])vllm|(?<![\w/.-]))#(\d+)\b")
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NUMBER_RE = re.compile(r"^(\d+)-")
_NODE_ID_RE = re.compile(r"(?<![\w/])(tests/[\w/.-]+\.py(?:::[\w\[\].-]+)*)")


@dataclass(frozen=True)
class Hunk:
    index: int  # 1-based position within its file, as a reader counts them
    old_start: int  # first line of the hunk in the file before the patch
    new_start: int  # ... and after it
    header: str  # "@@ -120,7 +120,8 @@", without the trailing function context

    def describe(self, path: str) -> str:
        return f"{path} hunk #{self.index} ({self.header})"


@dataclass(frozen=True)
class FileChange:
    path: str  # relative to the target root, e.g. "vllm/entrypoints/cli/main.py"
    created: bool = False
    deleted: bool = False
    hunks: tuple[Hunk, ...] = ()


@dataclass(frozen=True)
class Patch:
    name: str  # file name, e.g. "0001-Report-vLLM-s-own-version....patch"
    path: Path
    subject: str
    headers: dict[str, str] = field(hash=False, compare=False)
    changes: tuple[FileChange, ...] = ()
    sha256: str = ""  # of the whole file: the revision apply records
    diff_sha256: str = ""  # of the diff alone (from the first "diff --git"): what a tree can hold of it
    # The upstream fields (module docstring), checked by parse_patch.
    forwarded: str = ""  # "no", "not-needed" or the URL where it was proposed
    bugs: tuple[str, ...] = ()  # upstream issues it fixes (URLs)
    applied_upstream: str | None = None  # the vLLM version or URL that has it
    related: tuple[str, ...] = ()  # other upstream threads its prose cites (URLs)

    @property
    def number(self) -> str:
        """The number prefix ("0001"), or the whole name when there is none."""
        m = _NUMBER_RE.match(self.name)
        return m.group(1) if m else self.name

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes)

    def state_json(self, state: str, details: list[str]) -> dict:
        """A patch and what was found about it, as status and check --json print it."""
        return {
            "number": self.number,
            "name": self.name,
            "subject": self.subject,
            "state": state,
            "details": details,
            "files": list(self.files),
            "upstream": self.upstream_json(),
        }

    def upstream_json(self) -> dict:
        """The upstream fields of the header (the ``Upstream:`` prose stays in the file)."""
        return {
            "forwarded": self.forwarded,
            "bugs": list(self.bugs),
            "applied_upstream": self.applied_upstream,
            "related": list(self.related),
        }

    @property
    def upstream_short(self) -> str:
        """The upstream fields in a few words, for status's table:
        "forwarded: no; bug #57837", "applied: 0.35.0"."""
        if self.applied_upstream:
            return f"applied: {_short_ref(self.applied_upstream)}"
        parts = [f"forwarded: {_short_ref(self.forwarded)}"]
        if self.bugs:
            parts.append("bug " + ", ".join(_short_ref(b) for b in self.bugs))
        return "; ".join(parts)

    @property
    def created_files(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes if c.created)

    @property
    def model_runners(self) -> tuple[str, ...] | None:
        """The model runners a runner-level patch covers (its ``Model runners:``
        field), or None for a patch whose code both runners share."""
        field_text = self.headers.get("Model runners")
        if not field_text:
            return None
        return tuple(r for r in MODEL_RUNNERS if re.search(rf"\b{r}\b", field_text))

    @property
    def tested_by(self) -> list[str]:
        """Test node ids (tests/...py[::name]) named in the ``Tested by:`` header;
        prose around them (e.g. "(gloo, 2 and 4 ranks)") is skipped."""
        return _NODE_ID_RE.findall(self.headers.get("Tested by", ""))

    def find_hunk(self, path: str, old_line: int, reverse: bool = False) -> Hunk | None:
        """The hunk of ``path`` that git reports as failing at ``old_line``.

        git names the line in the file it tried to patch: the pre-image start
        when applying, the post-image start when reverting.
        """
        for change in self.changes:
            if change.path != path:
                continue
            for hunk in change.hunks:
                if (hunk.new_start if reverse else hunk.old_start) == old_line:
                    return hunk
        return None


def patches_root() -> Path:
    env = os.environ.get("VLLM_EPDP_PATCHES")
    if env:
        root = Path(env)
        if not root.is_dir():
            raise EpdpError(
                f"VLLM_EPDP_PATCHES={env} is not a directory: point it at a directory "
                "holding v<version>/series, or unset it"
            )
        return root
    package_dir = Path(__file__).resolve().parent.parent  # vllm_epdp/
    for candidate in (package_dir / "_patches", package_dir.parent / "patches"):
        if candidate.is_dir():
            return candidate
    raise EpdpError(
        "no patch series found (neither vllm_epdp/_patches nor the repository's patches/ exists): reinstall vllm-epdp"
    )


def supported_versions() -> list[str]:
    """Versions that have a series, oldest first (e.g. ["0.32.0"])."""
    found = []
    for d in patches_root().iterdir():
        if d.name.startswith("v") and (d / "series").is_file():
            try:
                found.append((Version(d.name[1:]), d.name[1:]))
            except InvalidVersion:
                continue
    return [name for _, name in sorted(found)]


def public_version(version: str) -> Version:
    """The release a version number names: local labels ("+cpu") dropped.
    Not a version number -> EpdpError."""
    try:
        return Version(Version(version).public)
    except InvalidVersion:
        raise EpdpError(f"'{version}' is not a version number: pass e.g. --version 0.32.0") from None


def has_series(version: str) -> bool:
    wanted = public_version(version)
    return any(Version(name) == wanted for name in supported_versions())


def nearest_series(version: str) -> str | None:
    """The series to try on a version that has none: the newest series not
    newer than it (upstream moves forward from there), else the oldest one."""
    wanted = public_version(version)
    supported = supported_versions()
    older = [name for name in supported if Version(name) <= wanted]
    if older:
        return older[-1]
    return supported[0] if supported else None


def series_dir(version: str) -> Path:
    """The series directory for a vLLM version; local labels are ignored, so
    "0.32.0+cpu" uses the 0.32.0 series. Unknown version -> EpdpError naming
    the series that exist, the nearest one and how to try it."""
    wanted = public_version(version)
    supported = supported_versions()
    for name in supported:
        if Version(name) == wanted:
            return patches_root() / f"v{name}"
    if not supported:
        raise EpdpError(f"no patch series for vLLM {version} (supported: none); reinstall vllm-epdp")
    nearest = nearest_series(version)
    raise EpdpError(
        f"no patch series for vLLM {version} (supported: {', '.join(supported)}; nearest: "
        f"{nearest}); try the nearest series on a copy of {wanted}'s files, changing nothing "
        f"here: vllm-epdp check --release {wanted} --version {nearest}"
    )


def series_names(version: str) -> list[str]:
    """File names listed in the series file, in apply order."""
    path = series_dir(version) / "series"
    names = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line in names:
            raise EpdpError(f"{path}: {line} is listed twice; list each patch once")
        names.append(line)
    return names


def load_series(version: str) -> list[Patch]:
    """Parse every patch of the version's series, in apply order."""
    directory = series_dir(version)
    patches = []
    for name in series_names(version):
        path = directory / name
        if not path.is_file():
            raise EpdpError(
                f"{directory / 'series'} lists {name}, but {path} does not exist: "
                "fix the series file or restore the patch"
            )
        patches.append(parse_patch(path))
    return patches


def series_hash(version: str) -> str:
    """sha256 over the series file and every listed patch (for cache keys)."""
    directory = series_dir(version)
    h = hashlib.sha256((directory / "series").read_bytes())
    for name in series_names(version):
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()


def parse_patch(path: Path, check_header: bool = True) -> Patch:
    """Parse one ``git format-patch`` file; any defect -> EpdpError naming it.

    ``check_header=False`` reads a patch for its diff alone, header fields as
    found: the copy apply recorded of what it applied (patching/applied.py) was
    written by the series of its day, which may lack fields required since."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EpdpError(f"malformed patch {path}: not UTF-8 text; re-export it with git format-patch") from None
    lines = text.splitlines()
    subject, body = _split_mail(lines, path)
    headers = _parse_header_fields(body)
    missing = [f for f in HEADER_FIELDS if not headers.get(f)]
    if missing and check_header:
        raise EpdpError(
            f"malformed patch {path}: header lacks {', '.join(missing)}; every patch "
            f"needs {', '.join(f + ':' for f in HEADER_FIELDS)} lines in its commit message"
        )
    upstream = _upstream_fields(body, headers, path) if check_header else {}
    changes = _parse_diff(lines, path)
    _git_validate(path)
    return Patch(
        name=path.name,
        path=path,
        subject=subject,
        headers=headers,
        changes=changes,
        sha256=hashlib.sha256(raw).hexdigest(),
        diff_sha256=hashlib.sha256(text[text.find("diff --git ") :].encode()).hexdigest(),
        **upstream,
    )


def select(patches: list[Patch], wanted: list[str] | None) -> list[Patch]:
    """Patches named by file name, name without .patch, or number prefix
    ("0003", "3", "0003-cpu"), returned in series order. None/[] = all."""
    if not wanted:
        return list(patches)
    chosen = set()
    for want in wanted:
        w = want.strip()
        w = os.path.basename(w)
        matches = [
            p
            for p in patches
            if p.name == w
            or p.name == w + ".patch"
            or (w.isdigit() and p.number.isdigit() and int(p.number) == int(w))
            or (not w.isdigit() and p.name.startswith(w))
        ]
        if len(matches) != 1:
            names = ", ".join(p.number for p in patches) or "none"
            what = "matches no patch" if not matches else "matches several patches"
            raise EpdpError(f"'{want}' {what} of the series (patches: {names}); name a patch by number or file name")
        chosen.add(matches[0].name)
    return [p for p in patches if p.name in chosen]


def _split_mail(lines: list[str], path: Path) -> tuple[str, list[str]]:
    """Subject (unfolded, without "[PATCH ...]") and commit-message body lines."""
    try:
        blank = lines.index("")
    except ValueError:
        blank = len(lines)
    subject_parts: list[str] = []
    in_subject = False
    for line in lines[:blank]:
        if line.startswith("Subject:"):
            subject_parts.append(line[len("Subject:") :].strip())
            in_subject = True
        elif in_subject and line[:1] in (" ", "\t"):
            subject_parts.append(line.strip())
        else:
            in_subject = False
    if not subject_parts:
        raise EpdpError(
            f"malformed patch {path}: no 'Subject:' mail header, so it is not git "
            "format-patch output; export it with scripts/patch-workspace export"
        )
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", " ".join(subject_parts))
    body = []
    for line in lines[blank + 1 :]:
        if line == "---" or line.startswith("diff --git "):
            break
        body.append(line)
    return subject, body


def _parse_header_fields(body: list[str]) -> dict[str, str]:
    """Field name -> text, continuation lines joined; a repeated field keeps its
    last value (the upstream fields that may repeat are read by _field_values)."""
    return {name: value for name, value in _field_values(body)}


def _field_values(body: list[str]) -> list[tuple[str, str]]:
    """Every header field in order, as (name, text), repeats included."""
    fields: list[tuple[str, str]] = []
    current = None
    for line in body:
        m = _FIELD_RE.match(line)
        if m:
            current = m.group(1)
            fields.append((current, m.group(2).strip()))
        elif current and line.startswith("  ") and line.strip():
            name, text = fields[-1]
            fields[-1] = (name, (text + " " + line.strip()).strip())
        else:
            current = None
    return fields


def _upstream_fields(body: list[str], headers: dict[str, str], path: Path) -> dict:
    """The upstream fields checked (module docstring), as Patch keyword arguments."""
    values: dict[str, list[str]] = {name: [] for name in UPSTREAM_FIELDS}
    for name, text in _field_values(body):
        if name in values:
            values[name].append(text)

    def bad(field_name: str, why: str) -> EpdpError:
        return EpdpError(f"malformed patch {path}: {field_name}: {why}")

    for name, found in values.items():
        if len(found) > 1 and name not in REPEATABLE_FIELDS:
            raise bad(name, f"given {len(found)} times; give it once (only {' and '.join(REPEATABLE_FIELDS)} repeat)")
        for text in found:
            if not text:
                raise bad(name, "empty; give a value or leave the field out")
    if not values["Forwarded"]:
        raise bad(
            "Forwarded",
            "missing; add 'Forwarded: no', 'Forwarded: not-needed' or 'Forwarded: <URL of the upstream "
            "pull request or issue where it was proposed>' next to Upstream:",
        )
    forwarded = values["Forwarded"][0]
    if forwarded not in FORWARDED_WORDS and not _UPSTREAM_URL_RE.match(forwarded):
        raise bad("Forwarded", f"'{forwarded}' is not no, not-needed or {_URL_FORM}")
    for name in REPEATABLE_FIELDS:
        for url in values[name]:
            if not _UPSTREAM_URL_RE.match(url):
                raise bad(name, f"'{url}' is not {_URL_FORM} (one URL per {name}: line; repeat the field for more)")
    applied = values["Applied-Upstream"][0] if values["Applied-Upstream"] else None
    if applied is not None and not _UPSTREAM_URL_RE.match(applied):
        try:
            Version(applied)
        except InvalidVersion:
            raise bad(
                "Applied-Upstream", f"'{applied}' is neither a vLLM version (e.g. 0.35.0) nor {_URL_FORM}"
            ) from None
    carried = {
        m.group(1)
        for url in [forwarded, applied or "", *values["Bug"], *values["Related"]]
        if (m := _UPSTREAM_URL_RE.match(url))
    }
    loose = [n for n in dict.fromkeys(_PROSE_NUMBER_RE.findall(headers.get("Upstream", ""))) if n not in carried]
    if loose:
        raise bad(
            "Upstream",
            f"the prose names #{', #'.join(loose)}, which no Forwarded, Bug, Applied-Upstream or Related "
            "field carries; add the URL to the field that says what the thread is to this patch",
        )
    return {
        "forwarded": forwarded,
        "bugs": tuple(values["Bug"]),
        "applied_upstream": applied,
        "related": tuple(values["Related"]),
    }


_URL_FORM = "a vLLM issue or pull request URL (https://github.com/vllm-project/vllm/issues/N or .../pull/N)"


def _short_ref(value: str) -> str:
    """A vLLM issue or pull request URL as "#N"; any other value as it is."""
    m = _UPSTREAM_URL_RE.match(value)
    return f"#{m.group(1)}" if m else value


def _parse_diff(lines: list[str], path: Path) -> tuple[FileChange, ...]:
    """Files and hunk headers of the diff part (git applies it; we only need
    names and hunk positions to report conflicts and back files up)."""
    changes: list[dict] = []
    for line in lines:
        if line.startswith("diff --git "):
            m = re.match(r"^diff --git a/(\S+) b/(\S+)$", line)
            if not m:
                raise EpdpError(f"malformed patch {path}: cannot read file names in '{line}'")
            if m.group(1) != m.group(2):
                raise EpdpError(f"malformed patch {path}: renames are not supported ({line})")
            changes.append({"path": m.group(2), "created": False, "deleted": False, "hunks": []})
        elif not changes:
            continue
        elif line.startswith("new file mode"):
            changes[-1]["created"] = True
        elif line.startswith("deleted file mode"):
            changes[-1]["deleted"] = True
        elif line.startswith("@@"):
            m = _HUNK_RE.match(line)
            if not m:
                raise EpdpError(f"malformed patch {path}: bad hunk header '{line}'")
            hunks = changes[-1]["hunks"]
            header = line[: m.end()]
            hunks.append(Hunk(len(hunks) + 1, int(m.group(1)), int(m.group(3)), header))
    if not changes:
        raise EpdpError(f"malformed patch {path}: it contains no diff; export it with git format-patch")
    for c in changes:
        if not c["path"].startswith("vllm/"):
            raise EpdpError(
                f"malformed patch {path}: it changes {c['path']}, outside vllm/; "
                "series patches may only touch the vllm package"
            )
    return tuple(FileChange(c["path"], c["created"], c["deleted"], tuple(c["hunks"])) for c in changes)


def _git_validate(path: Path) -> None:
    """Let git parse the patch without touching anything (--numstat)."""
    with tempfile.TemporaryDirectory(prefix="vllm-epdp-parse-") as cwd:
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(Path(cwd).parent))
        r = run_git(["apply", "--numstat", str(path)], cwd=cwd, env=env)
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["git apply rejected it"])[0]
        raise EpdpError(f"malformed patch {path}: {first}; re-export it with git format-patch")


def run_git(args: list[str], cwd: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise EpdpError("git is not installed: vllm-epdp applies patches with `git apply`; install git") from None
