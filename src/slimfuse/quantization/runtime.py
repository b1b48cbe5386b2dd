"""An int8 ONNX graph as a module: what PTQ and QAT produce, measured like any other model.

:class:`QuantizedModel` holds the quantized ONNX graph as a ``uint8`` buffer (so the bundle's
``model.safetensors`` carries the int8 weights, about a quarter of fp32) and runs it with ONNX
Runtime on the CPU: calling it runs the int8 kernels (VNNI where the CPU has it). Its
:meth:`export_onnx` writes that graph; :func:`slimfuse.exporting.export_onnx` delegates to it.
Bundles rebuild it through the ``quantized_graph`` edit (:func:`load_quantized`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.atomic import atomic_file
from slimfuse.errors import ExportError, ModelError
from slimfuse.exporting import as_tuple
from slimfuse.measuring import count_macs, count_params
from slimfuse.models.hf import tokenizer_dir
from slimfuse.models.source import ModelSpec, record, set_spec, spec_of

EDIT_KIND = "quantized_graph"


class QuantizedModel(nn.Module):
    """A quantized ONNX graph behind ``forward``; ``info`` says how it was made (JSON-able).

    It runs, measures, exports and teaches (a distillation teacher, a fusion member); its weights
    are not parameters, so training, pruning, merging and quantizing it again are refused
    (:func:`slimfuse.models.source.check_float_model`).
    """

    int8_graph = True

    def __init__(self, graph: bytes | torch.Tensor, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(graph, bytes):
            graph = torch.frombuffer(bytearray(graph), dtype=torch.uint8).clone()
        self.register_buffer("graph", graph)
        self.info: dict[str, Any] = dict(info or {})
        self._sessions: dict[int, Any] = {}

    # -- running --------------------------------------------------------------------------
    def graph_bytes(self) -> bytes:
        return self.graph.numpy().tobytes()

    def session(self, threads: int | None = None) -> Any:
        import onnxruntime as ort

        threads = threads or torch.get_num_threads()
        if threads not in self._sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            self._sessions[threads] = ort.InferenceSession(
                self.graph_bytes(), so, providers=["CPUExecutionProvider"]
            )
        return self._sessions[threads]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._sessions = {}

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the ONNX Runtime sessions behind (rebuilt on first call)."""
        state = self.__dict__.copy()
        state["_sessions"] = {}
        return state

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        sess = self.session()
        names = [i.name for i in sess.get_inputs()]
        values = list(args) + [kwargs[n] for n in names[len(args) :] if n in kwargs]
        if len(values) != len(names):
            raise ModelError(f"the quantized graph takes inputs {names}; got {len(values)} values")
        feeds = {
            n: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            for n, v in zip(names, values, strict=True)
        }
        return torch.from_numpy(sess.run(None, feeds)[0])

    # -- what measure asks ----------------------------------------------------------------
    def count_params(self) -> tuple[int, int]:
        """Parameters of the model that was quantized (the int8 graph holds the same count)."""
        return int(self.info.get("params", 0)), int(self.info.get("nonzero_params", 0))

    def count_macs(self) -> int | None:
        return self.info.get("macs")

    def export_onnx(
        self, path: str | Path, example_inputs: Any, opset: int | None = None, atol: float = 1e-4
    ) -> Path:
        """Write the int8 graph to ``path`` (atomically), check it and run it once at batch 1."""
        import onnx

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_bytes(self.graph_bytes())
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as exc:
                raise ExportError(
                    f"the quantized graph fails the ONNX checker: {str(exc).splitlines()[0]}"
                ) from exc
            args, kwargs, _ = as_tuple(example_inputs)
            out = self(*args, **kwargs)
            if not torch.isfinite(out).all():
                raise ExportError("the quantized graph gives NaN/Inf on the example input")
        return path

    def extra_repr(self) -> str:
        return f"mode={self.info.get('mode')}, bytes={self.graph.numel()}"


def wrap_graph(
    float_model: nn.Module, graph: bytes, info: dict[str, Any], example_inputs: Any = None
) -> QuantizedModel:
    """A :class:`QuantizedModel` that inherits (a copy of) the float model's spec plus the edit."""
    q = QuantizedModel(graph, info)
    q.tokenizer_dir = tokenizer_dir(float_model)  # an encoder's int8 graph reads text as it did
    if "params" not in q.info:
        params, nonzero = count_params(float_model)
        q.info.update(params=params, nonzero_params=nonzero)
    if "macs" not in q.info and example_inputs is not None:
        q.info["macs"] = count_macs(float_model, example_inputs)
    spec = spec_of(float_model)
    if spec is not None:
        set_spec(q, ModelSpec.from_dict(copy.deepcopy(spec.to_dict())))
        record(q, edit={"kind": EDIT_KIND, "info": q.info})
    return q


def refresh_edit(q: QuantizedModel) -> QuantizedModel:
    """Copy ``q.info`` into its recorded edit after the info grew (so the bundle has it too)."""
    spec = spec_of(q)
    if spec is not None and spec.edits and spec.edits[-1].get("kind") == EDIT_KIND:
        spec.edits[-1]["info"] = json.loads(json.dumps(q.info, default=str))
    return q


def load_quantized(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: replace the rebuilt float model by the saved int8 graph (checked first:
    a bundle is self-contained, so a graph that reads external data files is refused)."""
    graph = state.get("graph")
    if graph is None or graph.dtype != torch.uint8 or graph.dim() != 1:
        raise ModelError(
            "bundle says the model is a quantized graph but has no uint8 'graph' tensor"
        )
    check_self_contained(graph.numpy().tobytes())
    info = edit.get("info", {})
    if not isinstance(info, dict):
        raise ModelError("quantized_graph edit: info is not an object")
    return QuantizedModel(torch.zeros_like(graph), info)


def check_self_contained(graph: bytes) -> None:
    """Refuse an ONNX graph that is not valid or whose tensors live in external files (ONNX
    Runtime would read whatever path the file names)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_from_string(graph)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"the stored int8 graph is not a valid ONNX model ({exc})") from exc
    external = [
        t.name
        for t in _tensors(proto.graph)
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data
    ]
    if external:
        raise ModelError(
            f"the stored int8 graph reads tensors from external files ({', '.join(external[:3])}); "
            "a bundle must hold its whole graph"
        )


def _tensors(graph: Any) -> Any:
    """Every tensor of an ONNX graph: initializers, sparse ones and node attributes, subgraphs too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)
