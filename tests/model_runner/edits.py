"""Edits for vllm_epdp.patching.variants.overlay_with_edit: fixes that are not in the series, for experiments."""

# The upstream proposal for #43547 (#44601, #51984, #53578): the runner joins
# the DP step on every zero-token step, not only under external_launcher.
# An edit for overlay_with_edit("naive-idle-join", *NAIVE_IDLE_JOIN).
NAIVE_IDLE_JOIN = (
    "vllm/v1/worker/gpu_model_runner.py",
    """                if (
                    self.parallel_config.distributed_executor_backend
                    == "external_launcher"
                    and self.parallel_config.data_parallel_size > 1
                ):""",
    """                if self.parallel_config.data_parallel_size > 1:""",
)
