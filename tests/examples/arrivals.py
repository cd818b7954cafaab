"""Requests that arrive while a DP rank idles, against a running `vllm serve`
(the coordinator path of docs/idle_ranks.md): issue 4 asks whether a rank
ever posts different DP collectives than its peers because of its local load.

The schedule, in three phases (vLLM's load balancer picks the rank):
1. long and short requests together, then single short ones arriving over
   the next 2.5 s: a rank runs out of work and idles while its peer works,
   then gets work again (within the wave or after it ended: the load
   balancer and the step times decide);
2. a pause: every request finished, the wave ends on both ranks;
3. one request alone (its engine starts a wave; the coordinator wakes the
   idle peer), then a burst of 1-token requests a tenth of a second apart
   (the online form of patch 0012's split batch).
"""

from __future__ import annotations

import importlib.util
import threading
import time

from example_runs import SOAK

# The soak example's HTTP helpers (a standalone script, loaded by path).
_spec = importlib.util.spec_from_file_location("soak_client", SOAK)
soak_client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak_client)

PROMPT = "The quick brown fox jumps over the lazy dog. "
# (seconds after the phase starts, max_tokens)
BUSY_AND_IDLE = [(0.0, 30), (0.0, 12), (0.0, 4), (0.5, 1), (1.0, 1), (1.5, 2), (2.5, 3)]
WAKE_AND_BURST = [(0.0, 16)] + [(0.5 + 0.1 * i, 1) for i in range(7)]
PAUSE_S = 3.0


def _complete(url: str, model: str, max_tokens: int, timeout_s: float) -> int:
    out = soak_client.call(
        url,
        "/v1/completions",
        {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        },
        timeout=timeout_s,
    )
    return out["usage"]["completion_tokens"]


def _phase(url: str, model: str, events: list[tuple[float, int]], timeout_s: float) -> list:
    """Send each request at its offset (one thread each); wait for all.
    Returns completion token counts, or the exception text, in event order."""
    results: list = [None] * len(events)
    start = time.monotonic()

    def one(i: int, at: float, max_tokens: int) -> None:
        time.sleep(max(0.0, start + at - time.monotonic()))
        try:
            results[i] = _complete(url, model, max_tokens, timeout_s)
        except Exception as e:  # reported to the test, which names the request
            results[i] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=one, args=(i, at, n), daemon=True) for i, (at, n) in enumerate(events)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 10)
    return results


def run(url: str, timeout_s: float = 120.0) -> dict[str, list]:
    """Run the three phases; {"busy_and_idle": [...], "wake_and_burst": [...]}
    with each request's completion token count (or its error)."""
    model = soak_client.call(url, "/v1/models")["data"][0]["id"]
    first = _phase(url, model, BUSY_AND_IDLE, timeout_s)
    time.sleep(PAUSE_S)
    second = _phase(url, model, WAKE_AND_BURST, timeout_s)
    return {"busy_and_idle": first, "wake_and_burst": second}


def expected() -> dict[str, list]:
    return {"busy_and_idle": [n for _, n in BUSY_AND_IDLE], "wake_and_burst": [n for _, n in WAKE_AND_BURST]}
