"""What runs inside vLLM's processes: the plugin vLLM loads, the collective ledger, NaN watch,
non-finite counting and the async-scheduling probe. Each is off unless its VLLM_EPDP_* switch is set."""
