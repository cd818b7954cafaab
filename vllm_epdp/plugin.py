"""vLLM general plugin (entry point ``vllm.general_plugins``).

vLLM calls ``register()`` in the front-end, the engine core and every worker
process. It must stay a no-op unless the user asked for a diagnostic, because it
is loaded into every vLLM process once vllm-epdp is installed.

Switches (environment variables, read once per process):
  VLLM_EPDP_LEDGER=DIR     record every torch.distributed collective per rank
                           and process group into DIR (see vllm_epdp/ledger/)
  VLLM_EPDP_NAN_WATCH=DIR  forward hooks that count non-finite rows per decoder
                           layer, real vs padding rows (vllm_epdp/nan_watch.py)
  VLLM_EPDP_NAN_FILL=1     fill every new torch.empty buffer with NaN (integers
                           with their maximum): whatever reads memory nobody
                           wrote shows up as NaN instead of depending on what
                           the allocator hands out. Uses torch's deterministic
                           mode (warn_only: no op is refused), so it is slower.
  VLLM_EPDP_ASYNC_PROBE=DIR  count the engine core's synchronous and batch-queue
                           steps and how many overlapped: whether async
                           scheduling really ran (vllm_epdp/async_probe.py)
"""

import os


def register() -> None:
    if os.environ.get("VLLM_EPDP_NAN_FILL") == "1":
        fill_uninitialized_with_nan()
    if os.environ.get("VLLM_EPDP_LEDGER"):
        from vllm_epdp import ledger

        ledger.install(os.environ["VLLM_EPDP_LEDGER"])
    if os.environ.get("VLLM_EPDP_NAN_WATCH"):
        from vllm_epdp import nan_watch

        nan_watch.install(os.environ["VLLM_EPDP_NAN_WATCH"])
    if os.environ.get("VLLM_EPDP_ASYNC_PROBE"):
        from vllm_epdp import async_probe

        async_probe.install(os.environ["VLLM_EPDP_ASYNC_PROBE"])


def fill_uninitialized_with_nan() -> None:
    """torch fills uninitialized memory (torch.empty and friends) with NaN, or
    an integer dtype's maximum, while deterministic algorithms are on."""
    import torch
    import torch.utils.deterministic

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
