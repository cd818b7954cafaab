"""Send a schedule to a vLLM server the way clients do, and collect what came
back: each request from its own thread at its send time, greedy, prompts as
token ids, answers as token ids with their logprobs; streaming requests read
the server-sent events, and an aborting one hangs up after its token count.
Standard library HTTP only (what the examples use too)."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import urllib.error
import urllib.request

from vllm_epdp.fuzz.schedule import Request, Schedule
from vllm_epdp.harness import serving


@dataclasses.dataclass
class Answer:
    status: str  # "ok", "aborted" (we hung up), "error", "timeout"
    choices: list[list[int]] = dataclasses.field(default_factory=list)  # token ids per choice
    logprobs: list[list[float]] = dataclasses.field(default_factory=list)
    error: str = ""
    # Per choice and position, the most likely tokens and their logprobs
    # ({token id: logprob}), when asked for (send's ``top``): the DP=1
    # reference's, to tell a near-tie from a divergence.
    top: list[list[dict[int, float]]] = dataclasses.field(default_factory=list)


def _body(model: str, req: Request, top: int = 1) -> bytes:
    body = {
        "model": model,
        "prompt": list(req.prompt),
        "max_tokens": req.max_tokens,
        "n": req.n,
        "temperature": 0.0,
        "logprobs": top,
        "ignore_eos": True,
        "return_tokens_as_token_ids": True,
        "stream": req.stream,
    }
    if req.n > 1:
        # vLLM refuses n > 1 with greedy sampling (temperature 0); sampling
        # from the single most likely token picks what greedy picks.
        body.update(temperature=1.0, top_k=1)
    return json.dumps(body).encode()


def _add(answer: Answer, choice: dict) -> None:
    index = choice.get("index", 0)
    while len(answer.choices) <= index:
        answer.choices.append([])
        answer.logprobs.append([])
        answer.top.append([])
    lp = choice.get("logprobs") or {}
    answer.choices[index] += [serving.token_id(t) for t in lp.get("tokens") or []]
    answer.logprobs[index] += [float(x) for x in lp.get("token_logprobs") or []]
    answer.top[index] += [
        {serving.token_id(t): float(x) for t, x in (pos or {}).items()} for pos in lp.get("top_logprobs") or []
    ]


def send(url: str, model: str, req: Request, timeout_s: float, top: int = 1) -> Answer:
    """One completion request, asking the ``top`` most likely tokens per
    position; never raises."""
    headers = {"Content-Type": "application/json"}
    if req.rank is not None:
        headers["X-data-parallel-rank"] = str(req.rank)  # vLLM's router sends it to that DP rank
    http = urllib.request.Request(url + "/v1/completions", data=_body(model, req, top), headers=headers)
    answer = Answer("ok")
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as r:
            if not req.stream:
                for choice in json.loads(r.read())["choices"]:
                    _add(answer, choice)
                return answer
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                for choice in json.loads(data).get("choices", []):
                    _add(answer, choice)
                if req.abort_after is not None and sum(len(c) for c in answer.choices) >= max(1, req.abort_after):
                    answer.status = "aborted"  # leaving the with-block closes the connection
                    return answer
            return answer
    except TimeoutError as exc:
        answer.status, answer.error = "timeout", f"no answer within {timeout_s:.0f} s ({exc})"
        return answer
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        timed_out = "timed out" in str(exc)
        answer.status = "timeout" if timed_out else "error"
        answer.error = f"no answer within {timeout_s:.0f} s" if timed_out else repr(exc)
        return answer


def run(url: str, model: str, schedule: Schedule, timeout_s: float) -> list[Answer]:
    """Send every request at its time; wait for all (each bounded by
    ``timeout_s``). Answers in the schedule's order."""
    answers: list[Answer | None] = [None] * len(schedule.requests)
    start = time.monotonic()

    def one(i: int, req: Request) -> None:
        time.sleep(max(0.0, req.at_s - (time.monotonic() - start)))
        answers[i] = send(url, model, req, timeout_s)

    threads = [threading.Thread(target=one, args=(i, r), daemon=True) for i, r in enumerate(schedule.requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 60.0)
    return [a or Answer("timeout", error="the client thread never returned") for a in answers]


_PREEMPTIONS = re.compile(r"^vllm:num_preemptions(?:_total)?(?:\{[^}]*\})?\s+([0-9.eE+]+)$", re.M)


def preemptions(url: str) -> int:
    """The server's preemption counter (its /metrics), summed over engines."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return 0
    return int(sum(float(v) for v in _PREEMPTIONS.findall(text)))
