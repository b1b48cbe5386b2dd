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
        "resize": "slimfuse.pruning.resize:apply_resize",
        "sparse": "slimfuse.pruning.sparse:apply_sparse",
        "hf_config": "slimfuse.pruning.transformer:apply_hf_config",
    },
)


def apply_edits(
    model: nn.Module, edits: list[dict[str, Any]], state: dict[str, torch.Tensor]
) -> nn.Module:
    for edit in edits:
        model = EDITS.get(edit["kind"])(model, edit, state)
    return model
