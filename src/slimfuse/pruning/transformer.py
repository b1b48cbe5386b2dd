"""Structured pruning of BERT-style encoders: FFN intermediate neurons and attention heads.

Works on a Hugging Face BERT-family encoder (e.g. all-MiniLM-L6-v2 from
:func:`slimfuse.models.hf.minilm`), either bare or inside a :class:`~slimfuse.models.hf.SentenceEncoder`.
In every layer it removes the same number of

- FFN neurons: rows of ``intermediate.dense`` and the matching columns of ``output.dense``;
- attention heads: the head's rows of ``query``/``key``/``value`` and columns of
  ``attention.output.dense`` (the attention reshapes by head size, so fewer heads just work).

Importance: ``l1`` (Σ|w| of a neuron's / head's weights, in and out), ``l2``, or ``activation``
(data-driven: mean |activation| × ‖outgoing weights‖ per neuron, mean ‖output contribution‖ per
head, from a few batches of token inputs). The config is kept consistent (``intermediate_size``,
per-layer ``pruned_heads``), the shapes are recorded as a ``resize`` edit and the config as an
``hf_config`` edit, so the pruned model reloads with ``slimfuse.load``, runs in transformers and
exports to ONNX::

    small = prune_transformer(slimfuse.models.hf.minilm(), ffn_ratio=0.5, head_ratio=0.25)

:func:`prune_encoder` is the ``transformer`` method of :func:`slimfuse.prune`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimfuse.errors import ConfigError, UnsupportedLayerError
from slimfuse.models.source import record
from slimfuse.pruning.config import Transformer
from slimfuse.pruning.resize import record_resize, snapshot
from slimfuse.pruning.sparse import refresh_masks
from slimfuse.pruning.structured import check_ratio
from slimfuse.tasks import forward
from slimfuse.training import trainable_copy

if TYPE_CHECKING:
    from slimfuse.pruning.api import Job

TRANSFORMER_IMPORTANCE = ("l1", "l2", "activation")


def _encoder(model: nn.Module) -> nn.Module:
    """The HF model holding ``encoder.layer`` (the model itself or its ``.encoder``)."""
    for cand in (model, getattr(model, "encoder", None)):
        if cand is not None and hasattr(getattr(cand, "encoder", None), "layer"):
            return cand
    raise UnsupportedLayerError(
        f"{type(model).__name__} is not a BERT-style encoder: expected .encoder.layer[i] with "
        "attention.self.query/key/value, attention.output.dense, intermediate.dense, output.dense"
    )


def _layers(model: nn.Module) -> list[nn.Module]:
    layers = list(_encoder(model).encoder.layer)
    for i, layer in enumerate(layers):
        for path in (
            "attention.self.query",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ):
            mod: Any = layer
            for part in path.split("."):
                mod = getattr(mod, part, None)
            if not isinstance(mod, nn.Linear):
                raise UnsupportedLayerError(
                    f"encoder layer {i} has no Linear at {path!r} ({type(mod).__name__}); "
                    "expected a BERT-style layer"
                )
    return layers


def _slice_linear(lin: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep ``keep`` rows (dim 0: outputs) or columns (dim 1: inputs) of a Linear, in place."""
    with torch.no_grad():
        w = lin.weight.index_select(dim, keep).clone()
        lin.weight = nn.Parameter(w)
        if dim == 0:
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.index_select(0, keep).clone())
            lin.out_features = len(keep)
        else:
            lin.in_features = len(keep)


