"""What verify runs: prompts, how they are spread over DP ranks and in which
waves, and which configurations run which scenarios.

A *scenario* is a fixed set of requests (id, prompt, max_tokens), split per DP
rank into *waves* (one ``generate()`` call each). DP ranks start every wave
together (a barrier): vLLM's offline DP pattern has no coordinator to wake an
engine whose front-end submitted nothing, so a rank that starts work after its
peers went idle, or never submits anything, hangs the others (vLLM's own
example gives such ranks a placeholder prompt; verify/offline_process.py does the same
with a 1-token request that is not compared). Within a wave, requests finish at
different times (different max_tokens), so ranks go idle (dummy steps) and
busy again at the next wave. Truly idle engines (never a request) are covered
online, where vLLM's DP coordinator wakes them: the ``serve-one`` scenario.

The reference (DP=1) runs the same requests; greedy outputs do not depend on
how requests are batched (exactly in fp32 on CPU; within the logprob criterion
in bf16), so each request is compared by id.
"""

from __future__ import annotations

import dataclasses
import random

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "while",
    "sun",
    "rises",
    "hills",
    "small",
    "model",
    "can",
    "still",
    "teach",
    "us",
    "a",
    "lot",
    "about",
    "how",
    "large",
    "systems",
    "behave",
    "when",
    "many",
    "machines",
    "work",
    "together",
    "on",
    "one",
    "request",
    "each",
    "machine",
    "holds",
    "part",
    "of",
    "experts",
    "and",
    "every",
    "token",
    "picks",
    "two",
    "that",
    "suit",
    "it",
    "best",
    "once",
    "upon",
    "time",
    "there",
    "was",
    "little",
    "village",
    "at",
    "edge",
    "great",
    "forest",
    "people",
    "grew",
    "wheat",
    "barley",
    "kept",
    "bees",
    "traded",
    "honey",
    "river",
    "stone",
    "bridge",
    "market",
    "morning",
    "evening",
    "light",
    "rain",
    "wind",
    "winter",
    "summer",
    "1",
    "2",
    "3",
    "42",
    "numbers",
    "add",
    "multiply",
    "divide,",
    "question:",
    "answer.",
    "why?",
    "because!",
]


def prompt(seed: int, n_words: int) -> str:
    """A deterministic prompt of about ``n_words`` words."""
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


@dataclasses.dataclass(frozen=True)
class Request:
    id: str
    prompt: str
    max_tokens: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    # waves[rank][wave] -> requests; ranks beyond len(waves) get nothing.
    waves: tuple[tuple[tuple[Request, ...], ...], ...]

    def requests(self) -> list[Request]:
        return [r for rank in self.waves for wave in rank for r in wave]

    def for_ranks(self, dp_size: int) -> list[list[list[Request]]]:
        """Waves per rank for ``dp_size`` ranks. The scenario's ranks are folded
        onto fewer ranks (rank i goes to i % dp_size, waves merged by index) and
        padded with idle ranks if there are more."""
        out: list[list[list[Request]]] = [[] for _ in range(dp_size)]
        for i, rank_waves in enumerate(self.waves):
            target = out[i % dp_size]
            for w, wave in enumerate(rank_waves):
                while len(target) <= w:
                    target.append([])
                target[w].extend(wave)
        return out

    def to_json(self, dp_size: int) -> dict:
        return {
            "name": self.name,
            "waves": [[[r.to_json() for r in wave] for wave in rank] for rank in self.for_ranks(dp_size)],
        }


def _reqs(tag: str, seeds_words_tokens: list[tuple[int, int, int]]) -> tuple[Request, ...]:
    return tuple(
        Request(f"{tag}-{i}", prompt(seed, words), tokens) for i, (seed, words, tokens) in enumerate(seeds_words_tokens)
    )


EVEN = Scenario(
    "even",
    "4 prompts per rank, mixed lengths, 16 tokens each",
    (
        (_reqs("even-r0", [(1, 5, 16), (2, 30, 16), (3, 12, 16), (4, 60, 16)]),),
        (_reqs("even-r1", [(5, 40, 16), (6, 3, 16), (7, 25, 16), (8, 9, 16)]),),
    ),
)

UNEVEN = Scenario(
    "uneven",
    "7 prompts (mixed lengths) on rank 0 vs 1 long prompt on rank 1",
    (
        (
            _reqs(
                "uneven-r0",
                [(11, 4, 20), (12, 8, 12), (13, 15, 24), (14, 2, 8), (15, 20, 16), (16, 6, 20), (17, 10, 12)],
            ),
        ),
        (_reqs("uneven-r1", [(18, 70, 24)]),),
    ),
)

IDLE_RANK = Scenario(
    "idle-rank",
    "fewer prompts than ranks: rank 1 has no prompt (1-token placeholder, then idle)",
    ((_reqs("idle-r0", [(21, 12, 32)]),),),
)

# Waves with different max_tokens: requests finish at different times, so
# within a wave one rank idles while the other decodes, and both get busy again
# at the next wave. The longest request decodes 320 tokens (hundreds of decode
# steps).
LONG = Scenario(
    "long",
    "4 waves, hundreds of decode steps; requests finish at different times, ranks alternate idle/busy",
    (
        (
            _reqs("long-r0-w0", [(31, 10, 40), (32, 25, 320), (33, 5, 90)]),
            _reqs("long-r0-w1", [(34, 15, 60), (35, 40, 150)]),
            _reqs("long-r0-w2", [(36, 8, 25)]),
        ),
        (
            _reqs("long-r1-w0", [(37, 30, 15)]),
            _reqs("long-r1-w1", [(38, 6, 200), (39, 18, 30), (40, 50, 70), (41, 3, 110)]),
            (),
            _reqs("long-r1-w3", [(42, 12, 50)]),
        ),
    ),
)

# The online server: the same kind of mix, sent concurrently over HTTP with
# staggered arrival (see verify/server.py).
SERVE = Scenario(
    "serve",
    "concurrent HTTP requests with staggered arrival and mixed lengths",
    ((_reqs("serve", [(51 + i, 3 + (i * 13) % 50, 8 + (i * 7) % 40) for i in range(10)]),),),
)

# One request for a server with several DP engines: every other engine is idle
# for the whole request, woken by vLLM's DP coordinator to run dummy steps.
SERVE_ONE = Scenario(
    "serve-one",
    "a single HTTP request: every other DP engine idle for all of it",
    ((_reqs("serve-one", [(71, 20, 48)]),),),
)

ALL_SCENARIOS = {s.name: s for s in (EVEN, UNEVEN, IDLE_RANK, LONG, SERVE, SERVE_ONE)}
