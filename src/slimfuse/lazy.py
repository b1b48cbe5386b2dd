"""Names that a package loads on first use (PEP 562), so importing it stays light; optional
heavy imports made quiet."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(
    package: str, names: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps a public name to
    ``"module"`` (the same name there) or ``"module:attribute"``."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(getattr(sys.modules[package], "__all__", names))

    return __getattr__, __dir__


# torchao (ExecuTorch's dependency, which transformers imports too where it is installed) logs
# its CUDA-only kernels failing to load, and torch warns about the enums it registers: four
# lines per command that say nothing about the user's work
NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_import_logs() -> None:
    """Only errors from the loggers of :data:`NOISY_IMPORT_LOGGERS`."""
    for name in NOISY_IMPORT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
