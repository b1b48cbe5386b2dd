"""Smaller int8 ONNX files with the same numbers: what ONNX Runtime's quantizers leave behind.

ONNX Runtime's ``quantize_static`` / ``quantize_dynamic`` write a QDQ (or integer-op) graph in
which, for a small model, the bookkeeping outweighs the int8 weights: every layer gets its own
zero-point tensors (all zeros), scales are written once per consumer, names are long
(``conv2.bias_quantized_zero_point``, ``relu_1_4d_DequantizeLinear_Output``), each tensor's
inferred shape is kept (``value_info``) and data-movement ops (``Squeeze``, ``Reshape``) sit
between a ``DequantizeLinear`` and a ``QuantizeLinear`` of the same scale. For the MNIST-1D CNN
(5,210 parameters) that made the int8 file 0.59x the fp32 one instead of about 0.3x.

:func:`compact_graph` rewrites the serialized graph:

- a ``DequantizeLinear -> Reshape / Squeeze / Unsqueeze / Flatten / Transpose ->
  QuantizeLinear`` chain with the same scale and zero point becomes the data-movement op on the
  int8 tensor (ONNX Runtime drops these pairs itself at load; ``Q(DQ(q)) = q`` exactly, since
  ``(q - zp) * s / s`` is within two ulps of the integer ``q - zp``);
- identical constant tensors (zero points, scales, shape constants) are stored once;
- every tensor but the graph's inputs and outputs gets a short name, nodes get none (names are
  optional in ONNX; the per-layer report is made before, from the quantizer's names);
- doc strings and metadata are dropped, so are the recorded shapes (``value_info``) that ONNX
  Runtime infers again by itself, and small tensors are stored as raw bytes (signed zero points
  as varints take up to 10 bytes each).

None of this changes what ONNX Runtime computes: the tests run real inputs through the graph
before and after and require bit-identical outputs. A graph with subgraphs (``If``, ``Loop``,
``Scan`` bodies that may read outer names) only gets the stripping.
"""

from __future__ import annotations

from typing import Any

MOVES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose")
FLT_MIN = 1.1754944e-38  # the smallest normal float32: Q(DQ(q)) = q needs a normal scale


def compact_graph(data: bytes) -> bytes:
    """The serialized ONNX model ``data``, compacted (see the module doc); same outputs."""
    import onnx

    model = onnx.load_from_string(data)
    compact_model(model)
    return model.SerializeToString()


def compact_model(model: Any) -> Any:
    """:func:`compact_graph` on an ``onnx.ModelProto``, in place; returns it."""
    graph = model.graph
    _strip(model)
    if _has_subgraphs(graph):
        return model
    _drop_qdq_around_moves(graph)
    _fold_quantized_constants(model)
    graph = model.graph  # the fold may have replaced the graph message
    _drop_bias_zero_points(graph)
    _drop_default_attributes(graph, _opsets(model))
    _dedup_initializers(graph)
    _prune_unused(graph)
    _prune_value_info(model)
    _rename(graph)
    _raw_tensors(graph)
    return model


# -- stripping ---------------------------------------------------------------------------------
def _strip(model: Any) -> None:
    model.ClearField("doc_string")
    del model.metadata_props[:]
    graph = model.graph
    graph.ClearField("doc_string")
    del graph.metadata_props[:]  # the exporter's graph signature: 600 bytes for a small CNN
    for node in graph.node:
        node.ClearField("doc_string")
        del node.metadata_props[:]
    for t in graph.initializer:
        t.ClearField("doc_string")
    for v in (*graph.input, *graph.output):
        v.ClearField("doc_string")
        del v.metadata_props[:]  # the exporter's notes on where each input came from


def _has_subgraphs(graph: Any) -> bool:
    return any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute)


