"""Input standardization that travels with the model.

The data always gives raw inputs. :func:`fit_standardize` fits per-feature mean and std on the
train split (``Data.meta["standardize"]``); :func:`standardize_inputs` gives a model two buffers,
``input_mean`` and ``input_std``, and a ``forward`` that first computes ``(x - input_mean) /
input_std``. The model then takes raw inputs everywhere: training, evaluation, every technique,
bundles (the buffers are in ``model.safetensors``) and the exported ONNX graph (a ``Sub`` and a
``Div`` before the first layer). Module names stay those of the model (no wrapper module), and
the buffers hold no parameters, so pruning, quantization and merging leave them alone.

``slimfuse.build_model(name, data=data)`` does this for data that carries statistics and records
it in the model's spec (a bundle rebuilds it); a model built elsewhere takes it with
:func:`slimfuse.models.source.standardized`.

Regression targets are standardized the same way, on the output side
(:func:`standardize_targets`): the data's ``meta["standardize_targets"]`` (per-target mean and
std of the train split) become the buffers ``target_mean`` and ``target_std``, and the model's
output is ``target_mean + target_std * h``: its layers work in standardized units, its
predictions (and so every metric, the exported graph's outputs included) are in the targets'
own units. The regression loss divides by ``target_std`` (:meth:`slimfuse.tasks.Regression.
loss_for`), so training sees standardized targets.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.errors import DataError, ModelError

MEAN, STD = "input_mean", "input_std"
TARGET_MEAN, TARGET_STD = "target_mean", "target_std"
MAX_FEATURES = 1 << 24


def fit_standardize(x: Any) -> dict[str, Any]:
    """``{"mean": [...], "std": [...], "shape": [...]}`` per input feature of ``x`` (the train
    split, samples first), in float64. A std that is zero, or negligible next to the mean (a
    constant column), is 1: such a feature is only centred."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 2 or len(a) == 0:
        raise DataError(f"standardize: expected samples of features, got shape {a.shape}")
    mean, std = a.mean(axis=0), a.std(axis=0)
    std = np.where(std <= 1e-8 * np.maximum(1.0, np.abs(mean)), 1.0, std)
    return {
        "shape": list(a.shape[1:]),
        "mean": mean.reshape(-1).tolist(),
        "std": std.reshape(-1).tolist(),
    }


def is_standardized(model: nn.Module) -> bool:
    return bool(getattr(type(model), "slimfuse_standardized", False))


@functools.cache
def _standardized_class(cls: type) -> type:
    """``cls`` with a ``forward`` that standardizes its first input, then runs ``cls.forward``."""
    base = cls.forward

    @functools.wraps(base)
    def forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return base(self, (x - getattr(self, MEAN)) / getattr(self, STD), *args, **kwargs)

    def __reduce_ex__(self: nn.Module, protocol: Any) -> Any:
        # pickled as the base class's object, given this class again when unpickled
        _, _, *rest = cls.__reduce_ex__(self, protocol)
        return (_new_standardized, (cls,), *rest)

    return type(
        cls.__name__,
        (cls,),
        {
            "forward": forward,
            "__reduce_ex__": __reduce_ex__,
            "slimfuse_standardized": True,
            "__module__": __name__,
        },
    )


def _new_standardized(cls: type) -> Any:
    """An empty object of ``cls`` that standardizes (unpickling and copies fill it)."""
    new = _standardized_class(cls)
    return new.__new__(new)


