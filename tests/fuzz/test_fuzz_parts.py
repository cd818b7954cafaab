"""The fuzzer's parts without vLLM: schedules drawn within the limits and
round-tripping as JSON, the client against a stand-in completion server
(streaming, n=2, aborts, timeouts), and the verdict's rules. Seconds."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings

from vllm_epdp.diagnostics import async_probe
from vllm_epdp.fuzz import client, offline
from vllm_epdp.fuzz.schedule import WAVE_GAP_S, Request, Schedule
from vllm_epdp.fuzz.strategies import Limits, idle_phase, schedules
from vllm_epdp.fuzz.verdict import TIE_LOGPROB, judge

LIMITS = Limits(vocab_size=50, max_model_len=64, max_requests=6, max_new_tokens=8)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(schedules(LIMITS))
def test_drawn_schedules_respect_the_limits(schedule):
    assert 1 <= len(schedule.requests) <= LIMITS.max_requests
    assert [r.at_s for r in schedule.requests] == sorted(r.at_s for r in schedule.requests)
    for r in schedule.requests:
        assert len(r.prompt) >= 1 and len(r.prompt) + r.max_tokens <= LIMITS.max_model_len
        assert all(0 <= t < LIMITS.vocab_size for t in r.prompt)
        assert r.max_tokens >= 1 and r.n in (1, 2)
        if r.aborts:
            assert r.stream and 0 <= r.abort_after < r.max_tokens
    assert Schedule.from_json(json.loads(json.dumps(schedule.to_json()))) == schedule


SMALL_KV = Limits(vocab_size=50, max_model_len=512, kv_block_tokens=128)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(schedules(SMALL_KV))
def test_small_kv_schedules_open_with_a_burst_that_must_preempt(schedule):
    """Six or more prompts of under two blocks each, together, every one
    growing into a third block: three fill a 6-block cache, then must preempt."""

    def grows_into_a_third_block(r):
        return 128 < len(r.prompt) < 256 < len(r.prompt) + r.max_tokens <= SMALL_KV.max_model_len

    burst = [r for r in schedule.requests if r.at_s <= 0.2 and grows_into_a_third_block(r)]
    assert len(burst) >= 6
    assert len(schedule.requests) > len(burst)  # drawn traffic follows the burst


OFFLINE = Limits(vocab_size=50, max_model_len=64, max_requests=6, max_new_tokens=8, offline_dp=2)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(schedules(OFFLINE))
def test_offline_schedules_place_every_request_on_a_dp_rank(schedule):
    """Offline DP has no router: each request names the DP rank that submits
    it, and nothing streams or aborts (LLM.generate does neither)."""
    assert all(r.rank in (0, 1) and not r.stream and not r.aborts for r in schedule.requests)
    plan = offline.waves(schedule, 2)
    placed = sorted(q["id"] for wave in plan for rank in wave for q in rank)
    assert placed == list(range(len(schedule.requests)))  # every request once
    assert all(len(wave) == 2 for wave in plan)


SERVING_DP2 = Limits(vocab_size=50, max_model_len=512, max_requests=8, max_new_tokens=8, pin_dp=2, max_long_tokens=120)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(idle_phase(SERVING_DP2, 1.0))
def test_idle_phase_keeps_one_rank_decoding_and_wakes_the_other(requests):
    """A long answer pinned to one DP rank, then one to three requests pinned
    to the other, sent while the long one still decodes (well inside its
    64+ steps at tens of ms each)."""
    busy, *wakes = requests
    assert busy.rank in (0, 1) and busy.at_s == 1.0
    assert 64 <= busy.max_tokens <= SERVING_DP2.max_long_tokens
    assert len(busy.prompt) + busy.max_tokens <= SERVING_DP2.max_model_len
    assert 1 <= len(wakes) <= 3
    for wake in wakes:
        assert wake.rank == 1 - busy.rank and 1.2 <= wake.at_s <= 4.3
        assert len(wake.prompt) + wake.max_tokens <= SERVING_DP2.max_model_len


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(schedules(SERVING_DP2))
def test_serving_schedules_pin_some_requests_to_a_dp_rank(schedule):
    assert all(r.rank in (None, 0, 1) for r in schedule.requests)
    assert len(schedule.requests) <= SERVING_DP2.max_requests


def test_offline_waves_end_at_long_gaps_and_leave_ranks_idle():
    gap = WAVE_GAP_S + 0.5  # what the strategies put between waves
    schedule = Schedule(
        (
            Request(0.0, (1,), 2, rank=0),
            Request(0.3, (2,), 2, rank=0),  # a short gap: the same wave
            Request(0.3 + gap, (3,), 2, rank=1),  # a long gap: a new wave, rank 0 idle in it
            Request(0.4 + gap, (4,), 2),  # no rank drawn (a saved serving schedule): by its index
        )
    )
    plan = offline.waves(schedule, 2)
    ids = [[[q["id"] for q in rank] for rank in wave] for wave in plan]
    assert ids == [[[0, 1], []], [[], [2, 3]]]
    assert plan[1][1][0] == {"id": 2, "prompt": [3], "max_tokens": 2, "n": 1}


def test_saved_schedules_without_ranks_still_load():
    data = SCHEDULE.to_json()
    for r in data["requests"]:
        del r["rank"]  # a schedule saved before offline targets existed
    assert Schedule.from_json(data) == SCHEDULE
    assert SCHEDULE.digest() == Schedule.from_json(data).digest() != Schedule(SCHEDULE.requests[:1]).digest()


def test_offline_answers_keep_nonfinite_logprobs_visible():
    """The ranks write NaN/inf as strings (JSON has none); they must come back
    as floats the verdict counts."""
    answer = offline.answer_of({"choices": [[4, 5]], "logprobs": [[-0.5, "nan"]]})
    assert answer.status == "ok" and answer.choices == [[4, 5]]
    outcome = judge(Schedule((Request(0.0, (1,), 2),)), [answer], {}, [])
    assert outcome.nonfinite == 1
    assert offline.answer_of(None).status == "error"


def greedy(prompt, max_tokens, shift=0):
    """The stand-in's 'model': a token sequence that depends on the prompt."""
    return [(sum(prompt) + 3 * i + shift) % 50 for i in range(max_tokens)]


