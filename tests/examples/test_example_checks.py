"""The examples' checks can fail: client_check.py against a fake OpenAI-style
server that answers with the symptoms users see (NaN logprobs, runs of token 0,
a wrong token), soak_client.py against one that answers short or never, and
the offline script's comparison rules. No vLLM engine."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from example_runs import CLIENT, OFFLINE, SOAK


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def answer(token_ids, logprob=-0.5):
    """One prompt's record in the examples' shared JSON format."""
    return {
        "token_ids": token_ids,
        "text": "x" * len(token_ids),
        "logprobs": [logprob] * len(token_ids),
        "top_logprobs": [{str(t): logprob, "999": -3.0} for t in token_ids],
    }


class FakeServer:
    """Serves /health, /v1/models and /v1/completions; `reply(prompt)` gives
    the token ids and logprob to answer with; `usage(request)`, if given, the
    completion_tokens it reports (else the number of ids)."""

    def __init__(self, reply, usage=None):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj):
                body = json.dumps(obj).encode()  # NaN is written as NaN, as vLLM's server does
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send({"data": [{"id": "fake"}]} if self.path == "/v1/models" else {})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ids, lp = reply(req["prompt"])
                self._send(
                    {
                        "choices": [
                            {
                                "text": "x" * len(ids),
                                "logprobs": {
                                    "tokens": [f"token_id:{t}" for t in ids],
                                    "token_logprobs": [lp] * len(ids),
                                    "top_logprobs": [{f"token_id:{t}": lp, "token_id:999": -3.0} for t in ids],
                                },
                            }
                        ],
                        "usage": {"completion_tokens": usage(req) if usage else len(ids)},
                    }
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


PROMPTS = ["alpha", "beta", "gamma"]


class _Good(dict):
    """The 'right' answer for any prompt: four ids derived from its text."""

    def __missing__(self, prompt):
        return [10 + ord(c) for c in (prompt + "    ")[:4]]


GOOD = _Good()


@pytest.fixture
def reference(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(
        json.dumps({"prompts": [{"index": i, "prompt": p, **answer(GOOD[p])} for i, p in enumerate(PROMPTS)]})
    )
    return path


def run_client(url, *args):
    res = subprocess.run(
        [sys.executable, str(CLIENT), "--url", url, "--num-requests", "6", "--concurrency", "3", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res.returncode, res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case, reply, expect",
    [
        ("matching", lambda p: (GOOD[p], -0.5), "VERDICT: PASS 6/6 answers matched"),
        ("nan", lambda p: (GOOD[p], math.nan), "VERDICT: FAIL 0/6"),
        ("bangs", lambda p: ([0, 0, 0, 0], -0.1), "VERDICT: FAIL 0/6"),
        ("one wrong token", lambda p: (GOOD[p][:2] + [77] + GOOD[p][3:], -0.5), "VERDICT: FAIL 0/6"),
    ],
)
def test_client_verdicts(case, reply, expect, reference):
    server = FakeServer(reply)
    try:
        rc, last = run_client(server.url, "--reference", str(reference))
    finally:
        server.close()
    assert last.startswith(expect), (case, last)
    assert rc == (0 if "PASS" in expect else 1)


@pytest.mark.timeout(120)
def test_client_against_reference_server():
    """--reference-url: the second server (e.g. DP=1) is the reference."""
    good, bad = FakeServer(lambda p: (GOOD[p], -0.5)), FakeServer(lambda p: ([0, 0, 0, 0], -0.5))
    try:
        rc_ok, last_ok = run_client(good.url, "--reference-url", good.url)
        rc_bad, last_bad = run_client(bad.url, "--reference-url", good.url)
    finally:
        good.close()
        bad.close()
    assert rc_ok == 0 and last_ok.startswith("VERDICT: PASS 6/6"), last_ok
    assert rc_bad == 1 and last_bad.startswith("VERDICT: FAIL"), last_bad


def test_client_unreachable_server_is_one_line_error():
    rc, last = run_client("http://127.0.0.1:9", "--timeout", "2")
    assert rc == 2 and "cannot talk to the server" in last


def run_soak(url, *args):
    res = subprocess.run(
        [sys.executable, str(SOAK), "--url", url, "--rate", "20", "--pause-every", "1", "--pause", "0.3", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res.returncode, res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr


def slow(seconds):
    def reply(prompt):
        time.sleep(seconds)
        return GOOD[prompt], -0.5

    return reply


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case, reply, usage, args, expect",
    [
        ("all tokens", lambda p: (GOOD[p], -0.5), lambda r: r["max_tokens"], ["--seconds", "2"], "VERDICT: PASS"),
        (
            "short answers",
            lambda p: (GOOD[p], -0.5),
            lambda r: r["max_tokens"] - 1,
            ["--seconds", "2", "--lengths", "4"],
            "VERDICT: FAIL",
        ),
        ("never answers", slow(30), None, ["--seconds", "1", "--timeout", "2"], "VERDICT: FAIL"),
    ],
)
def test_soak_verdicts(case, reply, usage, args, expect):
    server = FakeServer(reply, usage)
    try:
        rc, last = run_soak(server.url, *args)
    finally:
        server.close()
    assert last.startswith(expect), (case, last)
    assert rc == (0 if "PASS" in expect else 1), (case, last)


def test_soak_unreachable_server_and_bad_usage():
    assert run_soak("http://127.0.0.1:9", "--seconds", "1")[0] == 2
    rc, last = run_soak("http://127.0.0.1:9", "--lengths", "0")
    assert rc == 2 and "--lengths" in last


def test_offline_compare_rules():
    ex = load(OFFLINE, "offline_example")
    ref = {"prompts": [{"index": 0, "prompt": "a", **answer([1, 2, 3, 4])}]}
    same = [{"index": 0, "prompt": "a", **answer([1, 2, 3, 4], -0.5)}]
    assert ex.compare(same, ref, "exact")[:2] == (1, 1)
    # a token that differs but sits in each other's top-k: 'close' accepts, 'exact' does not
    swapped = answer([1, 999, 3, 4])
    swapped["top_logprobs"][1]["2"] = -0.7
    ref_close = json.loads(json.dumps(ref))
    ref_close["prompts"][0]["top_logprobs"][1]["999"] = -0.9
    diverged = [{"index": 0, "prompt": "a", **swapped}]
    assert ex.compare(diverged, ref_close, "close")[0] == 1
    assert ex.compare(diverged, ref_close, "exact")[0] == 0
    # not in each other's top-k: both fail
    wrong = [{"index": 0, "prompt": "a", **answer([1, 5, 3, 4])}]
    assert ex.compare(wrong, ref, "close")[0] == 0
    # the symptoms need no reference
    problems, warnings = ex.sanity([{"index": 0, "prompt": "a", **answer([0, 0, 0, 0], math.nan)}])
    assert problems and warnings


def test_offline_split_covers_every_prompt_once():
    ex = load(OFFLINE, "offline_example")
    for how in ("round-robin", "uneven"):
        for n, dp in ((8, 2), (8, 4), (1, 2), (3, 4)):
            parts = [ex.split_prompts(n, dp, r, how) for r in range(dp)]
            assert sorted(i for p in parts for i in p) == list(range(n)), (how, n, dp)
    assert ex.split_prompts(8, 2, 1, "uneven") == [7]
