"""Model sources: a zoo name, ``file.py:fn``, ``module:fn``, a bundle folder or a Hugging Face folder.

Every model built here carries a :class:`ModelSpec` (``model.slimfuse_spec``) saying how to
rebuild it: its source, keyword arguments, the structural edits applied since and the lineage of
stages. :func:`slimfuse.save` writes that spec to ``slimfuse.json``.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, get_type_hints

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from torch import nn

from slimfuse import trust
from slimfuse.data import check_fits
from slimfuse.data.core import split_record
from slimfuse.data.preprocessing import is_standardized, standardize_inputs, standardize_targets
from slimfuse.data.text import TEXT_FORMS, is_text, is_tokens
from slimfuse.errors import DataError, ModelError, SlimfuseWarning, validation_error
from slimfuse.models.zoo import MODELS

SPEC_ATTR = "slimfuse_spec"


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
    code_sha256: str | None = None  # a file source: the hash of the code that ran
    # the model standardizes its raw inputs (slimfuse.data.preprocessing): {"shape": [...]};
    # the statistics are buffers in the weights
    standardize: dict[str, Any] | None = None
    # the model outputs de-standardized regression targets: {"shape": [targets]}
    standardize_targets: dict[str, Any] | None = None
    split: dict[str, Any] | None = None  # the data split it was built for (split_record)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> ModelSpec:
        """A spec read from a file, every field's type checked (one line naming the field)."""
        try:
            checked = _SpecSchema.model_validate(d)
        except ValidationError as exc:
            loc, msg = validation_error(exc)
            raise ModelError(f"{where}.{loc}: {msg}" if loc else f"{where}: {msg}") from exc
        return cls(**checked.model_dump())