def standardize_inputs(model: nn.Module, stats: dict[str, Any]) -> nn.Module:
    """Give ``model`` (in place) the buffers ``input_mean`` / ``input_std`` of ``stats``
    (:func:`fit_standardize`'s; only ``shape``: placeholders that a bundle's weights fill) and a
    forward that standardizes its first input with them. Returns ``model``."""
    shape = [int(s) for s in stats.get("shape", [])]
    numel = int(np.prod(shape)) if shape else 0
    if not shape or min(shape) < 1 or numel > MAX_FEATURES:
        raise ModelError(f"input standardization of shape {shape}: expected 1 to 2**24 features")
    mean = torch.tensor(stats.get("mean", [0.0] * numel), dtype=torch.float32)
    std = torch.tensor(stats.get("std", [1.0] * numel), dtype=torch.float32)
    if mean.numel() != numel or std.numel() != numel:
        raise ModelError(
            f"input standardization: {mean.numel()} means and {std.numel()} stds for shape {shape}"
        )
    if isinstance(model, torch.jit.ScriptModule) or is_standardized(model):
        raise ModelError(
            f"{type(model).__name__}: cannot add input standardization"
            + (" twice" if is_standardized(model) else " to a TorchScript module")
        )
    for name in (MEAN, STD):
        if hasattr(model, name):
            raise ModelError(
                f"{type(model).__name__} already has an attribute {name!r}: cannot add input "
                "standardization"
            )
    device = next((t.device for t in (*model.parameters(), *model.buffers())), None)
    model.register_buffer(MEAN, mean.reshape(shape).to(device))
    model.register_buffer(STD, std.reshape(shape).to(device))
    model.__class__ = _standardized_class(type(model))
    return model


def remove_standardization(model: nn.Module) -> nn.Module:
    """Undo :func:`standardize_inputs` (in place): the model takes its inputs as they come."""
    if is_standardized(model):
        del model._buffers[MEAN], model._buffers[STD]
        model.__class__ = type(model).__mro__[1]
    return model


def targets_standardized(model: nn.Module) -> bool:
    return bool(getattr(type(model), "slimfuse_targets_standardized", False))


@functools.cache
def _targets_class(cls: type) -> type:
    """``cls`` with a ``forward`` whose output is de-standardized: ``mean + std * output``."""
    base = cls.forward

    @functools.wraps(base)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return base(self, *args, **kwargs) * getattr(self, TARGET_STD) + getattr(self, TARGET_MEAN)

    return type(
        cls.__name__,
        (cls,),
        {"forward": forward, "slimfuse_targets_standardized": True, "__module__": __name__},
    )


def standardize_targets(model: nn.Module, stats: dict[str, Any]) -> nn.Module:
    """Give ``model`` (in place) the buffers ``target_mean`` / ``target_std`` of ``stats``
    (:func:`fit_standardize` of the train split's targets, samples by targets; only ``shape``:
    placeholders a bundle's weights fill) and a forward whose output ``h`` becomes
    ``target_mean + target_std * h``. Apply it before :func:`standardize_inputs` (that one is
    then the outer class, which :func:`remove_standardization` takes off). Returns ``model``."""
    shape = [int(s) for s in stats.get("shape", [])]
    numel = int(np.prod(shape)) if shape else 0
    if len(shape) != 1 or shape[0] < 1 or numel > MAX_FEATURES:
        raise ModelError(f"target standardization of shape {shape}: expected [targets]")
    mean = torch.tensor(stats.get("mean", [0.0] * numel), dtype=torch.float32)
    std = torch.tensor(stats.get("std", [1.0] * numel), dtype=torch.float32)
    if mean.numel() != numel or std.numel() != numel:
        raise ModelError(
            f"target standardization: {mean.numel()} means and {std.numel()} stds for "
            f"{numel} targets"
        )
    if isinstance(model, torch.jit.ScriptModule) or targets_standardized(model):
        raise ModelError(
            f"{type(model).__name__}: cannot add target standardization"
            + (" twice" if targets_standardized(model) else " to a TorchScript module")
        )
    if is_standardized(model):
        raise ModelError(
            f"{type(model).__name__}: add target standardization before input standardization"
        )
    for name in (TARGET_MEAN, TARGET_STD):
        if hasattr(model, name):
            raise ModelError(
                f"{type(model).__name__} already has an attribute {name!r}: cannot add target "
                "standardization"
            )
    device = next((t.device for t in (*model.parameters(), *model.buffers())), None)
    model.register_buffer(TARGET_MEAN, mean.to(device))
    model.register_buffer(TARGET_STD, std.to(device))
    model.__class__ = _targets_class(type(model))
    return model
