"""Collective ledger: which collectives each process posted, per process group, in order.

Why: a DP x EP run that hangs is almost always one rank posting a different
collective than its peers (a step it skipped, a dummy step it ran twice). The
hang shows up much later and far away; the ledger shows the first entry where
the members of a group disagree, long before anything deadlocks.

Use:
  VLLM_EPDP_LEDGER=DIR vllm serve ...      (vllm_epdp/diagnostics/plugin.py calls install)
  VLLM_EPDP_LEDGER_STALL_S=120             (also: dump every thread's stack when a
                                            collective or step hangs for 120 s)
  vllm-epdp ledger compare DIR   (exit 0: every group agrees)
  vllm-epdp ledger summary DIR   (entries per process and group)
  vllm-epdp ledger stalls DIR    (the stall dumps' stacks)

This module only gathers the names callers use: recording inside the vLLM
processes is install.py (start it), record.py (the file format), groups.py
(group names) and the layers vllm_layer.py, torch_layer.py, graphs.py and
watchdog.py; reading is read.py, comparing
report.py, the command line cli.py.
"""

from vllm_epdp.diagnostics.ledger.cli import main
from vllm_epdp.diagnostics.ledger.graphs import instrument as instrument_graph_class
from vllm_epdp.diagnostics.ledger.install import install
from vllm_epdp.diagnostics.ledger.read import load
from vllm_epdp.diagnostics.ledger.record import step
from vllm_epdp.diagnostics.ledger.report import compare, counts, report, stalls, summary, wait_quiet

__all__ = [
    "compare",
    "counts",
    "install",
    "instrument_graph_class",
    "load",
    "main",
    "report",
    "stalls",
    "step",
    "summary",
    "wait_quiet",
]
