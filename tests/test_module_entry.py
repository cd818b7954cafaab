"""`python -m vllm_epdp` is the vllm-epdp command: same output, same exit codes."""

import subprocess
import sys

from vllm_epdp import __version__


def run(*args):
    return subprocess.run([sys.executable, "-m", "vllm_epdp", *args], capture_output=True, text=True, timeout=60)


def test_version_and_help():
    assert run("--version").stdout.strip() == f"vllm-epdp {__version__}"
    helped = run("--help")
    assert helped.returncode == 0 and "status" in helped.stdout and "verify" in helped.stdout


def test_usage_error_exit_code():
    bad = run("no-such-command")
    assert bad.returncode == 2 and "no-such-command" in bad.stderr
