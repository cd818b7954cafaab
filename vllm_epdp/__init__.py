"""vllm-epdp: a patch series for vLLM that makes EP + DP correct, and the tools
to apply it to a vLLM install or checkout and to verify a DP x EP run against a
single-rank run."""

__version__ = "0.1.0"
