"""Hypothesis strategies that draw schedules (vllm_epdp.fuzz.schedule).

Shapes that matter for DP x EP, each drawn with a fair chance, so Hypothesis
can also shrink a failure towards the smallest schedule that still shows it:
bursts of requests arriving together, gaps after a burst long enough for
every DP rank to go idle (the wave ends; the next request wakes them), prompt
lengths from 1 token to near max_model_len, max_tokens from 1, n = 2, streaming,
client aborts mid-stream, enough long requests at once that a small KV
cache must preempt, and idle phases: one DP rank decodes a long answer while
its peer has nothing to do (it runs dummy batches, step after step), then
requests wake the idle rank mid-decode. Requests may be pinned to a DP rank
(serving: vLLM's X-data-parallel-rank header; offline: the rank that submits
it), which is how a schedule makes one rank idle on purpose.
"""

from __future__ import annotations

import dataclasses
import random

from hypothesis import strategies as st

from vllm_epdp.fuzz.schedule import WAVE_GAP_S, Request, Schedule


@dataclasses.dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_model_len: int
    max_requests: int = 12
    max_bursts: int = 4
    wave_gap_s: float = WAVE_GAP_S
    max_new_tokens: int = 48
    max_n: int = 2  # 1 where n > 1 cannot run (V2 under Triton's interpreter)
    # Small-KV targets: every schedule opens with a burst that must preempt
    # (see pressure_burst); None elsewhere.
    kv_block_tokens: int | None = None
    # Offline targets: their DP size. Each request is drawn a DP rank to
    # submit it, and none streams or aborts (LLM.generate does neither).
    offline_dp: int | None = None
    # Serving targets: their DP size; a request may be pinned to a DP rank
    # (or left to vLLM's router).
    pin_dp: int | None = None
    # The longest answer of an idle phase's busy rank: the idle rank runs
    # about this many dummy batches (V2 under Triton's interpreter is slow
    # per step, so it gets fewer).
    max_long_tokens: int = 192

    @property
    def dp(self) -> int | None:
        return self.offline_dp or self.pin_dp


def rank_of(draw: st.DrawFn, limits: Limits) -> int | None:
    """The DP rank a request goes to: always one offline, pinned or left to
    vLLM's router when serving, none where the target has no DP ranks to pick."""
    if limits.offline_dp:
        return draw(st.integers(0, limits.offline_dp - 1))
    if limits.pin_dp:
        return draw(st.none() | st.integers(0, limits.pin_dp - 1))
    return None


@st.composite
def requests_of_burst(draw: st.DrawFn, limits: Limits, start_s: float) -> list[Request]:
    count = draw(st.integers(1, max(1, limits.max_requests // 2)))
    out = []
    for _ in range(count):
        max_tokens = draw(st.sampled_from([1, 2, 3]) | st.integers(1, limits.max_new_tokens))
        room = limits.max_model_len - max_tokens
        length = draw(st.integers(1, 16) | st.integers(1, room) | st.just(room))
        prompt = tuple(draw(st.lists(st.integers(0, limits.vocab_size - 1), min_size=length, max_size=length)))
        stream = draw(st.booleans()) if not limits.offline_dp else False
        abort_after = draw(st.none() | st.integers(0, max_tokens - 1)) if stream and max_tokens > 1 else None
        out.append(
            Request(
                at_s=start_s + draw(st.floats(0.0, 0.5, allow_nan=False)),
                prompt=prompt,
                max_tokens=max_tokens,
                n=draw(st.sampled_from([1, 1, 1, limits.max_n])),
                stream=stream,
                abort_after=abort_after,
                rank=rank_of(draw, limits),
            )
        )
    return out


@st.composite
def idle_phase(draw: st.DrawFn, limits: Limits, start_s: float) -> list[Request]:
    """One DP rank decodes a long answer while its peer idles (dummy batches),
    then one to three requests wake the idle rank mid-decode: the shape of
    the one-hour report's traffic (a rank idle for many steps under async
    scheduling). Offline, a wake that comes within the wave gap joins the
    busy rank's wave, a later one starts the next wave."""
    dp = limits.dp
    assert dp is not None  # schedules() draws an idle phase only for a target with DP ranks
    busy = draw(st.integers(0, dp - 1))
    idle = (busy + draw(st.integers(1, dp - 1))) % dp
    prompt_len = draw(st.integers(1, min(32, limits.max_model_len // 2)))
    most = min(limits.max_long_tokens, limits.max_model_len - prompt_len)
    long_tokens = draw(st.integers(min(64, most), most))
    prompt = tuple(draw(st.lists(st.integers(0, limits.vocab_size - 1), min_size=prompt_len, max_size=prompt_len)))
    out = [Request(start_s, prompt, long_tokens, rank=busy)]
    wake_at = start_s + draw(st.floats(0.2, 3.0, allow_nan=False))
    for _ in range(draw(st.integers(1, 3))):
        max_tokens = draw(st.sampled_from([1, 2]) | st.integers(1, limits.max_new_tokens))
        length = draw(st.integers(1, 16) | st.integers(1, limits.max_model_len - max_tokens))
        wake = tuple(draw(st.lists(st.integers(0, limits.vocab_size - 1), min_size=length, max_size=length)))
        out.append(Request(wake_at + draw(st.floats(0.0, 0.3, allow_nan=False)), wake, max_tokens, rank=idle))
    return out


@st.composite
def pressure_burst(draw: st.DrawFn, limits: Limits) -> list[Request]:
    """Six or more prompts of just under two KV blocks at once, each asking
    enough tokens that its decode needs a third block: on a 6-block cache per
    DP rank three get in, and their growth must preempt (a drawn schedule of
    short prompts never fills the cache)."""
    block = limits.kv_block_tokens
    assert block is not None  # schedules() draws a pressure burst only for a small-KV target
    out = []
    for _ in range(draw(st.integers(6, max(6, limits.max_requests)))):
        length = draw(st.integers(2 * block - 36, 2 * block - 6))
        max_tokens = draw(
            st.integers(2 * block - length + 4, min(limits.max_new_tokens, limits.max_model_len - length))
        )
        # One drawn seed per prompt, not ~240 drawn tokens: the burst's
        # examples stay small for Hypothesis to store and shrink (lengths and
        # token counts still shrink; the token values are not what matters).
        tokens = random.Random(draw(st.integers(0, 2**32 - 1)))
        prompt = tuple(tokens.randrange(limits.vocab_size) for _ in range(length))
        out.append(Request(draw(st.floats(0.0, 0.2, allow_nan=False)), prompt, max_tokens))
    return out


@st.composite
def schedules(draw: st.DrawFn, limits: Limits) -> Schedule:
    at = 0.0
    pressure: list[Request] = []
    if limits.kv_block_tokens:
        pressure = draw(pressure_burst(limits))
        at = max(r.at_s for r in pressure) + draw(st.sampled_from([0.2, limits.wave_gap_s + 0.5]))
    reqs: list[Request] = []
    room = max(1, limits.max_requests - len(pressure))  # the pressure burst is kept whole
    for i in range(draw(st.integers(1, limits.max_bursts))):
        if i:
            # A short gap keeps the wave open, a long one ends it.
            at += draw(st.sampled_from([0.2, limits.wave_gap_s + 0.5]))
        if limits.dp and limits.dp > 1 and draw(st.booleans()):
            burst = draw(idle_phase(limits, at))
        else:
            burst = draw(requests_of_burst(limits, at))
        reqs += burst
        at = max(r.at_s for r in burst)
        if len(reqs) >= room:
            break
    return Schedule(tuple(sorted(pressure + reqs[:room], key=lambda r: r.at_s)))
