"""Model sources: a zoo name, ``file.py:fn``, ``module:fn``, a bundle folder or a Hugging Face folder.

Every model built here carries a :class:`ModelSpec` (``model.slimfuse_spec``) saying how to
rebuild it: its source, keyword arguments, the structural edits applied since and the lineage of
stages. :func:`slimfuse.save` writes that spec to ``slimfuse.json``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError, SlimfuseError, UnsafeFileError

SPEC_ATTR = "slimfuse_spec"
UNSAFE_FLAG = "--unsafe-pickle"


@dataclass
class ModelSpec:
    """How to rebuild a model: source + kwargs, then edits in order; plus its history."""

    source: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    edits: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    task: str | None = None
    input_shape: list[int] | None = None
    num_classes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "source" not in known:
            raise ModelError("slimfuse.json has no model source; expected a 'source' entry")
        return cls(**known)


def spec_of(model: nn.Module) -> ModelSpec | None:
    return getattr(model, SPEC_ATTR, None)


def task_of(model: nn.Module, default: str = "classification") -> str:
    """The task the model's spec records (an encoder: ``embedding``), else ``default``."""
    spec = spec_of(model)
    return spec.task if spec is not None and spec.task else default


def check_model_fits(model: nn.Module, data: Any, task: str, what: str = "the model") -> None:
    """Fail with one line naming ``what`` if ``data``'s inputs do not fit ``model`` (its recorded
    input shape, then one forward pass on two samples). Encoders (task ``embedding``) take text:
    not checked."""
    if data is None or task == "embedding":
        return
    from slimfuse.data import check_fits

    spec = spec_of(model)
    check_fits(model, data, spec.input_shape if spec and spec.input_shape else None, what)


def int8_graphs(model: nn.Module) -> list[str]:
    """Names of the int8 ONNX Runtime graphs (:class:`~slimfuse.quantization.runtime.
    QuantizedModel`) in ``model``: ``""`` when it is one itself."""
    return [name for name, m in model.named_modules() if getattr(m, "int8_graph", False)]


def check_float_model(model: nn.Module, action: str, advice: str) -> None:
    """Fail with one line if ``model`` is, or holds, an int8 ONNX Runtime graph: its weights are
    not parameters, so ``action`` cannot change them; ``advice`` says what to do instead."""
    found = int8_graphs(model)
    if not found:
        return
    what = "the model is" if found == [""] else f"{', '.join(map(repr, found))} in the model is"
    raise ModelError(
        f"{action} needs float weights, but {what} an int8 ONNX Runtime graph; {advice}"
    )


def set_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    object.__setattr__(model, SPEC_ATTR, spec)
    return model


def record(
    model: nn.Module, *, edit: dict[str, Any] | None = None, lineage: dict[str, Any] | None = None
) -> None:
    """Append a structural edit and/or a lineage entry to the model's spec (if it has one)."""
    spec = spec_of(model)
    if spec is None:
        return
    if edit is not None:
        spec.edits.append(json.loads(json.dumps(edit)))
    if lineage is not None:
        spec.lineage.append(json.loads(json.dumps(lineage, default=str)))


