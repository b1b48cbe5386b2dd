"""Bundles: a folder that rebuilds a model without pickle.

``model.safetensors`` holds the weights, ``slimfuse.json`` how to rebuild them (source, kwargs,
structural edits, lineage, versions). Optional: ``model.onnx``, ``metrics.json``, ``recipe.yaml``,
``report.md`` / ``report.html``, and ``tokenizer/`` (a text encoder's own tokenizer files,
checked on load: commands read the bundle's text with them). Writes go to a temporary folder
beside the target, then a rename, so a crash never leaves a half-written bundle.

Sparse weights (the tensors a ``sparse`` edit names: unstructured pruning's) are stored as their
non-zero values (``<key>.__values``) plus one bit per weight (``<key>.__bitmask``) whenever that
is smaller; the encoding lives here only, so ``model.state_dict()`` stays plain tensors.
Weight-shared layers (a ``shared`` edit: their ``codes`` and ``codebook``) are stored Huffman
coded in ``model.sfz`` instead (:mod:`slimfuse.models.sfz`), decoded on load against the
rebuilt model's own shapes.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import save as serialize
from torch import nn

from slimfuse import __version__, trust
from slimfuse.atomic import atomic_dir
from slimfuse.errors import ModelError, validation_error
from slimfuse.models import sfz
from slimfuse.models.edits import apply_edits
from slimfuse.models.hf import attach_tokenizer, copy_tokenizer
from slimfuse.models.source import ModelSpec, rebuild, set_spec, spec_of
from slimfuse.models.weights import (
    BITMASK,
    VALUES,
    check_fits,
    expected_tensors,
    read_safetensors,
)

FORMAT = 1
WEIGHTS = "model.safetensors"
SHARED = "model.sfz"
META = "slimfuse.json"
TOKENIZER = "tokenizer"  # a text encoder's own tokenizer files, when it has its own
CODES, CODEBOOK = "codes", "codebook"


def versions() -> dict[str, str]:
    return {
        "slimfuse": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def encode_sparse(t: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """``{values, bitmask}`` for ``t`` (lossless), or ``None`` when dense storage is not larger."""
    flat = t.detach().reshape(-1).cpu()
    nz = flat != 0
    nnz = int(nz.sum())
    encoded = nnz * flat.element_size() + (flat.numel() + 7) // 8
    if encoded >= flat.numel() * flat.element_size():
        return None
    bits = np.packbits(nz.numpy().astype(np.uint8))
    return {"values": flat[nz].clone(), "bitmask": torch.from_numpy(bits)}


def decode_sparse(values: torch.Tensor, bitmask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The dense tensor of ``like``'s shape from :func:`encode_sparse`'s values and bitmask."""
    n = like.numel()
    nz = torch.from_numpy(np.unpackbits(bitmask.numpy())[:n].astype(bool))
    out = torch.zeros(n, dtype=values.dtype)
    out[nz] = values
    return out.view(like.shape)


def sparse_keys(model: nn.Module) -> list[str]:
    """State-dict names of the tensors recorded as sparse (``sparse`` edits) in the specs of
    ``model`` and its submodules (a fused model's members), whether or not they still exist."""
    keys: list[str] = []
    for name, module in model.named_modules():
        spec = spec_of(module)
        if spec is None:
            continue
        prefix = f"{name}." if name else ""
        for edit in spec.edits:
            if edit.get("kind") == "sparse":
                keys += [prefix + t for t in edit.get("tensors", []) if isinstance(t, str)]
    return list(dict.fromkeys(keys))


def shared_layers(model: nn.Module) -> dict[str, int]:
    """``{module name: bits}`` of the layers that ``shared`` edits in the specs of ``model``
    and its submodules record as weight-shared (stored in ``model.sfz``): a layer's own
    ``bits``, else the edit's."""
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        spec = spec_of(module)
        if spec is None:
            continue
        prefix = f"{name}." if name else ""
        for edit in spec.edits:
            if edit.get("kind") == "shared" and isinstance(edit.get("layers"), dict):
                for layer, info in edit["layers"].items():
                    own = info.get("bits") if isinstance(info, dict) else None
                    out[prefix + layer] = edit.get("bits") if own is None else own
    return out


