"""The compiler half of the backend: it accepts the "cpu" target and refuses
to compile, because the interpreter runs the kernels instead."""

from typing import Any, NoReturn

from triton.backends.compiler import BaseBackend, GPUTarget


class InterpreterOnlyBackend(BaseBackend):
    @staticmethod
    def supports_target(target: GPUTarget) -> bool:
        return target.backend == "cpu"

    def hash(self) -> str:
        return "epdp-triton-cpu-interpreter-only"

    def parse_options(self, options: dict) -> NoReturn:
        raise RuntimeError("this Triton 'cpu' backend cannot compile: set TRITON_INTERPRET=1")

    def add_stages(self, stages: dict, options: Any, language: Any = None) -> NoReturn:
        raise RuntimeError("this Triton 'cpu' backend cannot compile: set TRITON_INTERPRET=1")

    def load_dialects(self, context: Any) -> None:
        pass

    def get_module_map(self) -> dict:
        return {}