def import_callable(
    spec: str, *, what: str = "factory", error: type[SlimfuseError] = ModelError
) -> Callable[..., Any]:
    """Resolve ``file.py:fn`` or ``package.module:fn`` to the callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise error(f"{what} {spec!r}: expected file.py:fn or module:fn")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise error(f"{what} {spec!r}: file {target!r} not found")
        name = f"slimfuse_user_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(name)
        if module is None:
            mspec = importlib.util.spec_from_file_location(name, path)
            if mspec is None or mspec.loader is None:  # pragma: no cover - defensive
                raise error(f"{what} {spec!r}: cannot import {target!r}")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[name] = module
            mspec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise error(f"{what} {spec!r}: cannot import module {target!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise error(f"{what} {spec!r}: {target!r} has no callable {attr!r}")
    return fn


def _fill_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], data: Any) -> dict[str, Any]:
    """Fill ``num_classes`` / ``in_features`` / ``in_length`` from the data when the builder takes them."""
    if data is None:
        return kwargs
    params = inspect.signature(fn).parameters
    out = dict(kwargs)
    shape = tuple(getattr(data, "input_shape", ()) or ())
    n_in = 1
    for s in shape:
        n_in *= s
    if "num_classes" in params and "num_classes" not in out and getattr(data, "num_classes", None):
        out["num_classes"] = data.num_classes
    if "in_features" in params and "in_features" not in out and shape:
        out["in_features"] = n_in
    if "in_length" in params and "in_length" not in out and len(shape) == 1:
        out["in_length"] = shape[0]
    return out


def build_model(source: str, *, data: Any = None, **kwargs: Any) -> nn.Module:
    """Build a fresh model from a zoo name, ``file.py:fn`` or ``module:fn``."""
    from slimfuse.models.zoo import MODELS

    if source in MODELS:
        fn = MODELS.get(source)
    elif ":" in source:
        fn = import_callable(source, what="model source")
    else:
        MODELS.get(source)  # raises with the list of zoo names and close matches
        raise AssertionError("unreachable")
    kwargs = _fill_kwargs(fn, kwargs, data)
    try:
        model = fn(**kwargs)
    except TypeError as exc:
        raise ModelError(f"model {source!r} with {kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model source {source!r} returned {type(model).__name__}; expected an nn.Module"
        )
    # a model class may say what it is for (an encoder: "embedding"); data and bundles may refine it
    spec = ModelSpec(source=source, kwargs=kwargs, task=getattr(model, "default_task", None))
    if data is not None:
        spec.input_shape = list(data.input_shape)
        spec.num_classes = data.num_classes
    return set_spec(model, spec)


def load_weights(
    path: str | Path, *, unsafe_pickle: bool = False
) -> dict[str, torch.Tensor] | nn.Module:
    """Weights from ``.safetensors``, or a ``.pt``/``.pth`` state dict loaded with ``weights_only=True``.

    A ``.pt`` that needs full pickle is refused unless ``unsafe_pickle`` is set (CLI: ``--unsafe-pickle``);
    with it, a pickled whole module is returned as is.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not unsafe_pickle:
            raise UnsafeFileError(
                f"{path.name} is a full pickle, which can run arbitrary code when loaded "
                f"({str(exc).splitlines()[0][:120]}); refusing. Pass {UNSAFE_FLAG} "
                "(unsafe_pickle=True) only if you trust the file, or save a state dict / safetensors"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit opt-in
    except (RuntimeError, EOFError) as exc:
        raise ModelError(
            f"{path.name}: not a torch file ({str(exc).splitlines()[0][:120]})"
        ) from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{path.name}: expected a state dict of tensors, found {type(obj).__name__}"
        )
    return obj


def load_model(
    spec: str | Path | nn.Module,
    *,
    data: Any = None,
    weights: str | Path | None = None,
    unsafe_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Resolve any model argument: a module, bundle folder, HF folder, weights file, zoo name or factory."""
    if isinstance(spec, nn.Module):
        model = spec
    else:
        text = str(spec)
        path = Path(text)
        if path.is_dir() and (path / "slimfuse.json").is_file():
            from slimfuse.models.bundle import load

            model = load(path)
        elif path.is_dir() and (path / "config.json").is_file():
            from slimfuse.models.hf import load_hf

            model = load_hf(path, **kwargs)
        elif path.suffix in (".pt", ".pth", ".safetensors") and ":" not in text:
            obj = load_weights(path, unsafe_pickle=unsafe_pickle)
            if not isinstance(obj, nn.Module):
                raise ModelError(
                    f"{path.name} holds only weights; pass the architecture as --model and this file as --weights"
                )
            model = obj
        elif path.is_dir():
            raise ModelError(
                f"{text!r} is a folder without slimfuse.json or config.json; expected a bundle"
            )
        else:
            model = build_model(text, data=data, **kwargs)
    if weights is not None:
        state = load_weights(weights, unsafe_pickle=unsafe_pickle)
        if isinstance(state, nn.Module):
            state = state.state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"weights {Path(weights).name} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return model
