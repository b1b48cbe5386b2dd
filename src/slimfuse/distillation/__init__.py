"""Knowledge distillation: soft targets, output matching, hints, ensemble teachers, students.

- :func:`objective`: the ``(model, batch) -> loss`` callable for ``slimfuse.train(objective=...)``
- :func:`distill`: train a student against one teacher or an ensemble of teachers
- :mod:`~slimfuse.distillation.losses`: the loss registry (``kd``, ``mse``, ``hint``, ``cosine``)
- :mod:`~slimfuse.distillation.students`: students built from their teachers (depth, width)

Names are loaded on first use, so the CLI can import ``slimfuse.distillation.cli`` cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES: dict[str, str] = {
    "DistillConfig": "slimfuse.distillation.api",
    "DistillResult": "slimfuse.distillation.api",
    "distill": "slimfuse.distillation.api",
    "distill_run": "slimfuse.distillation.api",
    "LOSSES": "slimfuse.distillation.losses",
    "DistillObjective": "slimfuse.distillation.objectives",
    "ShapeMismatchError": "slimfuse.distillation.objectives",
    "objective": "slimfuse.distillation.objectives",
    "build_student": "slimfuse.distillation.students",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'slimfuse.distillation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
