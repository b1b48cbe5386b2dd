"""Structural edits: how a bundle rebuilds a model whose structure changed after it was built.

A technique that changes a model's structure (pruning removes channels, quantization swaps
layers) records an edit dict ``{"kind": ..., ...}`` with :func:`slimfuse.models.source.record`
and registers a handler here. On load, the model is built from its source, then each edit's
handler is called in order with the saved state dict, then the weights are loaded strictly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError, SlimfuseError
from slimfuse.registry import Registry

EditHandler = Callable[[nn.Module, dict[str, Any], dict[str, torch.Tensor]], nn.Module]

# name -> "module:function"; the technique families declare their handlers here.
EDITS: Registry[EditHandler] = Registry(
    "structural edit",
    lazy={
        "fusion_members": "slimfuse.fusion.build:fusion_members_edit",
        "keep_blocks": "slimfuse.distillation.students:keep_blocks_edit",
        "quantized_graph": "slimfuse.quantization.runtime:load_quantized",
        "weight_only": "slimfuse.quantization.weight_only:load_weight_only",
        "shared": "slimfuse.quantization.shared:load_shared",
        "resize": "slimfuse.pruning.resize:apply_resize",
        "sparse": "slimfuse.pruning.sparse:apply_sparse",
        "hf_config": "slimfuse.pruning.transformer:apply_hf_config",
        "lowrank": "slimfuse.lowrank.layers:apply_lowrank",
    },
)


def apply_edits(
    model: nn.Module, edits: list[dict[str, Any]], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Apply ``edits`` (read from a file) in order; a malformed one is one line naming it."""
    for i, edit in enumerate(edits):
        handler = EDITS.get(edit["kind"])
        try:
            model = handler(model, edit, state)
        except SlimfuseError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(
                f"structural edit {i} ({edit['kind']}) is malformed or does not fit the model "
                f"({type(exc).__name__}: {first[:160]})"
            ) from exc
    return model
