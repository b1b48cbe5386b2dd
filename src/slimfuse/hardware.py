"""What the machine can do: the CPU's instruction-set flags (which int8 kernels are fast and
exact) and the torch device and precision training runs in (torch imported only when asked)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

from slimfuse.errors import ConfigError

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


# -- the torch device training runs on -------------------------------------------------------

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(spec: str = "auto") -> Any:
    """The ``torch.device`` that ``spec`` names, checked: ``auto`` (CUDA if there is one, under
    torchrun the process's ``LOCAL_RANK`` GPU; else MPS; else the CPU), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``. A device this machine lacks is a one-line :class:`ConfigError`."""
    import os

    import torch

    spec = str(spec).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("device mps: this machine has no MPS (Apple GPU) device")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec}: CUDA is not available here (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda or 'none'}); use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        index = int(spec.split(":", 1)[1]) if ":" in spec else torch.cuda.current_device()
        if index >= count:
            raise ConfigError(
                f"device {spec}: there {'is' if count == 1 else 'are'} {count} CUDA "
                f"device{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    raise ConfigError(f"device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_precision(device: Any, precision: str) -> None:
    """Refuse, in one line, a precision ``device`` cannot train in: fp16 autocast needs a GPU
    (CUDA or MPS), bf16 a CPU, a CUDA GPU that supports it (Ampere or later) or MPS that does."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "fp16" and kind == "cpu":
        raise ConfigError(
            "precision fp16: float16 autocast needs a GPU (cuda or mps); on the CPU use "
            "bf16 or fp32"
        )
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(torch.device(device))
        raise ConfigError(f"precision bf16: {name} does not support bfloat16; use fp16 or fp32")
    if precision == "bf16" and kind == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device="mps")
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                "precision bf16: this MPS device does not support bfloat16; use fp16 or fp32"
            ) from exc


def autocast(device: Any, precision: str) -> Any:
    """The ``torch.autocast`` context of ``precision`` on ``device`` (off for fp32)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)


def to_device(value: Any, device: Any) -> Any:
    """A batch (a tensor, or tuples, lists and dicts of them) with its tensors on ``device``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def to_cpu(value: Any) -> Any:
    """``value`` (a state dict, an optimizer state: nested dicts and lists) with every tensor a
    CPU copy, so a checkpoint written on one device loads on any other."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return type(value)((k, to_cpu(v)) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return type(value)(to_cpu(v) for v in value)
    return value