# -- Q/DQ pairs around data movement -----------------------------------------------------------
def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def _const_value(graph: Any, name: str) -> Any:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _same_qparams(graph: Any, dq: Any, q: Any) -> bool:
    """Equal scale and zero point (by value, both constants, the scale normal) and no axis."""
    import numpy as np

    if any(a.name in ("axis", "block_size") for a in (*dq.attribute, *q.attribute)):
        return False  # per-tensor pairs only (what ONNX Runtime writes around data movement)
    if len(dq.input) < 2 or len(q.input) < 2:
        return False
    s1, s2 = _const_value(graph, dq.input[1]), _const_value(graph, q.input[1])
    if s1 is None or s2 is None or s1.size != 1 or s2.size != 1:
        return False
    if not (s1.dtype == s2.dtype and float(s1.item()) == float(s2.item())):
        return False
    if not np.isfinite(s1).all() or not abs(float(s1.item())) >= FLT_MIN:
        return False
    z1 = _const_value(graph, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    z2 = _const_value(graph, q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if z1 is None or z2 is None:  # an omitted zero point means 0 of another type: keep the pair
        return False
    return z1.dtype == z2.dtype and z1.size == z2.size == 1 and z1.item() == z2.item()


def _drop_qdq_around_moves(graph: Any) -> int:
    """``DQ -> move -> Q`` (same parameters, nothing else reading between) -> ``move`` on the
    quantized tensor. Returns how many pairs were dropped."""
    outputs = {o.name for o in graph.output}
    dropped = 0
    changed = True
    while changed:
        changed = False
        consumers = _consumers(graph)
        producer = {o: n for n in graph.node for o in n.output}
        for move in graph.node:
            if move.op_type not in MOVES or move.domain not in ("", "ai.onnx"):
                continue
            dq = producer.get(move.input[0])
            after = consumers.get(move.output[0], [])
            if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1:
                continue
            q = after[0]
            if q.op_type != "QuantizeLinear" or q.input[0] != move.output[0]:
                continue
            if (
                len(consumers.get(dq.output[0], [])) != 1
                or dq.output[0] in outputs
                or move.output[0] in outputs
                or not _same_qparams(graph, dq, q)
            ):
                continue
            move.input[0] = dq.input[0]
            move.output[0] = q.output[0]
            graph.node.remove(dq)
            graph.node.remove(q)
            dropped += 1
            changed = True
            break
    return dropped


def _drop_bias_zero_points(graph: Any) -> int:
    """The all-zero zero point of an int32 ``DequantizeLinear`` (a quantized bias) is the
    default: omitted. (Weights and activations keep theirs: fused int8 kernels read them.)"""
    import numpy as np

    inits = {t.name: t for t in graph.initializer}
    n = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 3 or not node.input[2]:
            continue
        x, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if x is None or zp is None or x.data_type != 6 or zp.data_type != 6:  # INT32
            continue
        if np.any(_const_value(graph, zp.name)):
            continue
        del node.input[2]
        n += 1
    return n


def _opsets(model: Any) -> dict[str, int]:
    return {(o.domain or ""): o.version for o in model.opset_import}


# defaults the spec states in words (no written default in the schema): per spatial axis
SPATIAL_DEFAULTS = {"dilations": 1, "strides": 1, "pads": 0}
SPATIAL_OPS = ("Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool")


def _is_default(node: Any, a: Any, schema: Any) -> bool:
    from onnx import AttributeProto, helper

    if node.op_type in SPATIAL_OPS and a.name in SPATIAL_DEFAULTS:
        return a.type == AttributeProto.INTS and all(v == SPATIAL_DEFAULTS[a.name] for v in a.ints)
    spec = schema.attributes.get(a.name)
    if spec is None or not spec.default_value.name:  # required, or no written default
        return False
    return a.type == spec.default_value.type and helper.get_attribute_value(
        a
    ) == helper.get_attribute_value(spec.default_value)


def _drop_default_attributes(graph: Any, opsets: dict[str, int]) -> int:
    """Attributes equal to their default (``group=1``, ``auto_pad="NOTSET"``, Gemm's
    ``alpha=1``, a convolution's unit ``dilations``...): the op reads the same value without
    them. Standard ops only."""
    from onnx import defs

    n = 0
    for node in graph.node:
        domain = node.domain if node.domain != "ai.onnx" else ""
        if domain != "" or not node.attribute:
            continue
        try:
            schema = defs.get_schema(node.op_type, opsets.get("", 1), "")
        except Exception:
            continue
        drop = [a for a in node.attribute if _is_default(node, a, schema)]
        for a in drop:
            node.attribute.remove(a)
        n += len(drop)
    return n


# -- constant subgraphs that end in 8 bits ------------------------------------------------------
def _fold_quantized_constants(model: Any) -> int:
    """Store what a constant subgraph quantizes, not the float tensor it starts from.

    ONNX Runtime's quantizer treats a weight that reaches its op through other ops as an
    activation: the exporter slices and concatenates a GRU's recurrent weights to reorder its
    gates, the quantizer puts ``QuantizeLinear`` / ``DequantizeLinear`` pairs on those ops, and
    the file keeps the float weights (87% of the GRU model's int8 file). The constant part of
    such a chain, up to the last ``DequantizeLinear`` before an op that reads run-time data, is
    computed here by ONNX Runtime itself (the kernels that would compute it at load or at every
    call) and stored as its 8-bit result. Done only where the file gets smaller.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inputs = {i.name for i in graph.input}
    inits = {t.name: t for t in graph.initializer if t.name not in inputs}
    const = set(inits)
    const_nodes: dict[str, Any] = {}  # output name -> node
    order = []
    for node in graph.node:
        if (
            node.domain in ("", "ai.onnx")
            and node.op_type not in ("RandomNormal", "RandomUniform", "Multinomial")
            and node.input
            and all(not i or i in const for i in node.input)
        ):
            order.append(node)
            for o in node.output:
                const.add(o)
                const_nodes[o] = node
    if not order:
        return 0
    folded_ids = {id(n) for n in order}
    targets: list[str] = []
    kept: set[int] = set()
    frontier = [
        i for n in graph.node if id(n) not in folded_ids for i in n.input if i in const_nodes
    ] + [o.name for o in graph.output if o.name in const_nodes]
    seen: set[str] = set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        node = const_nodes.get(name)
        if node is None:
            continue
        if node.op_type == "DequantizeLinear":  # stays: fused int8 kernels read it
            kept.add(id(node))
            frontier += [i for i in node.input if i]
        else:
            targets.append(name)
    targets = [t for t in targets if t in const_nodes]
    if not targets:
        return 0
    # the nodes that compute the targets (ancestors), then ONNX Runtime runs them
    needed: list[Any] = []
    want = set(targets)
    for node in reversed(order):
        if id(node) not in kept and any(o in want for o in node.output):
            needed.append(node)
            want.update(i for i in node.input if i)
    needed.reverse()
    values = _evaluate(model, needed, targets, [inits[n] for n in want if n in inits])
    if values is None or any(v.dtype not in (np.uint8, np.int8) for v in values.values()):
        return 0  # only 8-bit results: float ones would not shrink the file
    drop = {id(n) for n in needed}
    trial = type(model)()
    trial.CopyFrom(model)
    nodes = [n for n in graph.node if id(n) not in drop]
    del trial.graph.node[:]
    trial.graph.node.extend(nodes)
    trial.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    _prune_unused(trial.graph)
    if trial.ByteSize() >= model.ByteSize():
        return 0
    model.CopyFrom(trial)
    return len(needed)


def _evaluate(
    model: Any, nodes: list[Any], outputs: list[str], initializers: list[Any]
) -> dict[str, Any] | None:
    """Run ``nodes`` (constant: no graph input) in ONNX Runtime; ``{output: array}``."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(
        nodes,
        "constants",
        [],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializers,
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = sess.run(outputs, {})
    except Exception:
        return None
    return dict(zip(outputs, got, strict=True))


# -- constants ---------------------------------------------------------------------------------
def _key(t: Any) -> tuple[int, tuple[int, ...], bytes]:
    from onnx import numpy_helper

    return t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()


def _dedup_initializers(graph: Any) -> int:
    """One initializer per distinct (type, shape, bytes); returns how many were merged."""
    overridable = {i.name for i in graph.input}  # an initializer that is also an input
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    alias: dict[str, str] = {}
    keep = []
    for t in graph.initializer:
        if t.name in overridable or t.data_location == 1:  # EXTERNAL: leave alone
            keep.append(t)
            continue
        k = _key(t)
        if k in first:
            alias[t.name] = first[k]
        else:
            first[k] = t.name
            keep.append(t)
    if alias:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return len(alias)


def _prune_unused(graph: Any) -> None:
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    keep = [
        t for t in graph.initializer if t.name in used or t.name in {i.name for i in graph.input}
    ]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _raw_tensors(graph: Any) -> None:
    """Typed fields (``float_data``, varint ``int32_data``) -> ``raw_data``: never larger."""
    from onnx import numpy_helper

    for i, t in enumerate(graph.initializer):
        if t.raw_data or t.data_type in (0, 8):  # already raw, undefined, or strings
            continue
        raw = numpy_helper.from_array(numpy_helper.to_array(t), t.name)
        if raw.ByteSize() < t.ByteSize():
            graph.initializer[i].CopyFrom(raw)


def _prune_value_info(model: Any) -> None:
    """Keep the inferred shapes ONNX Runtime could not work out again by itself.

    An entry goes if its tensor is gone, or if ONNX shape inference on the graph without any
    entries gives the same type and shape, with every symbolic dimension one of the graph
    inputs' (``batch``). Entries with other symbols stay: they record which unknown dimensions
    are equal, which ONNX Runtime's fusions check (without them a BERT encoder's residual
    ``Add`` + ``LayerNormalization`` no longer fuse into ``SkipLayerNormalization`` and the
    outputs move by an ulp)."""
    from onnx import shape_inference

    graph = model.graph
    live = {o for n in graph.node for o in n.output}
    entries = [v for v in graph.value_info if v.name in live]
    if entries:
        bare = type(model)()
        bare.CopyFrom(model)
        del bare.graph.value_info[:]
        try:
            inferred = {v.name: v for v in shape_inference.infer_shapes(bare).graph.value_info}
        except Exception:
            inferred = {}
        symbols = {
            d.dim_param
            for v in graph.input
            for d in v.type.tensor_type.shape.dim
            if d.HasField("dim_param")
        }

        def needed(v: Any) -> bool:
            dims = v.type.tensor_type.shape.dim
            if any(d.HasField("dim_param") and d.dim_param not in symbols for d in dims):
                return True
            got = inferred.get(v.name)
            return got is None or got.type != v.type

        entries = [v for v in entries if needed(v)]
    kept = [type(v)() for v in entries]
    for new, old in zip(kept, entries, strict=True):
        new.CopyFrom(old)
        new.ClearField("doc_string")
        del new.metadata_props[:]
    del graph.value_info[:]
    graph.value_info.extend(kept)


# -- names -------------------------------------------------------------------------------------
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _short(i: int) -> str:
    s = ""
    while True:
        i, r = divmod(i, len(_DIGITS))
        s = _DIGITS[r] + s
        if not i:
            return s


def _rename(graph: Any) -> None:
    """Short names for every tensor except the graph's inputs and outputs; no node names."""
    fixed = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}
    counter = 0

    def new(name: str) -> str:
        nonlocal counter
        if not name or name in fixed:
            return name
        if name not in names:
            while True:
                short = _short(counter)
                counter += 1
                if short not in fixed:
                    break
            names[name] = short
        return names[name]

    for t in graph.initializer:
        t.name = new(t.name)
    for node in graph.node:
        node.ClearField("name")
        for i, name in enumerate(node.input):
            node.input[i] = new(name)
        for i, name in enumerate(node.output):
            node.output[i] = new(name)
    for v in graph.value_info:
        v.name = new(v.name)