def split_shared(
    model: nn.Module, tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], bytes | None]:
    """``tensors`` without the weight-shared layers' codes and codebooks, and those layers as
    ``.sfz`` bytes (``None`` when the model has none)."""
    layers = {
        n: b
        for n, b in shared_layers(model).items()
        if f"{n}.{CODES}" in tensors and f"{n}.{CODEBOOK}" in tensors
    }
    if not layers:
        return tensors, None
    rest = dict(tensors)
    stored = {}
    for name, bits in layers.items():
        codes, codebook = rest.pop(f"{name}.{CODES}"), rest.pop(f"{name}.{CODEBOOK}")
        stored[name] = sfz.SharedTensor(
            codes.numpy().astype(np.int16), codebook.float().numpy(), int(bits)
        )
    return rest, sfz.encode(stored)


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the weights a bundle stores for ``model``: ``model.safetensors`` and
    ``model.sfz``."""
    rest, packed = split_shared(model, state_tensors(model))
    return len(serialize(rest)) + len(packed or b"")


def stored_bytes(folder: str | Path) -> int:
    """Bytes of a bundle's weights files (``model.safetensors`` + ``model.sfz``)."""
    return sum(
        (Path(folder) / f).stat().st_size for f in (WEIGHTS, SHARED) if (Path(folder) / f).is_file()
    )


def state_tensors(model: nn.Module, *, compact: bool = True) -> dict[str, torch.Tensor]:
    """The tensors a bundle stores for ``model``: its state dict, CPU, contiguous, no shared
    storage (safetensors refuses it); with ``compact``, the tensors recorded as sparse as
    values + bitmask where that is smaller (:func:`encode_sparse`)."""
    seen: set[int] = set()
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        seen.add(ptr)
        out[k] = t.cpu()
    if compact:
        for key in sparse_keys(model):
            t = out.get(key)
            if t is None or not t.is_floating_point():
                continue
            enc = encode_sparse(t)
            if enc is not None:
                del out[key]
                out[key + VALUES], out[key + BITMASK] = enc["values"], enc["bitmask"]
    return out


def decode_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (checked by :func:`~slimfuse.models.weights.check_fits`) with every sparse
    tensor decoded to the dense one of ``model``'s shape."""
    expected = model.state_dict()
    out = dict(state)
    for key in [k[: -len(VALUES)] for k in state if k.endswith(VALUES)]:
        if key + BITMASK in out and key in expected:
            values, bits = out.pop(key + VALUES), out.pop(key + BITMASK)
            out[key] = decode_sparse(values, bits, expected[key])
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
    that later load the bundle default to it. Code the model was built from (``file.py:fn``,
    also a fused model's members') is copied into the bundle's ``code/`` folder with its hash.
    """
    spec = spec_of(model)
    if spec is None:
        raise ModelError(
            f"{type(model).__name__} has no recorded source; build it with slimfuse.build_model / "
            "slimfuse.load, or give it one with slimfuse.models.source.set_spec"
        )
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        # bytes first, then a plain write: an OS error (a full disk) surfaces as one
        tensors, packed = split_shared(model, state_tensors(model))
        (tmp / WEIGHTS).write_bytes(serialize(tensors, metadata={"format": "pt"}))
        if packed is not None:
            (tmp / SHARED).write_bytes(packed)
        copy_tokenizer(model, tmp / TOKENIZER)
        recorded = spec.to_dict()
        for entry in specs_in(recorded):
            trust.copy_into(entry, tmp)
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


MAX_DEPTH = 8  # fused models inside fused models
MAX_MEMBERS = 256


def specs_in(
    spec: dict[str, Any], where: str = "model", depth: int = 0
) -> Iterator[dict[str, Any]]:
    """Every model spec in ``spec`` (a checked dict): itself, then a fused model's members'
    (recursively), each member entry checked on the way."""
    yield spec
    if spec.get("source") != "fused":
        return
    members = spec.get("kwargs", {}).get("members")
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise ModelError(
            f"{where}: a fused model needs kwargs.members, a list of at most {MAX_MEMBERS} entries"
        )
    if depth >= MAX_DEPTH:
        raise ModelError(f"{where}: fused models nested more than {MAX_DEPTH} deep")
    for i, entry in enumerate(members):
        at = f"{where}.kwargs.members.{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ModelError(f"{at}: expected an object with a name and a spec")
        entry["spec"] = ModelSpec.from_dict(entry.get("spec"), f"{at}.spec").to_dict()
        yield from specs_in(entry["spec"], f"{at}.spec", depth + 1)


class _Meta(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    format: int
    model: dict[str, Any]
    versions: dict[str, Any] = Field(default_factory=dict)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``slimfuse.json``, its structure checked (one line naming what is wrong)."""
    path = Path(folder) / META
    if not path.is_file():
        raise ModelError(f"{str(folder)!r} is not a bundle: no {META}")
    if path.stat().st_size > MAX_META_BYTES:
        raise ModelError(f"{path}: {path.stat().st_size} bytes, larger than a bundle's {META}")
    try:
        meta = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ModelError(
            f"{path}: bundle format {meta.get('format')!r}; this slimfuse reads {FORMAT}"
        )
    try:
        _Meta.model_validate(meta)
    except ValidationError as exc:
        where, msg = validation_error(exc)
        raise ModelError(f"{path}: {where}: {msg}") from exc
    return meta


