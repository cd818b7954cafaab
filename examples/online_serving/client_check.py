"""Send concurrent greedy completions to a vLLM server and check the answers.

    python client_check.py --url http://127.0.0.1:8000 --reference ref.json
    python client_check.py --url http://127.0.0.1:8000 \\
        --reference-url http://127.0.0.1:8001          # a DP=1 server
    python client_check.py --url http://127.0.0.1:8000 --save ref.json

Every request is a /v1/completions call with temperature 0, `logprobs` top-k
and token ids instead of token strings (vLLM's `return_tokens_as_token_ids`), so
answers compare token for token. The reference is either a file (written by
this script's --save, or by examples/offline_inference/xpu_arc_b60_dp_ep.py
--save: same format) or a second server, e.g. the same model at DP=1.

Comparison (--criterion): `exact` (fp32 models): identical tokens; `close`
(bf16/fp16): where tokens differ, each must be in the other's top-k, then stop
comparing that answer. Any non-finite logprob fails, and answers made only of
token id 0 (`!!!!` on Qwen tokenizers: NaN logits) are called out.

Standard library only, so it runs on any machine that can reach the server.
The last line is the verdict; exit code 0 = PASS, 1 = FAIL, 2 = usage or
connection error.
"""

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [
    "The quick brown fox",
    "Hello world, this is a tiny model. Expert parallel and data parallel",
    "one two three",
    "Expert parallel and data parallel on CPU. The quick brown fox jumps over "
    "the lazy dog. one two three four five six seven eight nine ten",
    "nine ten",
    "The lazy dog",
    "Hello world, this is",
    "four five six seven eight nine ten one two three four five",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--model", help="served model name (default: the server's first)")
    p.add_argument("--num-requests", type=int, default=16, help="requests to send; prompts are reused cyclically")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--stagger", type=float, default=0.0, help="seconds between request submissions (ranks go idle/busy)"
    )
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--logprobs", type=int, default=5)
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the server(s) to become healthy")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, s")
    p.add_argument("--save", metavar="OUT.json")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", metavar="REF.json")
    ref.add_argument("--reference-url", metavar="URL")
    p.add_argument("--criterion", choices=["exact", "close"], default="exact")
    return p.parse_args(argv)


class Server:
    def __init__(self, url, timeout):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def wait_healthy(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=5).close()
                return
            except (urllib.error.URLError, OSError) as e:
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"{self.url} not healthy: {e}") from e
                time.sleep(1.0)

    def first_model(self):
        return self._call("/v1/models")["data"][0]["id"]

    def complete(self, model, prompt, max_tokens, logprobs):
        out = self._call(
            "/v1/completions",
            {
                "model": model,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "logprobs": logprobs,
                "ignore_eos": True,
                "return_tokens_as_token_ids": True,
            },
        )
        choice = out["choices"][0]
        lp = choice["logprobs"]
        token_ids = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
        top = [{k.removeprefix("token_id:"): v for k, v in (d or {}).items()} for d in lp["top_logprobs"]]
        chosen = [float("nan") if x is None else x for x in lp["token_logprobs"]]
        return {
            "prompt": prompt,
            "token_ids": token_ids,
            "text": choice["text"],
            "logprobs": chosen,
            "top_logprobs": top,
        }


def run_requests(server, model, prompts, args, label):
    """Send all prompts with bounded concurrency; return results in order."""
    results = [None] * len(prompts)
    done = 0

    def one(i):
        r = server.complete(model, prompts[i], args.max_tokens, args.logprobs)
        r["index"] = i
        return i, r

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = []
        for i in range(len(prompts)):
            futures.append(pool.submit(one, i))
            if args.stagger:
                time.sleep(args.stagger)
        for f in futures:
            i, r = f.result()
            results[i] = r
            done += 1
            if done % max(1, len(prompts) // 4) == 0 or done == len(prompts):
                print(f"[{label}] {done}/{len(prompts)} answers ({time.monotonic() - t0:.1f}s)", flush=True)
    return results


def compare_one(r, ref, criterion):
    """None if r matches ref, else a one-line reason. Also returns max diff."""
    a, b = r["token_ids"], ref["token_ids"]
    max_diff = 0.0
    for pos in range(min(len(a), len(b))):
        if a[pos] == b[pos]:
            max_diff = max(max_diff, abs(r["logprobs"][pos] - ref["logprobs"][pos]))
            continue
        in_each_other = str(a[pos]) in ref["top_logprobs"][pos] and str(b[pos]) in r["top_logprobs"][pos]
        if criterion == "close" and in_each_other:
            return None, max_diff
        return (
            f"token {pos} is {a[pos]}, reference {b[pos]}" + ("" if in_each_other else " (not in each other's top-k)")
        ), max_diff
    if len(a) != len(b):
        return f"{len(a)} tokens, reference {len(b)}", max_diff
    return None, max_diff


def symptoms(r):
    out = []
    if any(not math.isfinite(x) for x in r["logprobs"]):
        out.append("non-finite logprob (NaN logits)")
    if len(r["token_ids"]) >= 4 and all(t == 0 for t in r["token_ids"]):
        out.append("only token id 0: the '!!!!' symptom (NaN logits), see debug.md")
    return out


def main(argv=None):
    args = parse_args(argv)
    target = Server(args.url, args.timeout)
    ref_server = Server(args.reference_url, args.timeout) if args.reference_url else None
    reference = None
    prompts = PROMPTS
    if args.reference:
        with open(args.reference) as f:
            reference = {r["prompt"]: r for r in json.load(f)["prompts"]}
        prompts = list(reference)  # ask exactly what the reference answered
    prompts = [prompts[i % len(prompts)] for i in range(args.num_requests)]

    try:
        for s in filter(None, [target, ref_server]):
            if args.wait:
                print(f"waiting up to {args.wait:.0f}s for {s.url} ...", flush=True)
                s.wait_healthy(args.wait)
        model = args.model or target.first_model()
        print(
            f"model {model!r}: {len(prompts)} requests, concurrency {args.concurrency}, max_tokens {args.max_tokens}",
            flush=True,
        )
        results = run_requests(target, model, prompts, args, "target")
        if ref_server:
            uniq = list(dict.fromkeys(prompts))
            ref_results = run_requests(ref_server, model, uniq, args, "reference")
            reference = {r["prompt"]: r for r in ref_results}
    except (ConnectionError, urllib.error.URLError, OSError) as e:
        print(f"client_check: error: cannot talk to the server: {e}", file=sys.stderr)
        return 2

    if args.save:
        with open(args.save, "w") as f:
            json.dump({"config": {"url": args.url, "model": model}, "prompts": results}, f)
        print(f"saved {len(results)} answers to {args.save}", flush=True)

    problems, max_diff, matched = [], 0.0, 0
    for r in results:
        bad = [f"request {r['index']}: {s}" for s in symptoms(r)]
        if reference is not None:
            ref = reference.get(r["prompt"])
            if ref is None:
                bad.append(f"request {r['index']}: prompt not in reference")
            else:
                why, d = compare_one(r, ref, args.criterion)
                max_diff = max(max_diff, d)
                if why:
                    bad.append(f"request {r['index']}: {why}")
        matched += not bad
        problems += bad
    for p in problems:
        print("MISMATCH:", p, flush=True)
    if reference is not None:
        src = args.reference or args.reference_url
        summary = f"{matched}/{len(results)} answers matched {src} ({args.criterion}, max |dlogprob| {max_diff:.2e})"
    else:
        summary = f"{matched}/{len(results)} answers finite, no '!' runs (no reference)"
    print(f"VERDICT: {'FAIL' if problems else 'PASS'} {summary}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
