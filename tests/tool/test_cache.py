"""One cache directory for overlays, release archives and verify's models."""

from __future__ import annotations

import shutil
import subprocess
import sys

from vllm_epdp import cache
from vllm_epdp.patching import overlay, releases


def test_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_EPDP_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path
    assert releases.releases_dir() == tmp_path / "releases"
    assert overlay.overlays_dir() == tmp_path / "overlays"


def test_a_source_checkout_keeps_its_cache_in_it(monkeypatch, repo_root):
    monkeypatch.delenv("VLLM_EPDP_CACHE", raising=False)
    assert cache.repo_root() == repo_root
    assert cache.cache_root() == repo_root / ".cache"


def test_an_installed_package_uses_the_user_cache(tmp_path):
    """Outside a checkout (the module alone in a directory, as in
    site-packages): $XDG_CACHE_HOME/vllm-epdp, never beside the package."""
    site = tmp_path / "site" / "vllm_epdp"
    site.mkdir(parents=True)
    shutil.copy(cache.__file__, site / "cache.py")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import cache; print(cache.cache_root())"
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(site)], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == str(tmp_path / "xdg" / "vllm-epdp")
