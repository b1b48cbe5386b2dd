"""ONNX graph bookkeeping: which node belongs to which module, what got quantized and why not.

The dynamo exporter names weight initializers after the state dict (``fc.weight``) and records
each node's module path in ``pkg.torch.onnx.name_scopes``; that maps ONNX nodes back to module
names, so the shared targeting syntax (module names, ``re:``, types) picks ONNX nodes too.
"""

from __future__ import annotations

import ast
from typing import Any

from torch import nn

from slimfuse.targeting import Targeting, matches

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "LSTM", "GRU")
NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def _scopes(node: Any) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                return list(ast.literal_eval(p.value))
            except (ValueError, SyntaxError):
                return []
    return []


def node_modules(graph: Any, module_names: set[str]) -> dict[str, str]:
    """ONNX node name -> module name (by its weight initializer, else its innermost scope)."""
    inits = {i.name for i in graph.initializer}
    out: dict[str, str] = {}
    for node in graph.node:
        owner = None
        for name in node.input:
            if name in inits and name.rpartition(".")[0] in module_names:
                owner = name.rpartition(".")[0]
                break
        if owner is None:
            scoped = [s for s in _scopes(node) if s in module_names]
            owner = scoped[-1] if scoped else None
        if owner is not None:
            out[node.name] = owner
    return out


def weight_input(graph: Any, node: Any) -> str | None:
    """The constant (initializer) input of a weighted node, if any."""
    inits = {i.name for i in graph.initializer}
    consts = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for name in node.input:
        if name in inits or name in consts:
            return name
    return None


def supported_types(mode: str, embeddings: bool) -> tuple[type, ...]:
    """Module types with an int8 kernel in ONNX Runtime for a mode."""
    base: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
    if mode == "dynamic":
        base = (*base, nn.LSTM)
    if embeddings:
        base = (*base, nn.Embedding)
    return base


def weighted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules that own a weight (what a quantization report lists)."""
    return {
        n: m
        for n, m in model.named_modules()
        if n and any(True for _ in m.parameters(recurse=False))
    }


def plan_nodes(
    graph: Any,
    model: nn.Module,
    selected: set[str],
    *,
    quantize_attention: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """(nodes to exclude from quantization, node -> module) for the selected modules."""
    names = {n for n, _ in model.named_modules() if n}
    owners = node_modules(graph, names)
    exclude = []
    for node in graph.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            # ONNX's own Attention (opset 23) runs fused in fp32; ONNX Runtime's quantizer would
            # take it for its contrib Attention and emit a QAttention that cannot take it
            exclude.append(node.name)
            continue
        if node.op_type not in WEIGHTED_OPS:
            continue
        has_weight = weight_input(graph, node) is not None
        owner = owners.get(node.name)
        if (has_weight and owner not in selected) or (
            not has_weight and node.op_type == "MatMul" and not quantize_attention
        ):
            exclude.append(node.name)
    return exclude, owners


def quantized_weights(graph: Any) -> set[str]:
    """Names of float weights that ONNX Runtime replaced by an int8 (or int4) tensor."""
    out = set()
    for init in graph.initializer:
        if init.name.endswith("_quantized"):
            out.add(init.name[: -len("_quantized")])
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            out.add(node.name)
    return out


def layer_report(
    model: nn.Module,
    fp32_graph: Any,
    int8_graph: Any,
    owners: dict[str, str],
    targeting: Targeting,
    supported: tuple[type, ...],
    mode: str,
    kept: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    """One row per weighted layer: ``{"layer", "type", "precision", "reason"}``."""
    kept = kept or {}
    done = quantized_weights(int8_graph)
    by_module: dict[str, list[Any]] = {}
    for node in fp32_graph.node:
        if node.name in owners and node.op_type in WEIGHTED_OPS:
            by_module.setdefault(owners[node.name], []).append(node)
    rows = []
    for name, module in weighted_modules(model).items():
        kind = type(module).__name__
        nodes = by_module.get(name, [])
        weights = [weight_input(fp32_graph, n) for n in nodes]
        if nodes and any(w is not None and w in done for w in weights):
            rows.append({"layer": name, "type": kind, "precision": "int8", "reason": "quantized"})
            continue
        reason = _why_fp32(name, module, nodes, targeting, supported, mode, kept)
        folded = reason.startswith("folded")
        rows.append(
            {
                "layer": name,
                "type": kind,
                "precision": "folded" if folded else "fp32",
                "reason": reason,
            }
        )
    return rows


def _why_fp32(
    name: str,
    module: nn.Module,
    nodes: list[Any],
    targeting: Targeting,
    supported: tuple[type, ...],
    mode: str,
    kept: dict[str, str],
) -> str:
    if name in kept:
        return kept[name]
    for sel in targeting.ignore:
        if matches(sel, name, module):
            return f"excluded by ignore selector {sel!r}"
    if targeting.targets is not None and not any(
        matches(s, name, module) for s in targeting.targets
    ):
        return "not among the targets"
    if isinstance(module, NORMS):
        if not nodes and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return "folded into the preceding convolution at export"
        return "normalisation layer: no int8 kernel, kept fp32"
    if not isinstance(module, supported):
        return f"{type(module).__name__} has no int8 {mode} kernel in ONNX Runtime"
    if not nodes:
        return "no weighted ONNX node found for it (constant-folded or unused)"
    ops = ", ".join(sorted({n.op_type for n in nodes}))
    return f"ONNX Runtime's {mode} quantizer left its {ops} node in fp32 (no int8 {ops} there)"


def summary(rows: list[dict[str, str]]) -> str:
    """``"12 int8, 3 fp32 (...)"`` for logs and the CLI."""
    q = sum(r["precision"] == "int8" for r in rows)
    f = [r for r in rows if r["precision"] == "fp32"]
    return f"{q} layer(s) quantized, {len(f)} kept fp32"
