"""Stand-in for `python -m vllm.entrypoints.cli.main serve MODEL --port N ...`
(tests/test_verify_server.py): answers /health and /v1/completions (every
token id 7, logprob -0.5, as token ids), and on SIGINT does what
FAKE_SERVE_ON_SIGINT says: exit0, exitN (exit code N) or ignore."""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send({})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = req["max_tokens"]
        self._send(
            {
                "choices": [
                    {
                        "logprobs": {
                            "tokens": ["token_id:7"] * n,
                            "token_logprobs": [-0.5] * n,
                            "top_logprobs": [{"token_id:7": -0.5, "token_id:9": -2.0}] * n,
                        }
                    }
                ]
            }
        )


def serve_until_killed():
    while True:
        time.sleep(1)


def main():
    port = int(sys.argv[sys.argv.index("--port") + 1])
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    how = os.environ.get("FAKE_SERVE_ON_SIGINT", "exit0")

    def on_sigint(signum, frame):
        if how != "ignore":
            os._exit(int(how.removeprefix("exit")))

    signal.signal(signal.SIGINT, on_sigint)
    if how == "ignore":
        import threading

        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        serve_until_killed()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
