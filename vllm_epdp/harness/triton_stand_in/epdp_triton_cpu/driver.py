"""The driver half: active only under TRITON_INTERPRET=1 (so Triton's own
driver choice never lands on it by accident), device = torch's cpu."""

import os
import time
from collections.abc import Callable
from typing import Any

from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


class InterpreterDriver(DriverBase):
    @classmethod
    def is_active(cls) -> bool:
        return interpreting()

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("the interpreter needs no launcher code")

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cpu", "interpreter", 0)

    def get_active_torch_device(self) -> Any:  # torch.device
        import torch

        return torch.device("cpu")

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: Any) -> None:
        pass

    def get_current_stream(self, device: Any = None) -> int:
        return 0

    def get_device_interface(self) -> Any:  # the torch.cpu module
        import torch

        return torch.cpu

    def get_benchmarker(self) -> Callable[..., float | list[float]]:
        """Autotuning times by the wall clock: the interpreter has no events."""

        def bench(
            kernel_call: Callable[[], object], *, quantiles: list[float] | None = None, **kwargs: Any
        ) -> float | list[float]:
            kernel_call()
            start = time.perf_counter()
            kernel_call()
            ms = (time.perf_counter() - start) * 1e3
            return [ms] * len(quantiles) if quantiles else ms

        return bench
