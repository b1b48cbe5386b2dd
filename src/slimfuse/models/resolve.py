"""Any model argument to a model: a module, a bundle or Hugging Face folder, a weights file, a
zoo name or a factory (what ``--model`` and every ``model:`` key accept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from slimfuse import trust
from slimfuse.data.preprocessing import MEAN, STD, is_standardized, remove_standardization
from slimfuse.errors import ModelError
from slimfuse.models.bundle import load
from slimfuse.models.hf import load_hf
from slimfuse.models.source import build_model, spec_of, warn_raw_inputs
from slimfuse.models.weights import check_fits, load_weights


def load_model(
    spec: str | Path | nn.Module,
    *,
    data: Any = None,
    weights: str | Path | None = None,
    unsafe_pickle: bool = False,
    trust_code: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Resolve any model argument: a module, bundle folder, HF folder, weights file, zoo name or
    factory. Code (``file.py:fn``, ``module:fn``, a bundle made from code) runs only with
    ``trust_code=True``."""
    with trust.trusting(trust_code):
        model = _resolve(spec, data, unsafe_pickle, kwargs)
    if weights is not None:
        state = load_weights(weights, unsafe_pickle=unsafe_pickle)
        if isinstance(state, nn.Module):
            state = state.state_dict()
        if is_standardized(model) and not {MEAN, STD} <= set(state):
            # weights trained elsewhere, on the inputs as they come: so the model takes them
            remove_standardization(model)
            if (built := spec_of(model)) is not None:
                built.standardize = None
        check_fits(model, state, f"weights {Path(weights).name}")
        model.load_state_dict(state, strict=True)
    if data is not None:
        warn_raw_inputs(model, data, f"model {_name(spec)}")
    return model


def _name(spec: str | Path | nn.Module) -> str:
    return type(spec).__name__ if isinstance(spec, nn.Module) else repr(str(spec))


def _resolve(
    spec: str | Path | nn.Module, data: Any, unsafe_pickle: bool, kwargs: dict[str, Any]
) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    text = str(spec)
    path = Path(text)
    if path.is_dir() and (path / "slimfuse.json").is_file():
        return load(path)
    if path.is_dir() and (path / "config.json").is_file():
        return load_hf(path, **kwargs)
    if path.suffix in (".pt", ".pth", ".safetensors") and ":" not in text:
        obj = load_weights(path, unsafe_pickle=unsafe_pickle)
        if not isinstance(obj, nn.Module):
            raise ModelError(
                f"{path.name} holds only weights; pass the architecture as --model and this file as --weights"
            )
        return obj
    if path.is_dir():
        raise ModelError(
            f"{text!r} is a folder without slimfuse.json or config.json; expected a bundle"
        )
    pathlike = len(path.parts) > 1 or text.startswith((".", "~")) or bool(path.suffix)
    if pathlike and not trust.is_code(text) and not path.exists():
        raise ModelError(
            f"model {text!r} not found: no such bundle folder or file (a model is a bundle or "
            "Hugging Face folder, a zoo name, file.py:fn or module:fn)"
        )
    return build_model(text, data=data, **kwargs)
