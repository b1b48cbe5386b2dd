"""The distillation objective: a ``(model, batch) -> loss`` callable for the one training loop.

::

    obj = slimfuse.distillation.objective(teacher, "classification", KD(temperature=4.0))
    slimfuse.train(student, data, "classification", cfg, objective=obj)

``teacher`` is a model or a list of models (a :class:`~slimfuse.distillation.teachers.TeacherEnsemble`);
the objective runs frozen copies in eval mode, so the caller's teachers are left as they are.
With ``hints={"student.layer": "teacher.layer"}`` the objective also matches intermediate
features (FitNets); give ``student=`` and ``example_inputs=`` so that the adapters are sized
before training, and train ``obj.trainable(student)`` so that the optimizer sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimfuse.distillation.config import AnyDistillConfig, DistillConfig, check_teachers
from slimfuse.distillation.hints import FeatureTap, make_adapter
from slimfuse.distillation.losses import LOSSES, LossContext, hint_term, output_loss_for
from slimfuse.distillation.teachers import (
    TeacherCache,
    make_teacher,
    sample_keys,
    select,
    split_rows,
    stack_rows,
)
from slimfuse.errors import ConfigError
from slimfuse.tasks import Task, forward, get_task


class ShapeMismatchError(ConfigError):
    """Teacher and student outputs cannot be compared."""


class WithAdapters(nn.Module):
    """The student plus the hint adapters, so that one optimizer trains both.

    ``forward`` is the student's; after training keep ``.student`` (the adapters are dropped).
    """

    def __init__(self, student: nn.Module, adapters: nn.ModuleDict) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The student inside DDP and/or :class:`WithAdapters`."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, WithAdapters):
            model = model.student
        else:
            return model


def _name(model: nn.Module) -> str:
    return type(unwrap(model)).__name__


def trim_padding(inputs: Any) -> tuple[Any, torch.Tensor | None]:
    """Drop the all-padding columns of token inputs (a dict with ``attention_mask``)."""
    if not isinstance(inputs, dict) or "attention_mask" not in inputs:
        return inputs, None
    mask = inputs["attention_mask"]
    width = max(1, int(mask.sum(1).max()))
    if width < mask.shape[1]:
        inputs = {
            k: v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 else v
            for k, v in inputs.items()
        }
    return inputs, inputs["attention_mask"]


class DistillObjective:
    """Callable ``(model, batch) -> loss`` for one validated ``config``; build it with
    :func:`objective`, which also takes the settings as keywords."""

    def __init__(
        self,
        teacher: nn.Module | Sequence[nn.Module],
        task: str | Task,
        config: AnyDistillConfig | dict[str, Any],
        *,
        student: nn.Module | None = None,
        example_inputs: Any = None,
    ) -> None:
        cfg = DistillConfig.parse(config)
        self.config = cfg
        self.task = get_task(task)
        self.loss_name = cfg.loss
        self.loss_fn = LOSSES.get(cfg.loss)
        temperature = getattr(cfg, "temperature", 4.0)
        if cfg.loss == "hint" and "temperature" in cfg.model_fields_set:
            output = output_loss_for(self.task)
            if output != "kd":
                raise ConfigError(
                    f"temperature does not apply to loss 'hint' on task {self.task.name!r} (its "
                    f"output loss is {output}); it is for kd, and hint on classification"
                )
        self.temperature = float(temperature)
        self.alpha = float(cfg.alpha)
        self.hints = dict(cfg.hints)
        self.hint_weight = float(cfg.hint_weight)
        self.hint_metric = cfg.hint_metric
        members = [teacher] if isinstance(teacher, nn.Module) else list(teacher or [])
        if members:  # (none: make_teacher says the list is empty)
            check_teachers(cfg, len(members))
        # an ensemble's probabilities are averaged at the temperature the loss softens them at
        softens = cfg.loss == "kd" or (cfg.loss == "hint" and output_loss_for(self.task) == "kd")
        self.teacher = make_teacher(
            members,
            space=cfg.ensemble_space,
            weights=cfg.ensemble_weights,
            temperature=self.temperature if softens else 1.0,
        )
        self.mixup = float(cfg.mixup)
        # mixed inputs are new every step: nothing to cache
        self.cache = TeacherCache(cfg.max_cache_mb) if cfg.cache and not self.mixup else None
        self.adapters = nn.ModuleDict()
        self._s_tap: FeatureTap | None = None
        self._t_tap: FeatureTap | None = None
        self._checked = False
        if self.hints:
            if student is None or example_inputs is None:
                raise ConfigError(
                    "hints need student= and example_inputs= to size the adapters before training"
                )
            self._t_tap = FeatureTap(self.teacher, self.hints.values(), "teacher")
            self._s_tap = FeatureTap(student, self.hints.keys(), "student")
        if student is not None and example_inputs is not None:
            self._prepare(student, example_inputs)

    # -- set-up -------------------------------------------------------------------------------

    @staticmethod
    def pair_key(student_layer: str, teacher_layer: str) -> str:
        return f"{student_layer}__{teacher_layer}".replace(".", "_")

    @torch.no_grad()
    def _prepare(self, student: nn.Module, example_inputs: Any) -> None:
        """Check output shapes and size the hint adapters on one example batch."""
        was = student.training
        student.eval()
        try:
            inputs, _ = trim_padding(example_inputs)
            t_out = forward(self.teacher, inputs)
            s_out = forward(student, inputs)
        finally:
            student.train(was)
        self._check(student, s_out, t_out)
        if not self.hints:
            return
        t_feats = self._t_tap.take()  # type: ignore[union-attr]
        s_feats = self._s_tap.take()  # type: ignore[union-attr]
        for s_name, t_name in self.hints.items():
            pair = f"{s_name} -> {t_name}"
            self.adapters[self.pair_key(s_name, t_name)] = make_adapter(
                s_feats[s_name].shape, t_feats[t_name].shape, pair
            )

    def _check(self, student: nn.Module, s_out: torch.Tensor, t_out: torch.Tensor) -> None:
        if self._checked:
            return
        if tuple(s_out.shape) != tuple(t_out.shape):
            raise ShapeMismatchError(
                f"student {_name(student)} outputs shape {tuple(s_out.shape)} but teacher "
                f"{type(self.teacher).__name__} outputs {tuple(t_out.shape)}; expected equal shapes"
            )
        self._checked = True

    def trainable(self, student: nn.Module) -> nn.Module:
        """The module to hand to ``train``: the student, plus the adapters if they have weights."""
        if any(True for _ in self.adapters.parameters()):
            return WithAdapters(student, self.adapters)
        return student

    # -- the loss -----------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_outputs(
        self, inputs: Any, keys: list[bytes] | None, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's outputs (and hint features) for a batch; cached samples skip the teacher."""
        self.teacher.eval()
        if self.cache is None or keys is None:
            out = forward(self.teacher, inputs)
            return out, (self._t_tap.take() if self._t_tap is not None else {})
        rows = self.cache.lookup(keys)
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            sub = inputs if len(missing) == len(rows) else select(inputs, missing)
            out = forward(self.teacher, sub)
            feats = self._t_tap.take() if self._t_tap is not None else {}
            sub_len = lengths[missing] if lengths is not None else None
            for i, row in zip(missing, split_rows(out, feats, sub_len), strict=True):
                rows[i] = row
                self.cache.put(keys[i], row)
        return stack_rows(rows, lengths)  # type: ignore[arg-type]

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, target = self.task.unpack(batch)
        mixed = None
        if self.mixup and model.training:
            inputs, mixed = self._mix(inputs)
        keys = sample_keys(inputs) if self.cache is not None else None
        inputs, mask = trim_padding(inputs)
        lengths = mask.sum(1) if mask is not None else None
        t_out, t_feats = self.teacher_outputs(inputs, keys, lengths)
        s_out = forward(model, inputs)
        self._check(model, s_out, t_out)
        ctx = LossContext(
            task=self.task,
            temperature=self.temperature,
            alpha=self.alpha,
            hint_weight=self.hint_weight,
            hint_metric=self.hint_metric,
            mask=mask,
        )
        if self._s_tap is not None:
            s_feats = self._s_tap.take()
            for s_name, t_name in self.hints.items():
                adapter = self.adapters[self.pair_key(s_name, t_name)]
                ctx.hints.append((s_feats[s_name], t_feats[t_name], adapter))
        loss = self.loss_fn(s_out, t_out, target, ctx)
        if mixed is not None and target is not None and self.alpha < 1.0:
            lam, perm = mixed  # the hard-label term follows the mix; the soft term is the same
            loss = lam * loss + (1.0 - lam) * self.loss_fn(s_out, t_out, target[perm], ctx)
        if ctx.hints and self.loss_name != "hint" and self.hint_weight > 0:
            loss = loss + self.hint_weight * hint_term(ctx)
        return loss

    def _mix(self, inputs: Any) -> tuple[torch.Tensor, tuple[float, torch.Tensor]]:
        """Mixup of the batch with a permutation of itself, ``lam ~ Beta(m, m)``."""
        if not (isinstance(inputs, torch.Tensor) and inputs.is_floating_point()):
            raise ConfigError(
                f"mixup needs floating-point tensor inputs; got {type(inputs).__name__}"
                f"{'' if not isinstance(inputs, torch.Tensor) else ' of ' + str(inputs.dtype)}"
            )
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        perm = torch.randperm(len(inputs))
        return lam * inputs + (1.0 - lam) * inputs[perm], (lam, perm)

    def to(self, device: Any) -> DistillObjective:
        """Move the teacher, the hint adapters and the cached outputs to ``device`` (what the
        one training loop calls with its device, and with the CPU at the end)."""
        self.teacher.to(device)
        self.adapters.to(device)
        if self.cache is not None:
            self.cache.to(device)
        return self

    def close(self) -> None:
        """Remove the feature hooks from the teacher and the student."""
        for tap in (self._s_tap, self._t_tap):
            if tap is not None:
                tap.remove()


