"""What the CPU can do: the instruction-set flags that decide which int8 kernels are fast and exact."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of the first CPU in ``/proc/cpuinfo`` (empty where that file is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    """True where the CPU has VNNI (AVX-512 or AVX): int8 dot products without saturation.

    Without it, ONNX Runtime's u8 x s8 kernels use ``VPMADDUBSW``, whose 16-bit pairwise sums
    can saturate; 7-bit weights (``reduce_range``) avoid that.
    """
    return bool(VNNI_FLAGS & cpu_flags())


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu() -> str:
    """One line for benchmark tables: model, AVX-512 and VNNI."""
    flags = cpu_flags()
    yes = {True: "yes", False: "no"}
    return (
        f"{cpu_name()} ({platform.machine()}), AVX-512 {yes['avx512f' in flags]}, "
        f"VNNI {yes[has_vnni()]}"
    )
