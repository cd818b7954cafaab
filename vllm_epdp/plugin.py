"""vLLM general plugin (entry point ``vllm.general_plugins``).

vLLM calls ``register()`` in the front-end, the engine core and every worker
process. It must stay a no-op unless the user asked for a diagnostic, because it
is loaded into every vLLM process once vllm-epdp is installed.

Switches (environment variables, read once per process):
  VLLM_EPDP_LEDGER=DIR     record every torch.distributed collective per rank
                           and process group into DIR (see vllm_epdp/ledger.py)
  VLLM_EPDP_NAN_WATCH=DIR  forward hooks that count non-finite rows per decoder
                           layer, real vs padding rows (vllm_epdp/nan_watch.py)
"""

import os


def register() -> None:
    if os.environ.get("VLLM_EPDP_LEDGER"):
        from vllm_epdp import ledger

        ledger.install(os.environ["VLLM_EPDP_LEDGER"])
    if os.environ.get("VLLM_EPDP_NAN_WATCH"):
        from vllm_epdp import nan_watch

        nan_watch.install(os.environ["VLLM_EPDP_NAN_WATCH"])