def _norm(w: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    return w.abs().sum(dim) if p == 1 else w.pow(2).sum(dim).sqrt()


@torch.no_grad()
def _activation_stats(
    model: nn.Module, layers: list[nn.Module], batches: Iterable[Any]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: mean |FFN activation| per neuron, and mean |context| per attention unit."""
    ffn = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    ctx = [torch.zeros(layer.attention.output.dense.in_features) for layer in layers]
    counts = [0]
    handles = []
    for i, layer in enumerate(layers):

        def grab_ffn(_m: nn.Module, inp: Any, _out: Any, i: int = i) -> None:
            ffn[i] += inp[0].abs().reshape(-1, inp[0].shape[-1]).mean(0)

        def grab_ctx(_m: nn.Module, inp: Any, _out: Any, i: int = i) -> None:
            ctx[i] += inp[0].abs().reshape(-1, inp[0].shape[-1]).mean(0)

        handles.append(layer.output.dense.register_forward_hook(grab_ffn))
        handles.append(layer.attention.output.dense.register_forward_hook(grab_ctx))
    try:
        model.eval()
        for batch in batches:
            forward(model, batch)
            counts[0] += 1
    finally:
        for h in handles:
            h.remove()
    if counts[0] == 0:
        raise ConfigError("activation importance needs token batches; got none")
    return [f / counts[0] for f in ffn], [c / counts[0] for c in ctx]


def _scores(
    model: nn.Module, layers: list[nn.Module], importance: str, inputs: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(FFN neuron scores, head scores) per layer."""
    ffn_scores, head_scores = [], []
    stats = None
    if importance == "activation":
        if inputs is None:
            raise ConfigError("importance 'activation' needs inputs: a few token batches")
        batches = [inputs] if isinstance(inputs, dict) else list(inputs)
        stats = _activation_stats(model, layers, batches)
    p = 2 if importance == "l2" else 1
    for i, layer in enumerate(layers):
        att = layer.attention.self
        n_heads, size = att.num_attention_heads, att.attention_head_size
        w_in, w_out = layer.intermediate.dense.weight, layer.output.dense.weight
        o = layer.attention.output.dense.weight
        if stats is None:
            ffn_scores.append(_norm(w_in, 1, p) + _norm(w_out, 0, p))
            per_unit = (
                _norm(att.query.weight, 1, p)
                + _norm(att.key.weight, 1, p)
                + _norm(att.value.weight, 1, p)
                + _norm(o, 0, p)
            )
        else:
            ffn_scores.append(stats[0][i] * w_out.norm(dim=0))
            per_unit = stats[1][i] * o.norm(dim=0)
        head_scores.append(per_unit.view(n_heads, size).sum(1))
    return ffn_scores, head_scores


def prune_transformer(
    model: nn.Module,
    *,
    ffn_ratio: float = 0.5,
    head_ratio: float = 0.25,
    importance: str = "l1",
    inputs: Any = None,
    inplace: bool = False,
) -> nn.Module:
    """Remove ``ffn_ratio`` of the FFN neurons and ``head_ratio`` of the heads in every layer."""
    check_ratio(ffn_ratio, "FFN ratio")
    check_ratio(head_ratio, "head ratio")
    if importance not in TRANSFORMER_IMPORTANCE:
        raise ConfigError(
            f"transformer importance {importance!r}: expected one of {', '.join(TRANSFORMER_IMPORTANCE)}"
        )
    if not inplace:
        model = trainable_copy(model)
    layers = _layers(model)
    enc = _encoder(model)
    before = snapshot(model)
    ffn_scores, head_scores = _scores(model, layers, importance, inputs)
    pruned_heads: dict[str, list[int]] = {
        str(k): list(v) for k, v in (getattr(enc.config, "pruned_heads", None) or {}).items()
    }
    kept_ffn = None
    for i, layer in enumerate(layers):
        att = layer.attention.self
        n_heads, size = att.num_attention_heads, att.attention_head_size
        n_ffn = layer.intermediate.dense.out_features
        keep_ffn_n = int(n_ffn * (1 - ffn_ratio))
        keep_heads_n = int(n_heads * (1 - head_ratio))
        if keep_ffn_n < 1 or keep_heads_n < 1:
            raise ConfigError(
                f"ratios (FFN {ffn_ratio}, heads {head_ratio}) would remove every "
                f"{'FFN neuron' if keep_ffn_n < 1 else 'head'} of layer {i} "
                f"({n_ffn} neurons, {n_heads} heads); expected lower ratios"
            )
        keep = torch.topk(ffn_scores[i], keep_ffn_n).indices.sort().values
        _slice_linear(layer.intermediate.dense, keep, 0)
        _slice_linear(layer.output.dense, keep, 1)
        kept_ffn = keep_ffn_n
        if keep_heads_n < n_heads:
            heads = torch.topk(head_scores[i], keep_heads_n).indices.sort().values
            gone = sorted(set(range(n_heads)) - set(heads.tolist()))
            units = (heads[:, None] * size + torch.arange(size)).reshape(-1)
            for lin in (att.query, att.key, att.value):
                _slice_linear(lin, units, 0)
            _slice_linear(layer.attention.output.dense, units, 1)
            att.num_attention_heads = keep_heads_n
            att.all_head_size = keep_heads_n * size
            pruned_heads[str(i)] = sorted(set(pruned_heads.get(str(i), [])) | set(gone))
    cfg = {"intermediate_size": kept_ffn, "pruned_heads": pruned_heads}
    for k, v in cfg.items():
        setattr(enc.config, k, v)
    prefix = "encoder." if enc is not model else ""
    changed = record_resize(
        model,
        before,
        method="transformer",
        ffn_ratio=ffn_ratio,
        head_ratio=head_ratio,
        importance=importance,
    )
    record(model, edit={"kind": "hf_config", "module": prefix.rstrip("."), "config": cfg})
    refresh_masks(model, changed)  # a sparse layer keeps its zeros at its new size
    return model.eval()


def prune_encoder(model: nn.Module, cfg: Transformer, job: Job) -> nn.Module:
    """The ``transformer`` method: a copy of the encoder with fewer FFN neurons and heads
    (importance ``activation``: on ``job.inputs``, else four batches of the data), recovered."""
    inputs = job.inputs
    if inputs is None and job.data is not None and cfg.importance == "activation":
        loader = job.data.loader("train", batch_size=32)
        inputs = [job.task.unpack(b)[0] for b, _ in zip(loader, range(4), strict=False)]
    small = prune_transformer(
        model, ffn_ratio=cfg.ffn, head_ratio=cfg.heads, importance=cfg.importance, inputs=inputs
    )
    job.recover(small, [], "recover")
    return small


def apply_hf_config(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: set the recorded config values on the rebuilt encoder."""
    enc = model.get_submodule(edit["module"]) if edit.get("module") else model
    for k, v in edit["config"].items():
        setattr(enc.config, k, v)
    return model


def heads_per_layer(model: nn.Module) -> list[int]:
    return [layer.attention.self.num_attention_heads for layer in _layers(model)]