class StandIn:
    """Completions with prompts as token ids and answers as token ids;
    ``shift`` makes it answer wrongly, ``stall`` never answers."""

    def __init__(self, shift=0, stall=False):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.dp_ranks.append(self.headers.get("X-data-parallel-rank"))
                if stall:
                    time.sleep(30)
                ids = greedy(req["prompt"], req["max_tokens"], shift)

                def choice(i, tokens):
                    lp = {"tokens": [f"token_id:{t}" for t in tokens], "token_logprobs": [-0.5] * len(tokens)}
                    if req["logprobs"] > 1:  # the runner-up of every position, 0.25 behind
                        lp["top_logprobs"] = [{f"token_id:{t}": -0.5, f"token_id:{(t + 1) % 50}": -0.75}
                                              for t in tokens]  # fmt: skip
                    return {"index": i, "logprobs": lp}

                if not req["stream"]:
                    body = json.dumps({"choices": [choice(i, ids) for i in range(req["n"])]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for t in ids:
                        for i in range(req["n"]):
                            self.wfile.write(f"data: {json.dumps({'choices': [choice(i, [t])]})}\n\n".encode())
                            self.wfile.flush()
                        time.sleep(0.01)
                    self.wfile.write(b"data: [DONE]\n\n")
                except BrokenPipeError:
                    outer.hangups += 1

        self.hangups = 0
        self.dp_ranks: list[str | None] = []  # each request's X-data-parallel-rank header
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.close()


SCHEDULE = Schedule(
    (
        Request(0.0, (1, 2, 3), 4),
        Request(0.05, (7,), 1),
        Request(0.1, (5, 5), 5, n=2, stream=True),
        Request(0.1, (9, 9, 9), 6, stream=True, abort_after=2),
    )
)
REFERENCE = {r.key(): greedy(r.prompt, r.max_tokens) for r in SCHEDULE.requests}


def test_client_and_verdict_pass_a_right_server(stand_in):
    answers = client.run(stand_in.url, "m", SCHEDULE, timeout_s=10)
    assert [a.status for a in answers] == ["ok", "ok", "ok", "aborted"]
    assert answers[2].choices == [greedy((5, 5), 5)] * 2  # n=2, streamed
    assert answers[3].choices[0] == greedy((9, 9, 9), 6)[:2]  # hung up after 2 tokens
    outcome = judge(SCHEDULE, answers, REFERENCE, [])
    assert outcome.ok, outcome.problems
    assert (outcome.requests, outcome.aborts, outcome.divergences) == (4, 1, 0)


def test_a_pinned_request_names_its_dp_rank_and_the_reference_gets_none(stand_in):
    client.run(stand_in.url, "m", Schedule((Request(0.0, (1,), 1, rank=1), Request(0.0, (2,), 1))), timeout_s=10)
    assert sorted(stand_in.dp_ranks, key=str) == ["1", None]  # the header, only where pinned


def test_async_probe_verdict(tmp_path):
    """What the fuzzer and tests conclude from the engine cores' step counts."""

    def engine(pid, sync, queued, overlapped, size):
        data = dict(pid=pid, dp_rank=pid % 2, sync_steps=sync, queued_steps=queued, overlapped=overlapped,
                    batch_queue_size=size)  # fmt: skip
        (tmp_path / f"engine-{pid}.json").write_text(json.dumps(data))

    assert async_probe.problems(tmp_path, expect_async=True) == [
        f"no engine core stepped with the async probe on ({tmp_path})"
    ]
    engine(10, 0, 40, 12, 2)
    engine(11, 0, 40, 0, 2)  # an idle rank (dummy batches only) never overlaps: one overlapping engine is enough
    assert async_probe.problems(tmp_path, expect_async=True) == []
    assert async_probe.problems(tmp_path, expect_async=False) == [
        "engine core pid 10 (DP rank 0): 40 step(s) through a batch queue of 2",
        "engine core pid 11 (DP rank 1): 40 step(s) through a batch queue of 2",
    ]
    engine(10, 0, 40, 0, 2)
    assert async_probe.problems(tmp_path, expect_async=True) == [
        "no engine core scheduled a step while another was executing: nothing was pipelined"
    ]
    engine(11, 25, 0, 0, 1)
    assert async_probe.problems(tmp_path, expect_async=True) == [
        "engine core pid 11 (DP rank 1): 25 synchronous step(s): async scheduling was not in effect"
    ]


def test_verdict_names_divergence_hang_and_ledger():
    wrong = StandIn(shift=1)
    try:
        answers = client.run(wrong.url, "m", SCHEDULE, timeout_s=10)
    finally:
        wrong.close()
    outcome = judge(SCHEDULE, answers, REFERENCE, ["gloo:0,1#0: members disagree at #7"])
    assert outcome.divergences == 5  # 4 answers, one of them with 2 choices
    assert any("differs from DP=1 at token 0" in p for p in outcome.problems)
    assert outcome.problems[-1] == "collective ledger: gloo:0,1#0: members disagree at #7"
    stalled = StandIn(stall=True)
    try:
        answers = client.run(stalled.url, "m", Schedule((Request(0.0, (1,), 2),)), timeout_s=1)
    finally:
        stalled.close()
    outcome = judge(Schedule((Request(0.0, (1,), 2),)), answers, REFERENCE, [])
    assert outcome.hangs == 1 and "HANG" in outcome.problems[0]


def test_incomplete_answer_is_a_problem():
    req = Request(0.0, (1, 2), 4)
    short = client.Answer("ok", [[1, 2]], [[-0.1, -0.1]])
    nan = client.Answer("ok", [greedy((1, 2), 4)], [[-0.1, float("nan"), -0.1, -0.1]])
    outcome = judge(Schedule((req, req)), [short, nan], {req.key(): greedy((1, 2), 4)}, [])
    assert "choice 0 has 2 tokens, 4 asked for" in outcome.problems[0]
    assert outcome.nonfinite == 1


def test_client_reads_the_most_likely_tokens_when_asked(stand_in):
    answer = client.send(stand_in.url, "m", Request(0.0, (1, 2), 3), timeout_s=10, top=2)
    first = greedy((1, 2), 3)[0]
    assert answer.top[0][0] == {first: -0.5, (first + 1) % 50: -0.75}
    assert client.send(stand_in.url, "m", Request(0.0, (1, 2), 3), timeout_s=10).top == [[]]


def test_a_different_pick_is_a_tie_only_where_dp1_nearly_tied():
    """fp32 noise may flip a greedy pick between two tokens whose logprobs
    agree to ~1e-6 (a preempted request's recompute does): that is a tie and
    the answers are compared no further. Anywhere else, or for a token DP=1
    did not nearly pick, it is a divergence."""
    req = Request(0.0, (1, 2), 3)
    want = {req.key(): [7, 8, 9]}
    target = [client.Answer("ok", [[7, 5, 1]], [[-1.0, -1.0, -1.0]])]
    tied = {req.key(): [{7: -0.1}, {8: -1.0, 5: -1.0 - TIE_LOGPROB / 10}, {9: -0.2}]}
    apart = {req.key(): [{7: -0.1}, {8: -1.0, 5: -1.0 - 10 * TIE_LOGPROB}, {9: -0.2}]}
    other = {req.key(): [{7: -0.1}, {8: -1.0, 6: -1.0}, {9: -0.2}]}
    outcome = judge(Schedule((req,)), target, want, [], tops=tied)
    assert outcome.ok and (outcome.ties, outcome.divergences) == (1, 0)
    for tops in (apart, other, None):
        outcome = judge(Schedule((req,)), target, want, [], tops=tops)
        assert outcome.divergences == 1 and outcome.ties == 0
        assert "differs from DP=1 at token 1" in outcome.problems[0]
