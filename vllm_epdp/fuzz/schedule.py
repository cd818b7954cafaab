"""What a fuzzed schedule is: requests with send times, and its JSON form.

A schedule is the traffic of one fuzz example: requests sent at given offsets
from its start (bursts, and gaps long enough for the DP waves to end), each
with its prompt as token ids (exact lengths, 1 token up to near
max_model_len), its max_tokens (1 included), n, streaming or not, and for a
streaming request optionally the number of tokens after which the client
hangs up (an abort mid-stream); the DP rank that serves it, where the
schedule picks one. The JSON form is what a failing seed is saved
as and what ``vllm-epdp fuzz --replay FILE`` runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

# A gap this long between two requests lets every DP rank's wave end (the
# next request starts a new one); the offline targets cut their waves there.
WAVE_GAP_S = 2.0


@dataclasses.dataclass(frozen=True)
class Request:
    at_s: float  # when to send it, from the start of the schedule
    prompt: tuple[int, ...]  # token ids
    max_tokens: int
    n: int = 1
    stream: bool = False
    abort_after: int | None = None  # streaming only: hang up after this many tokens
    # The DP rank that serves it. Offline: the rank whose script submits it
    # (offline DP has no router). Serving: pinned with vLLM's
    # X-data-parallel-rank header; None: vLLM's own router places it.
    rank: int | None = None

    @property
    def aborts(self) -> bool:
        return self.abort_after is not None

    def key(self) -> tuple:
        """What the greedy answer depends on (the DP=1 reference's cache key)."""
        return (self.prompt, self.max_tokens)


@dataclasses.dataclass(frozen=True)
class Schedule:
    requests: tuple[Request, ...]

    def describe(self) -> str:
        n = len(self.requests)
        aborts = sum(r.aborts for r in self.requests)
        span = max((r.at_s for r in self.requests), default=0.0)
        lengths = sorted(len(r.prompt) for r in self.requests)
        return (
            f"{n} request(s) over {span:.1f} s, {aborts} abort(s), prompt lengths {lengths[:1] + lengths[-1:]}, "
            f"max_tokens {sorted({r.max_tokens for r in self.requests})}"
        )

    def digest(self) -> str:
        """Names this exact schedule (two schedules that describe() alike may
        still differ in their prompts' tokens)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]

    def to_json(self) -> dict:
        return {"requests": [dataclasses.asdict(r) for r in self.requests]}

    @classmethod
    def from_json(cls, data: dict) -> Schedule:
        reqs = []
        for r in data["requests"]:
            reqs.append(Request(**{**r, "prompt": tuple(r["prompt"])}))
        return cls(tuple(reqs))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Schedule:
        return cls.from_json(json.loads(Path(path).read_text()))