class _Standardize(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    shape: list[Annotated[int, Field(ge=1, le=1 << 24)]] = Field(min_length=1, max_length=8)


Fingerprint = Annotated[str, Field(pattern="^[0-9a-f]{12}$")]


class _Split(BaseModel):
    """The split a model was trained on (:func:`slimfuse.data.split_record`)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    data: str = Field(max_length=4096)
    split_seed: int | None = None
    sizes: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=3)
    val: Fingerprint | None = None
    test: Fingerprint | None = None


class _SpecSchema(BaseModel):
    """What ``slimfuse.json`` may say about a model (unknown keys of newer versions ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    source: str = Field(min_length=1, max_length=4096)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    edits: list[dict[str, Any]] = Field(default_factory=list)
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    task: str | None = None
    input_shape: list[Annotated[int, Field(ge=0)]] | None = None
    num_classes: Annotated[int, Field(ge=1)] | None = None
    code_sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")] | None = None
    standardize: _Standardize | None = None
    standardize_targets: _Standardize | None = None
    split: _Split | None = None

    @field_validator("edits")
    @classmethod
    def _kinds(cls, edits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, edit in enumerate(edits):
            if not isinstance(edit.get("kind"), str):
                raise ValueError(f"edit {i} has no kind (a string)")
        return edits


def spec_of(model: nn.Module) -> ModelSpec | None:
    return getattr(model, SPEC_ATTR, None)


def task_of(model: nn.Module, default: str = "classification") -> str:
    """The task the model's spec records (an encoder: ``embedding``), else ``default``."""
    spec = spec_of(model)
    return spec.task if spec is not None and spec.task else default


ENCODER_SOURCES = ("hf_encoder", "minilm")


def takes_tokens(model: nn.Module) -> bool:
    """``model`` reads token ids + an attention mask (an encoder): built as one, or its
    ``forward`` takes ``input_ids``."""
    spec = spec_of(model)
    if spec is not None and spec.source in ENCODER_SOURCES:
        return True
    try:
        return "input_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


def is_transformer_encoder(model: nn.Module, data: Any = None) -> bool:
    """``model`` reads token ids + attention masks (:func:`takes_tokens`, or ``data``'s inputs
    are token ids) or contains an attention layer (a torch ``MultiheadAttention``, or a module
    class named ``*SelfAttention``): the models whose activations have outlier channels that a
    static int8 range cannot hold, so their int8 is dynamic (ONNX Runtime's and ExecuTorch's)."""
    if takes_tokens(model) or is_tokens(data):
        return True
    return any(
        isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("SelfAttention")
        for m in model.modules()
    )


def check_model_fits(model: nn.Module, data: Any, task: str, what: str = "the model") -> None:
    """Fail with one line naming ``what`` if ``data``'s inputs do not fit ``model`` (its recorded
    input shape, then one forward pass on two samples). An encoder takes text (or token data)
    and nothing else; text fits only an encoder. Other inputs of task ``embedding``: not
    checked."""
    if data is None:
        return
    tokens, text = takes_tokens(model), is_text(data) or is_tokens(data)
    if tokens and not text:
        raise DataError(
            f"{what} takes token ids + attention mask: give text data ({TEXT_FORMS}); "
            f"{data.name} holds inputs of shape {tuple(data.input_shape)}"
        )
    if text and not tokens:
        spec = spec_of(model)
        shape = f" of shape {tuple(spec.input_shape)}" if spec and spec.input_shape else ""
        raise DataError(
            f"{data.name} is text, but {what} takes numeric inputs{shape}: text data is for "
            "encoders (minilm, a Hugging Face folder); give it numeric data (mnist1d, digits, "
            ".npz, .csv)"
        )
    if tokens or task == "embedding":
        return
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


def _check_not_text(fn: Callable[..., Any], kwargs: dict[str, Any], data: Any, source: str) -> None:
    """Text data cannot size a model built for numbers (its inputs or classes): one line."""
    if not is_text(data):
        return
    params = inspect.signature(fn).parameters
    sized = [
        k
        for k in ("in_features", "in_length", "num_classes")
        if k in params and k not in kwargs and params[k].default is inspect.Parameter.empty
    ]
    if sized:
        raise DataError(
            f"{data.name} is text, but model {source!r} takes numeric inputs (its "
            f"{', '.join(sized)} come from the data): text data is for encoders (minilm, a "
            "Hugging Face folder); give it numeric data (mnist1d, digits, .npz, .csv)"
        )


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
    outputs = getattr(data, "num_classes", None) or getattr(data, "meta", {}).get("targets")
    if "num_classes" in params and "num_classes" not in out and outputs:
        out["num_classes"] = outputs  # classes, or regression targets
    if "in_features" in params and "in_features" not in out and shape:
        out["in_features"] = n_in
    if "in_length" in params and "in_length" not in out and len(shape) == 1:
        out["in_length"] = shape[0]
    return out


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_kwargs(
    fn: Callable[..., Any], kwargs: dict[str, Any], what: str, skip: int = 0
) -> dict[str, Any]:
    """``kwargs`` validated against ``fn``'s signature: names, and the types and bounds its
    annotations give (pydantic ``Annotated[int, Field(le=...)]``); the first ``skip`` parameters
    are the caller's (a fused model's members). Returns the values as validated."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ModelError(f"{what}: kwargs {_short(kwargs)}: expected a mapping of names")
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    extra = "allow" if any(p.kind is p.VAR_KEYWORD for p in params) else "forbid"
    schema = create_model(
        f"{getattr(fn, '__name__', 'builder')}_kwargs",
        __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True),
        **fields,
    )
    try:
        checked = schema.model_validate(kwargs)
    except ValidationError as exc:
        where, msg = validation_error(exc)
        known = ", ".join(fields) or "none"
        raise ModelError(
            f"{what}: {where}: {msg} (it takes {known})"
        ) from exc  # pydantic's full report stays out of the one line
    return {k: getattr(checked, k) for k in kwargs if k in fields} | {
        k: v for k, v in kwargs.items() if k not in fields
    }


MAX_BUILD_BYTES = 4 << 30  # what a model source may allocate before its weights are checked


def check_build_size(
    fn: Callable[..., Any], kwargs: dict[str, Any], what: str, limit: int = MAX_BUILD_BYTES
) -> None:
    """Build the model on the ``meta`` device (no memory) and refuse one larger than ``limit``
    bytes of parameters and buffers: a size read from a file is not trusted."""
    try:
        with torch.device("meta"):
            probe = fn(**kwargs)
    except Exception:  # a builder that cannot run on "meta": the real build reports errors
        return
    if not isinstance(probe, nn.Module):
        return
    size = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    if size > limit:
        raise ModelError(
            f"{what} would hold {size / 2**30:.1f} GiB of weights; a model source may build at "
            f"most {limit / 2**30:.0f} GiB (check its sizes)"
        )


def _builder(
    source: str, expected_sha256: str | None = None
) -> tuple[Callable[..., Any], str, str | None]:
    """The builder of a source: ``(fn, resolved source, sha256 of a code file)``."""
    if source in MODELS:
        return MODELS.get(source), source, None
    if trust.is_code(source):
        return trust.import_callable(source, what="model source", expected_sha256=expected_sha256)
    MODELS.get(source)  # raises with the list of zoo names and close matches
    raise AssertionError("unreachable")


def _call(fn: Callable[..., Any], source: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build: a registered builder's kwargs are checked (signature, bounds, size) first; user
    code (trusted) is called as it is."""
    what = f"model {source!r}"
    if not trust.is_code(source):
        kwargs = check_kwargs(fn, kwargs, what)
        if kwargs and source != "fused":  # a fused model checks its members and its own part
            check_build_size(fn, kwargs, f"{what} with {_short(kwargs)}")
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{what} with {_short(kwargs)}: {first[:200]}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model source {source!r} returned {type(model).__name__}; expected an nn.Module"
        )
    return model


def build_model(
    source: str, *, data: Any = None, trust_code: bool | None = None, **kwargs: Any
) -> nn.Module:
    """Build a fresh model from a zoo name, ``file.py:fn`` or ``module:fn``.

    Code sources run only with ``trust_code=True`` (see :mod:`slimfuse.trust`).
    """
    with trust.trusting(trust_code):
        fn, resolved, digest = _builder(source)
        _check_not_text(fn, kwargs, data, source)
        kwargs = _fill_kwargs(fn, kwargs, data)
        model = _call(fn, source, kwargs)
    # a model class may say what it is for (an encoder: "embedding"); data and bundles may refine it
    spec = ModelSpec(
        source=resolved,
        kwargs=kwargs,
        task=getattr(model, "default_task", None),
        code_sha256=digest,
    )
    if data is not None:
        spec.input_shape = list(data.input_shape)
        spec.num_classes = data.num_classes
        spec.split = split_record(data)
        meta = getattr(data, "meta", {})
        if meta.get("targets") and spec.task is None:
            spec.task = "regression"  # real-valued targets
        targets = meta.get("standardize_targets")
        if targets is not None and resolved != "fused":  # before the inputs' (the outer class)
            standardize_targets(model, targets)
            spec.standardize_targets = {"shape": list(targets["shape"])}
        stats = meta.get("standardize")
        if stats is not None and resolved != "fused":
            standardize_inputs(model, stats)
            spec.standardize = {"shape": list(stats["shape"])}
    return set_spec(model, spec)


def standardized(model: nn.Module, data: Any) -> nn.Module:
    """``model`` (in place) standardizing its raw inputs with ``data``'s statistics, as the
    models :func:`build_model` builds for that data do: for a model of your own (an
    ``nn.Module`` built elsewhere) trained on ``.csv`` / ``.npz`` data. Data without statistics
    (a built-in set, ``standardize=False``) or a model that already standardizes: unchanged.
    A model with a spec records it, so its bundle rebuilds the standardization."""
    stats = getattr(data, "meta", {}).get("standardize")
    if stats is None or is_standardized(model):
        return model
    standardize_inputs(model, stats)
    spec = spec_of(model)
    if spec is not None:
        spec.standardize = {"shape": list(stats["shape"])}
    return model


def warn_raw_inputs(model: nn.Module, data: Any, what: str = "the model") -> None:
    """One warning line when ``data`` carries statistics to standardize with but ``model``
    (one built outside slimfuse, or saved before) takes its inputs raw."""
    if getattr(data, "meta", {}).get("standardize") is None or is_standardized(model):
        return
    spec = spec_of(model)
    if spec is not None and spec.source == "fused":  # its members standardize (or not) each
        return
    warnings.warn(
        f"{what} takes {data.name}'s inputs unstandardized (only the models slimfuse builds "
        "for the data standardize them); slimfuse.models.source.standardized(model, data) "
        "adds it",
        SlimfuseWarning,
        stacklevel=3,
    )


def rebuild(spec: ModelSpec) -> nn.Module:
    """The model a spec was built from, before its edits and weights (a bundle's first step).

    The source's kwargs are checked like any file's values; a code file must still have the
    hash it was saved with.
    """
    fn, _, _ = _builder(spec.source, spec.code_sha256)
    model = _call(fn, spec.source, dict(spec.kwargs))
    if spec.standardize_targets is not None:  # its statistics come with the weights
        standardize_targets(model, spec.standardize_targets)
    if spec.standardize is not None:
        standardize_inputs(model, spec.standardize)
    return model