MAX_META_BYTES = 64 << 20


def read_shared(folder: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The codes and codebooks of the rebuilt ``model``'s weight-shared layers, decoded from
    ``model.sfz`` against the shapes, bits and codebook sizes the model expects; every problem
    is one line."""
    path = folder / SHARED
    layers = shared_layers(model)
    if not layers:
        if path.is_file():
            raise ModelError(f"{path}: present, but {META} records no weight-shared layer")
        return {}
    if not path.is_file():
        raise ModelError(f"{str(folder)!r}: no {SHARED} ({META} records weight-shared layers)")
    want = expected_tensors(model)
    expected: dict[str, sfz.Expected] = {}
    for name, bits in layers.items():
        codes, codebook = want.get(f"{name}.{CODES}"), want.get(f"{name}.{CODEBOOK}")
        if codes is None or codebook is None or not isinstance(bits, int):
            raise ModelError(f"{META}: weight-shared layer {name!r} is not one in the model")
        expected[name] = sfz.Expected(tuple(codes.shape), int(codebook.shape[0]), bits)
    # bounded by the model's own sizes: at most two 16-bit codes per weight, plus tables
    limit = sum(8 * math.prod(e.shape) + 4 * e.k + 8192 for e in expected.values()) + 64
    size = path.stat().st_size
    if size > limit:
        raise ModelError(f"{path}: {size} bytes, more than its {len(expected)} layers can take")
    try:
        decoded = sfz.decode(path.read_bytes(), expected)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    out = {}
    for name, t in decoded.items():
        out[f"{name}.{CODES}"] = torch.from_numpy(t.codes.copy())
        out[f"{name}.{CODEBOOK}"] = torch.from_numpy(t.codebook.copy())
    return out


def load(folder: str | Path, *, trust_code: bool | None = None) -> nn.Module:
    """Rebuild the model saved in a bundle folder: source, then edits, then weights (strict).

    Nothing the folder says is trusted: ``slimfuse.json`` is checked field by field, code
    sources are refused unless ``trust_code=True`` (before anything runs) and run from the
    bundle's own copy with its hash checked, the weights file's layout is checked, and the
    rebuilt model must expect exactly the tensors the file holds (names, shapes, dtypes).
    """
    folder = Path(folder)
    meta = read_meta(folder)
    spec = ModelSpec.from_dict(meta["model"])
    recorded = spec.to_dict()
    with trust.trusting(trust_code):
        for entry in specs_in(recorded):
            if trust.is_code(entry["source"]):
                trust.require_trust(entry["source"], f"{folder}: model source")
            trust.locate_in(entry, folder)
        spec = ModelSpec.from_dict(recorded)
        if not (folder / WEIGHTS).is_file():
            raise ModelError(f"{str(folder)!r}: no {WEIGHTS}")
        state = read_safetensors(folder / WEIGHTS)
        model = rebuild(spec)
        model = apply_edits(model, spec.edits, state)
    set_spec(model, spec)
    state.update(read_shared(folder, model))
    check_fits(model, state, str(folder))
    model.load_state_dict(decode_state(model, state), strict=True)
    attach_tokenizer(model, folder / TOKENIZER)
    model.eval()
    return set_spec(model, spec)
