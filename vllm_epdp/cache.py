"""Where vllm-epdp keeps what it builds or downloads: one directory for all of it.

``cache_root()`` is ``$VLLM_EPDP_CACHE`` if set; else ``<repository>/.cache``
when this package runs from a vllm-epdp source checkout; else
``$XDG_CACHE_HOME/vllm-epdp`` (default ``~/.cache/vllm-epdp``). Never inside
site-packages: an installed vllm-epdp may not write there, and a reinstall
would throw the cache away. Each user takes a subdirectory: ``overlays``
(overlay.py), ``releases`` (releases.py), ``models`` (verify's tiny models).

Why the checkout's own ``.cache`` first: overlays hard-link the venv's big
files, and a checkout's venv (``./dev``) is ``<repository>/.venv``, on the
same file system; ``.cache/`` is in .gitignore.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path | None:
    """The vllm-epdp source repository this package runs from, if any."""
    candidate = Path(__file__).resolve().parent.parent
    pyproject = candidate / "pyproject.toml"
    if pyproject.is_file() and 'name = "vllm-epdp"' in pyproject.read_text():
        return candidate
    return None


def cache_root() -> Path:
    """The directory every cache of vllm-epdp lives under (see the module docstring)."""
    if os.environ.get("VLLM_EPDP_CACHE"):
        return Path(os.environ["VLLM_EPDP_CACHE"])
    repo = repo_root()
    if repo is not None:
        return repo / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm-epdp"
