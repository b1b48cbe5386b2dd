"""Bundles: a folder that rebuilds a model without pickle.

``model.safetensors`` holds the weights, ``slimfuse.json`` how to rebuild them (source, kwargs,
structural edits, lineage, versions). Optional: ``model.onnx``, ``metrics.json``, ``recipe.yaml``,
``report.md`` / ``report.html``. Writes go to a temporary folder beside the target, then a rename,
so a crash never leaves a half-written bundle.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimfuse.atomic import atomic_dir
from slimfuse.errors import ModelError
from slimfuse.models.edits import apply_edits
from slimfuse.models.source import ModelSpec, build_model, set_spec, spec_of

FORMAT = 1
WEIGHTS = "model.safetensors"
META = "slimfuse.json"


def versions() -> dict[str, str]:
    from slimfuse import __version__

    return {
        "slimfuse": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone what aliases and make everything contiguous.
    seen: set[int] = set()
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        seen.add(ptr)
        out[k] = t.cpu()
    return out


def save(
    model: nn.Module,
    folder: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    recipe: str | None = None,
    onnx: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a bundle folder (atomically) and return the folder's path.

    A model that records no task takes the one its ``metrics`` were measured for, so commands
    that later load the bundle default to it.
    """
    from safetensors.torch import save_file

    spec = spec_of(model)
    if spec is None:
        raise ModelError(
            f"{type(model).__name__} has no recorded source; build it with slimfuse.build_model / "
            "slimfuse.load, or give it one with slimfuse.models.source.set_spec"
        )
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        recorded = spec.to_dict()
        if not recorded.get("task") and metrics and metrics.get("task"):
            recorded["task"] = metrics["task"]
        meta = {"format": FORMAT, "model": recorded, "versions": versions(), **(extra or {})}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if recipe is not None:
            (tmp / "recipe.yaml").write_text(recipe)
        if onnx is not None:
            shutil.copyfile(onnx, tmp / "model.onnx")
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.is_file():
        raise ModelError(f"{str(folder)!r} is not a bundle: no {META}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(
            f"{path}: bundle format {meta.get('format')!r}; this slimfuse reads {FORMAT}"
        )
    return meta


def load(folder: str | Path) -> nn.Module:
    """Rebuild the model saved in a bundle folder: source, then edits, then weights (strict)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    spec = ModelSpec.from_dict(meta["model"])
    if not (folder / WEIGHTS).is_file():
        raise ModelError(f"{str(folder)!r}: no {WEIGHTS}")
    state = load_file(str(folder / WEIGHTS))
    model = build_model(spec.source, **spec.kwargs)
    model = apply_edits(model, spec.edits, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{folder}: weights do not fit the rebuilt model ({str(exc)[:300]})"
        ) from None
    model.eval()
    return set_spec(model, spec)
