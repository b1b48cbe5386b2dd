"""Knowledge distillation: soft targets, output matching, hints, ensemble teachers, students.

- :data:`DistillConfig`: one config per loss (``KD | MSE | Cosine | Hint``, key ``loss``)
- :func:`distill`: train a copy of a student against one teacher or an ensemble of teachers
- :func:`objective`: the ``(model, batch) -> loss`` callable for ``slimfuse.train(objective=...)``
- :mod:`~slimfuse.distillation.losses`: the loss registry (``kd``, ``mse``, ``hint``, ``cosine``)
- :mod:`~slimfuse.distillation.students`: students built from their teachers (depth, width)

``slimfuse.distill`` is this family's verb with structured pruning's width shrink wired in.
Names are loaded on first use, so ``import slimfuse`` stays light.
"""

from __future__ import annotations

from slimfuse.lazy import lazy_names

_NAMES: dict[str, str] = {
    "DistillConfig": "slimfuse.distillation.config",
    "KD": "slimfuse.distillation.config",
    "MSE": "slimfuse.distillation.config",
    "Cosine": "slimfuse.distillation.config",
    "Hint": "slimfuse.distillation.config",
    "StudentFromTeacher": "slimfuse.distillation.config",
    "DistillResult": "slimfuse.distillation.api",
    "distill": "slimfuse.distillation.api",
    "distill_run": "slimfuse.distillation.api",
    "LOSSES": "slimfuse.distillation.losses",
    "DistillObjective": "slimfuse.distillation.objectives",
    "ShapeMismatchError": "slimfuse.distillation.objectives",
    "objective": "slimfuse.distillation.objectives",
    "TeacherEnsemble": "slimfuse.distillation.teachers",
    "build_student": "slimfuse.distillation.students",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
