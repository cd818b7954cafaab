"""log_forensics: the first error of a log is the root cause a person needs,
found through vLLM's child-process prefixes and faulthandler's dumps."""

from vllm_epdp.harness.log_forensics import first_error, log_tail

VLLM_LOG = """\
INFO 11-22 08:28:10 [core.py:90] starting
(EngineCore_DP0 pid=123) ERROR 11-22 08:28:16 [core.py:1512] Traceback (most recent call last):
(EngineCore_DP0 pid=123) ERROR 11-22 08:28:16 [core.py:1512]   File "/x/gpu_model_runner.py", line 42, in execute_model
(EngineCore_DP0 pid=123) ERROR 11-22 08:28:16 [core.py:1512]     raise RuntimeError("rows")
(EngineCore_DP0 pid=123) ERROR 11-22 08:28:16 [core.py:1512] RuntimeError: rows
Traceback (most recent call last):
  File "/x/vllm/entrypoints/llm.py", line 7, in generate
EngineDeadError: the engine died
"""

FAULT_LOG = """\
Fatal Python error: Segmentation fault

Thread 0x00007f (most recent call first):
  File "/x/vllm/model_executor/layers/fused_moe/cpu_fused_moe.py", line 88 in forward
"""


def test_the_first_exception_with_the_frame_that_raised_it(tmp_path):
    log = tmp_path / "rank0.log"
    log.write_text(VLLM_LOG)
    assert first_error(log) == "RuntimeError: rows (gpu_model_runner.py:42 in execute_model)"


def test_a_fatal_signal_is_the_first_error(tmp_path):
    log = tmp_path / "rank1.log"
    log.write_text(FAULT_LOG)
    assert first_error(log) == "Fatal Python error: Segmentation fault"


def test_no_error_and_no_log(tmp_path):
    log = tmp_path / "fine.log"
    log.write_text("one\ntwo\nthree\n")
    assert first_error(log) == "" and first_error(tmp_path / "missing.log") == ""
    assert log_tail(log, 2) == "two\nthree" and log_tail(log, 0) == ""
