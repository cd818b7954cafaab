"""Collective ledger: which torch.distributed collectives each process posted, per process group, in order.

Why: a DP x EP run that hangs is almost always one rank posting a different
collective than its peers (a step it skipped, a dummy step it ran twice). The
hang shows up much later and far away; the ledger shows the first entry where
the members of a group disagree, long before anything deadlocks.

Use:
  VLLM_EPDP_LEDGER=DIR vllm serve ...      (vllm_epdp/plugin.py calls install)
  python -m vllm_epdp.ledger compare DIR   (exit 0: every group agrees)
  python -m vllm_epdp.ledger summary DIR   (entries per process and group)

This module only gathers the names callers use: recording inside the vLLM
processes is record.py, reading and comparing the files is report.py, the
command line is cli.py.
"""

from vllm_epdp.ledger.cli import main
from vllm_epdp.ledger.record import install
from vllm_epdp.ledger.report import compare, counts, load, summary, wait_quiet

__all__ = ["compare", "counts", "install", "load", "main", "summary", "wait_quiet"]
