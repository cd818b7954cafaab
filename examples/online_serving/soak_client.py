"""Soak a vLLM server with traffic that makes DP ranks go idle and busy.

    python soak_client.py --url http://127.0.0.1:8000 --seconds 600
    VLLM_EPDP_LEDGER=/tmp/ledger ./serve_dp_ep_cpu.sh MODEL &     # then, after:
    vllm-epdp ledger compare /tmp/ledger

Requests arrive at random (Poisson, --rate per second) with random lengths
(--lengths: max_tokens, 1-token ones included), and every --pause-every
seconds the traffic stops for --pause seconds so that every rank goes idle
and the DP waves end; the next request wakes them. This is the traffic of the
"deadlock after about an hour" reports (upstream #43547): a rank a few
collectives off its peers shows up as requests that stop finishing. Run the
server with VLLM_EPDP_LEDGER=DIR to see which rank drifted and where.

Each request must come back with exactly the tokens it asked for
(ignore_eos) within --timeout. Progress every 10 s on stderr; the last line is
the verdict. Exit code 0 = PASS, 1 = FAIL (a request failed, timed out or came
back short; requests still out at the end count as hung), 2 = usage or the
server never became healthy. Standard library only.
"""

import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPTS = [
    "The quick brown fox",
    "Expert parallel and data parallel on CPU. The quick brown fox jumps over the lazy dog.",
    "one two three four five six seven eight nine ten",
    "Hello world, this is",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--model", help="served model name (default: the server's first)")
    p.add_argument("--seconds", type=float, default=600.0, help="how long to send traffic")
    p.add_argument("--rate", type=float, default=2.0, help="mean arrivals per second")
    p.add_argument(
        "--lengths",
        default="1,1,2,4,8,16,32,64",
        help="max_tokens to pick from at random (repeat a value to weight it)",
    )
    p.add_argument(
        "--max-in-flight", type=int, default=16, help="an arrival is skipped while this many requests are out"
    )
    p.add_argument("--pause-every", type=float, default=30.0, help="seconds of traffic between pauses (0: never pause)")
    p.add_argument("--pause", type=float, default=3.0, help="seconds of silence per pause")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, s")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the server to become healthy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.lengths = [int(x) for x in args.lengths.split(",")]
    except ValueError:
        p.error(f"--lengths: comma-separated integers, got {args.lengths!r}")
    if not args.lengths or min(args.lengths) < 1 or args.rate <= 0 or args.seconds <= 0:
        p.error("--lengths must be >= 1, --rate and --seconds > 0")
    return args


def call(url, path, body=None, timeout=30.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def wait_healthy(url, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5).close()
            return True
        except (urllib.error.URLError, OSError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(1)


class Tally:
    """Counts shared by the request threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = self.done = self.tokens = 0
        self.failures = []  # (request number, what went wrong)
        self.in_flight = 0

    def start(self):
        with self.lock:
            self.sent += 1
            self.in_flight += 1
            return self.sent

    def finish(self, n, asked, got, error):
        with self.lock:
            self.in_flight -= 1
            if error is None and got == asked:
                self.done += 1
                self.tokens += got
            else:
                self.failures.append((n, error or f"asked {asked} tokens, got {got}"))


def one_request(args, model, n, max_tokens, tally):
    got, error = None, None
    try:
        out = call(
            args.url,
            "/v1/completions",
            {
                "model": model,
                "prompt": PROMPTS[n % len(PROMPTS)],
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "ignore_eos": True,
            },
            timeout=args.timeout,
        )
        got = out["usage"]["completion_tokens"]
    except Exception as e:  # any failure of this request is the verdict's business
        error = f"{type(e).__name__}: {e}"
    tally.finish(n, max_tokens, got, error)


def soak(args, model):
    rng = random.Random(args.seed)
    tally = Tally()
    threads = []
    t0 = time.monotonic()
    next_report = 10.0
    next_pause = args.pause_every if args.pause_every > 0 else float("inf")
    while (now := time.monotonic() - t0) < args.seconds:
        if now >= next_report:
            print(
                f"[soak] {now:.0f}/{args.seconds:.0f} s: {tally.sent} sent, {tally.done} done, "
                f"{len(tally.failures)} failed, {tally.in_flight} in flight",
                file=sys.stderr,
                flush=True,
            )
            next_report += 10.0
        if now >= next_pause:
            time.sleep(min(args.pause, args.seconds - now))
            next_pause = time.monotonic() - t0 + args.pause_every
            continue
        time.sleep(min(rng.expovariate(args.rate), args.seconds - now))
        if tally.in_flight >= args.max_in_flight or tally.failures:
            continue  # let the server catch up; after a failure, stop adding load
        n = tally.start()
        t = threading.Thread(target=one_request, args=(args, model, n, rng.choice(args.lengths), tally), daemon=True)
        t.start()
        threads.append(t)
    deadline = time.monotonic() + args.timeout + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return tally, time.monotonic() - t0


def main(argv=None):
    args = parse_args(argv)
    args.url = args.url.rstrip("/")
    if not wait_healthy(args.url, args.wait):
        print(f"VERDICT: ERROR server at {args.url} not healthy after {args.wait:.0f} s", flush=True)
        return 2
    try:
        model = args.model or call(args.url, "/v1/models")["data"][0]["id"]
    except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as e:
        print(f"VERDICT: ERROR cannot list models at {args.url}: {e}", flush=True)
        return 2
    tally, wall = soak(args, model)
    hung = tally.in_flight
    for n, what in tally.failures[:10]:
        print(f"request #{n}: {what}", file=sys.stderr)
    summary = f"{tally.done}/{tally.sent} requests, {tally.tokens} tokens in {wall:.0f} s"
    if tally.failures or hung:
        print(
            f"VERDICT: FAIL {summary}; {len(tally.failures)} failed, {hung} never came back "
            f"(server stacks: py-spy dump; ledger: vllm-epdp ledger compare DIR)",
            flush=True,
        )
        return 1
    print(f"VERDICT: PASS {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
