"""Knowledge distillation: soft targets, output matching, hints, ensemble teachers, students.

- :func:`objective`: the ``(model, batch) -> loss`` callable for ``slimfuse.train(objective=...)``
- :func:`distill`: train a student against one teacher or an ensemble of teachers
- :mod:`~slimfuse.distillation.losses`: the loss registry (``kd``, ``mse``, ``hint``, ``cosine``)
- :mod:`~slimfuse.distillation.students`: students built from their teachers
"""

from __future__ import annotations

from slimfuse.distillation.distill import DistillConfig, DistillResult, distill, distill_run
from slimfuse.distillation.losses import LOSSES
from slimfuse.distillation.objective import DistillObjective, ShapeMismatchError, objective

__all__ = [
    "LOSSES",
    "DistillConfig",
    "DistillObjective",
    "DistillResult",
    "ShapeMismatchError",
    "distill",
    "distill_run",
    "objective",
]
