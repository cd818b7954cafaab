"""vLLM general plugin (entry point ``vllm.general_plugins``).

vLLM calls ``register()`` in the front-end, the engine core and every worker
process. It must stay a no-op unless the user asked for a diagnostic, because it
is loaded into every vLLM process once vllm-epdp is installed.

Switches (environment variables, read once per process):
  VLLM_EPDP_LEDGER=DIR     record every collective per rank and process group
                           into DIR: vLLM's GroupCoordinator calls, torch.distributed
                           calls that bypass it, graph replays, the model runner's
                           steps (see vllm_epdp/diagnostics/ledger/)
  VLLM_EPDP_LEDGER_STALL_S=N  with the ledger: when a collective or a step has
                           not finished for N seconds, the process writes its
                           last entries and every thread's stack into DIR
  VLLM_EPDP_NAN_WATCH=DIR  forward hooks that count non-finite rows per decoder
                           layer, real vs padding rows (vllm_epdp/diagnostics/nan_watch.py)
  VLLM_EPDP_NAN_FILL=1     fill every new torch.empty buffer with NaN (integers
                           with their maximum): whatever reads memory nobody
                           wrote shows up as NaN instead of depending on what
                           the allocator hands out. Uses torch's deterministic
                           mode (warn_only: no op is refused), so it is slower.
  VLLM_EPDP_ASYNC_PROBE=DIR  count the engine core's synchronous and batch-queue
                           steps and how many overlapped: whether async
                           scheduling really ran (vllm_epdp/diagnostics/async_probe.py)
"""

import os


def register() -> None:
    if os.environ.get("VLLM_EPDP_NAN_FILL") == "1":
        fill_uninitialized_with_nan()
    if os.environ.get("VLLM_EPDP_LEDGER"):
        from vllm_epdp.diagnostics import ledger

        ledger.install(os.environ["VLLM_EPDP_LEDGER"], stall_s=stall_seconds())
    if os.environ.get("VLLM_EPDP_NAN_WATCH"):
        from vllm_epdp.diagnostics import nan_watch

        nan_watch.install(os.environ["VLLM_EPDP_NAN_WATCH"])
    if os.environ.get("VLLM_EPDP_ASYNC_PROBE"):
        from vllm_epdp.diagnostics import async_probe

        async_probe.install(os.environ["VLLM_EPDP_ASYNC_PROBE"])


def fill_uninitialized_with_nan() -> None:
    """torch fills uninitialized memory (torch.empty and friends) with NaN, or
    an integer dtype's maximum, while deterministic algorithms are on."""
    import torch
    import torch.utils.deterministic

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True


def stall_seconds() -> float | None:
    """VLLM_EPDP_LEDGER_STALL_S as seconds (None: unset)."""
    from vllm_epdp.errors import EpdpError

    value = os.environ.get("VLLM_EPDP_LEDGER_STALL_S", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise EpdpError(
            f"VLLM_EPDP_LEDGER_STALL_S={value!r}: give the stall threshold in seconds, "
            "well above your slowest step (e.g. 120), or unset it"
        )
    return seconds