def objective(
    teacher: nn.Module | Sequence[nn.Module],
    task: str | Task = "classification",
    config: AnyDistillConfig | dict[str, Any] | None = None,
    *,
    student: nn.Module | None = None,
    example_inputs: Any = None,
    **settings: Any,
) -> DistillObjective:
    """The distillation loss for ``slimfuse.train(student, data, task, cfg, objective=...)``.

    ``config`` is a :data:`~slimfuse.distillation.config.DistillConfig` (``KD(...)``, a dict with
    ``loss``; default ``KD()``), or its settings as keywords (``loss="mse", alpha=0.5``). The
    loss is a name in :data:`slimfuse.distillation.losses.LOSSES`; ``alpha`` weighs the soft
    (teacher) term against the hard-label task loss. With ``student`` and ``example_inputs``
    the output shapes are checked (and hint adapters sized) up front. ``mixup > 0`` feeds both
    models blends ``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(mixup, mixup)`` (function
    matching, Beyer et al. 2022): the teacher labels inputs between the training samples, where
    its soft outputs carry the most information. ``teacher`` is not changed (a frozen copy runs).
    """
    if config is not None and settings:
        raise ConfigError(
            f"give a config or its settings ({', '.join(settings)}), not both; expected "
            "config.replace(...) to change a config"
        )
    return DistillObjective(
        teacher,
        task,
        config if config is not None else settings,
        student=student,
        example_inputs=example_inputs,
    )
