"""Kit sources: what we wrote to send one patch of the series upstream.

A kit lives in ``upstream/<name>/`` of this repository (``vllm_epdp/_upstream``
in a wheel), and holds only our own text:

  kit.toml      which patch it sends (by file name, so the same kit serves
                every series holding that patch), the earlier patches the pull
                request must carry too, the PR's title and prose, the issue
                text where upstream has no issue, and the test files
  tests/...     the test, at the path it takes in vLLM's tree, written in
                vLLM's style against vLLM's own fixtures and helpers
  v<X>/tests/...  the same file for release X where X's tests need another
                form (e.g. a release without Model Runner V1); optional

kit.toml fields::

  patch = "0003-....patch"        # the patch the pull request is about
  with = ["0002-....patch"]       # series patches it carries as well (optional)
  title = "[Bugfix][CPU] ..."     # PR title, vLLM's tag convention
  issue = 57837                   # upstream issue it closes (optional)
  device = "cpu"                  # where the test's logic runs for real here:
                                  # "cpu" (CI runs it both ways) or "xpu"/"cuda"
  passes_without = ["test_x"]     # test functions that also pass unpatched
                                  # (guards of behaviour kept; default none)
  releases = ["0.32.0"]           # the series it is written for, where its
                                  # patches apply without the ones before
                                  # (default: every series holding the patch)
  [[tests]]
  path = "tests/distributed/test_cpu_communicator.py"
  mode = "new"                    # or "append": added to the end of vLLM's file
  [ci]                            # optional: put a new test into vLLM's CI
  file = ".buildkite/hardware_tests/cpu.yaml"
  beside = "tests/kernels/moe/test_cpu_fused_moe.py"
  [pr]
  overview = "..."  claims = "..."  details = "..."
  [issue_text]                    # only without `issue`
  title = "[Bug]: ..."  bug = "..."
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from vllm_epdp.errors import EpdpError
from vllm_epdp.patching.series import Patch

DEVICES = ("cpu", "xpu", "cuda")
MODES = ("new", "append")


@dataclass(frozen=True)
class KitTest:
    path: str  # in vLLM's tree, e.g. "tests/distributed/test_cpu_communicator.py"
    mode: str  # "new" file, or "append" to vLLM's file of that path


@dataclass(frozen=True)
class Kit:
    name: str  # directory name under upstream/
    directory: Path
    patch: str  # patch file name
    carries: tuple[str, ...]  # earlier series patches the pull request carries too
    title: str
    issue: int | None
    device: str
    tests: tuple[KitTest, ...]
    passes_without: tuple[str, ...] = ()
    releases: tuple[str, ...] = ()  # empty: every series holding its patch
    ci_file: str | None = None
    ci_beside: str | None = None
    pr: dict = field(default_factory=dict, hash=False, compare=False)
    issue_text: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def runs_here(self) -> bool:
        """Whether its test's logic runs on CPU, so CI runs it both ways."""
        return self.device == "cpu"

    @property
    def patch_names(self) -> tuple[str, ...]:
        """Every series patch the pull request carries (series order is the
        caller's to impose)."""
        return (*self.carries, self.patch)

    def written_for(self, release: str) -> bool:
        """Whether the kit is written for ``release``'s series (its patches
        apply there on their own)."""
        return not self.releases or release in self.releases

    def source(self, test: KitTest, release: str) -> Path:
        """Our file for ``test`` on ``release``: the release's own form if the
        kit has one (``v<release>/<path>``), else the common one."""
        own = self.directory / f"v{release}" / test.path
        return own if own.is_file() else self.directory / test.path

    def test_functions(self, release: str) -> list[str]:
        """Names of the test functions the kit adds (top-level ``test_*``)."""
        names = []
        for test in self.tests:
            tree = ast.parse(self.source(test, release).read_text(encoding="utf-8"))
            names += [
                node.name
                for node in tree.body
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
            ]
        return names

    def resolve(self, patches: list[Patch]) -> list[Patch]:
        """The series patches of this kit in series order; EpdpError naming
        the one the series lacks."""
        by_name = {p.name: p for p in patches}
        missing = [name for name in self.patch_names if name not in by_name]
        if missing:
            raise EpdpError(
                f"kit {self.name} sends {', '.join(missing)}, which this series does not hold: "
                f"rename the kit's patch in {self.directory / 'kit.toml'} or pick another --release"
            )
        wanted = set(self.patch_names)
        return [p for p in patches if p.name in wanted]


def kits_root() -> Path:
    """``$VLLM_EPDP_KITS``; else ``vllm_epdp/_upstream`` (a wheel); else the
    repository's ``upstream/``."""
    env = os.environ.get("VLLM_EPDP_KITS")
    if env:
        return Path(env)
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_upstream", package_dir.parent / "upstream"):
        if candidate.is_dir():
            return candidate
    raise EpdpError("no upstream kits found (neither vllm_epdp/_upstream nor the repository's upstream/): reinstall")


def load_kits(root: Path | None = None) -> list[Kit]:
    """Every kit under ``root`` (default kits_root()), by directory name."""
    root = root or kits_root()
    return [load_kit(d) for d in sorted(root.iterdir()) if (d / "kit.toml").is_file()]


def load_kit(directory: Path) -> Kit:
    where = directory / "kit.toml"
    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EpdpError(f"{where}: {exc}") from None

    def need(key: str) -> Any:  # a TOML value
        if key not in data:
            raise EpdpError(f"{where}: no '{key}'; every kit.toml names it (see vllm_epdp/upstream/kits.py)")
        return data[key]

    device = data.get("device", "cpu")
    if device not in DEVICES:
        raise EpdpError(f"{where}: device '{device}' is not one of {', '.join(DEVICES)}")
    tests = []
    for entry in need("tests"):
        test = KitTest(path=entry["path"], mode=entry.get("mode", "new"))
        if test.mode not in MODES:
            raise EpdpError(f"{where}: test mode '{test.mode}' is not one of {', '.join(MODES)}")
        if not test.path.startswith("tests/") or not (directory / test.path).is_file():
            raise EpdpError(f"{where}: test {test.path} must be a file under the kit's tests/")
        tests.append(test)
    ci = data.get("ci", {})
    issue = data.get("issue")
    if issue is None and not data.get("issue_text", {}).get("title"):
        raise EpdpError(f"{where}: a kit names the upstream issue it closes, or gives [issue_text] for a new one")
    return Kit(
        name=directory.name,
        directory=directory,
        patch=need("patch"),
        carries=tuple(data.get("with", ())),
        title=need("title"),
        issue=issue,
        device=device,
        tests=tuple(tests),
        passes_without=tuple(data.get("passes_without", ())),
        releases=tuple(data.get("releases", ())),
        ci_file=ci.get("file"),
        ci_beside=ci.get("beside"),
        pr=dict(need("pr")),
        issue_text=dict(data.get("issue_text", {})),
    )


def kit_for(patch: Patch, kits: list[Kit] | None = None) -> Kit | None:
    """The kit that sends ``patch`` (by file name), if one exists."""
    found = [k for k in (kits if kits is not None else load_kits()) if k.patch == patch.name]
    if len(found) > 1:
        raise EpdpError(f"kits {', '.join(k.name for k in found)} all send {patch.name}: keep one")
    return found[0] if found else None
