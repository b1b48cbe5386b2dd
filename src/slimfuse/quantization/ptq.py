"""Post-training int8 with ONNX Runtime: dynamic (weights per channel) and static QDQ.

The float model is exported once (dynamo, parity-checked), then ONNX Runtime's own quantizers do
the graph surgery: ``quantize_dynamic`` (int8 weights per channel, activations quantized at run
time) and ``quantize_static`` (QDQ; activation ranges from min-max, percentile or entropy
calibration on the given inputs; u8 activations, s8 per-channel weights, the fast pair on VNNI;
without VNNI the weights use 7 bits, ``reduce_range``, so the u8 x s8 kernels cannot saturate).
What slimfuse adds: the inputs from a loader or ``forward_loop`` checked up front, layer
targeting in the shared syntax mapped onto ONNX nodes, and a per-layer list of what stayed fp32
and why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from slimfuse.errors import ExportError, UnsupportedLayerError
from slimfuse.exporting import export_onnx
from slimfuse.quantization.calibration import feed_reader, to_feeds
from slimfuse.quantization.compact import compact_graph
from slimfuse.quantization.config import Dynamic, Static
from slimfuse.quantization.graph import layer_report, plan_nodes, supported_types
from slimfuse.quantization.runtime import QuantizedModel, wrap_graph

METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def export_fp32(model: nn.Module, example_inputs: Any, path: Path) -> Path:
    """The float graph that ONNX Runtime quantizes; an export failure names the op."""
    try:
        return export_onnx(model, example_inputs, path, keep_scopes=True)  # node -> module
    except ExportError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        ops = sorted(set(re.findall(r"aten(?:::|\.)[A-Za-z0-9_]+", text)))
        where = f"no ONNX translation for op {', '.join(ops)}" if ops else text
        raise ExportError(
            f"cannot quantize {type(model).__name__}: export to ONNX failed: {where}; "
            "expected a model made of exportable ops (exclude or rewrite that op)"
        ) from exc


@dataclass
class Prepared:
    """The fp32 graph plus everything needed to quantize it again with other exclusions."""

    model: nn.Module
    fp32_path: Path
    feeds: list[dict[str, np.ndarray]]
    example_inputs: Any
    workdir: Path
    calibration_inputs: list[Any] = field(default_factory=list)
    cache: dict[str, Path] = field(default_factory=dict)

    @property
    def graph(self) -> Any:
        import onnx

        if not hasattr(self, "_graph"):
            self._graph = onnx.load(str(self.fp32_path)).graph
        return self._graph


def prepare(model: nn.Module, inputs: list[Any], example_inputs: Any, workdir: Path) -> Prepared:
    """Export ``model`` once and turn the calibration inputs into ONNX Runtime feeds."""
    import onnx

    path = export_fp32(model, example_inputs, workdir / "fp32.onnx")
    names = [i.name for i in onnx.load(str(path)).graph.input]
    feeds = [to_feeds(x, names) for x in inputs]
    return Prepared(model, path, feeds, example_inputs, workdir, list(inputs))


def calibration_cache(
    prep: Prepared, cfg: Dynamic | Static, ranges: dict[str, tuple[float, float]] | None = None
) -> Path:
    """Activation ranges of every tensor of the fp32 graph (ONNX Runtime's calibrators), cached.

    ``ranges`` (tensor name -> (low, high)) replace calibrated ones: QAT's learned ranges.
    """
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        create_calibrator,
        load_tensors_data,
        save_tensors_data,
    )

    key = f"{cfg.calibration}-{cfg.percentile}"
    path = prep.cache.get(key)
    if path is None:
        path = prep.workdir / f"calib-{key}.json"
        options = {"percentile": cfg.percentile} if cfg.calibration == "percentile" else {}
        with (
            tempfile.TemporaryDirectory(dir=prep.workdir) as tmp,
            contextlib.redirect_stdout(io.StringIO()),  # the histogram calibrators print
        ):
            calibrator = create_calibrator(
                Path(prep.fp32_path),
                None,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=getattr(CalibrationMethod, METHODS[cfg.calibration]),
                extra_options=options,
            )
            calibrator.collect_data(feed_reader(prep.feeds))
            save_tensors_data(calibrator.compute_data(), path)
            del calibrator
        prep.cache[key] = path
    if not ranges:
        return path
    data = load_tensors_data(path)
    for name, (low, high) in ranges.items():
        data.data[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    patched = prep.workdir / f"calib-{key}-learned.json"
    save_tensors_data(data, patched)
    return patched


def quantize_graph(
    prep: Prepared,
    cfg: Dynamic | Static,
    keep_fp32: dict[str, str] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> tuple[bytes, list[dict[str, str]]]:
    """Int8 graph bytes and the per-layer report; ``keep_fp32`` maps layer -> reason."""
    import onnx

    keep_fp32 = keep_fp32 or {}
    supported = supported_types(
        cfg.mode if cfg.mode == "dynamic" else "static", cfg.quantize_embeddings
    )
    targeting = cfg.targeting
    modules = dict(prep.model.named_modules())
    chosen = targeting.select(prep.model, default_types=supported, what="quantization")
    chosen = {n for n in chosen if isinstance(modules[n], supported)}
    if not chosen:  # an "int8" model with no int8 layer would be a silent no-op
        raise UnsupportedLayerError(
            f"{cfg.mode} int8 found no layer to quantize in {type(prep.model).__name__}: every "
            f"{'/'.join(t.__name__ for t in supported)} layer is ignored or not targeted; "
            "expected at least one"
        )
    selected = {n for n in chosen if n not in keep_fp32}
    exclude, owners = plan_nodes(
        prep.graph, prep.model, selected, quantize_attention=cfg.quantize_attention
    )
    out = Path(tempfile.mkstemp(suffix=".onnx", dir=prep.workdir)[1])
    with _quiet_logs():
        _run_quantizer(prep, cfg, exclude, out, ranges)
    graph = onnx.load(str(out))
    out.unlink(missing_ok=True)
    for node in graph.graph.node:  # exporter debug info (stack traces): not needed to deploy
        del node.metadata_props[:]
    data = graph.SerializeToString()
    report = layer_report(
        prep.model,
        prep.graph,
        graph.graph,
        owners,
        targeting,
        supported,
        cfg.mode,
        kept=keep_fp32,
    )
    return data, report


def gemm_as_matmul(prep: Prepared) -> Path:
    """The fp32 graph with each ``Gemm`` on a constant weight rewritten as ``MatMul`` + ``Add``.

    ONNX Runtime's dynamic quantizer has no int8 ``Gemm`` (what a 2-D Linear exports to), so it
    would leave those layers fp32; as ``MatMul`` they get ``MatMulInteger``. The node keeps its
    name and the weight its name (transposed in place), so targeting and the report still match.
    """
    import onnx
    from onnx import helper, numpy_helper

    path = prep.workdir / "fp32-matmul.onnx"
    if path.is_file():
        return path
    model = onnx.load(str(prep.fp32_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1] if len(node.input) > 1 else ""
        if (
            node.op_type != "Gemm"
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
            or weight not in inits
            or uses.get(weight, 0) != 1
        ):
            nodes.append(node)
            continue
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[weight]).T.copy()
            inits[weight].CopyFrom(numpy_helper.from_array(w, weight))
        out = node.output[0]
        if len(node.input) > 2 and node.input[2]:
            mm_out = f"{out}_matmul"
            nodes.append(helper.make_node("MatMul", node.input[:2], [mm_out], name=node.name))
            nodes.append(
                helper.make_node("Add", [mm_out, node.input[2]], [out], name=f"{node.name}_bias")
            )
        else:
            nodes.append(helper.make_node("MatMul", node.input[:2], [out], name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale shapes (transposed weights); shape inference redoes them
    onnx.save(model, str(path))
    return path


@contextlib.contextmanager
def _quiet_logs() -> Any:
    """ONNX Runtime's quantizers log advice with ``logging.warning()``, which configures the
    root logger (``basicConfig``) when it has no handler: meanwhile it gets a NullHandler, so
    nothing is printed and nothing of the application's logging set-up changes."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


def _run_quantizer(
    prep: Prepared,
    cfg: Dynamic | Static,
    exclude: list[str],
    out: Path,
    ranges: dict[str, tuple[float, float]] | None,
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if cfg.mode == "dynamic":
        quantize_dynamic(
            str(gemm_as_matmul(prep)),
            str(out),
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduced_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
    else:
        method = getattr(CalibrationMethod, METHODS[cfg.calibration])
        cache = calibration_cache(prep, cfg, ranges)
        quantize_static(
            str(prep.fp32_path),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduced_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            calibration_cache_path=str(cache),
            extra_options={"CalibPercentile": cfg.percentile},
        )


def ptq(
    prep: Prepared,
    cfg: Dynamic | Static,
    keep_fp32: dict[str, str] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    **info: Any,
) -> QuantizedModel:
    """Post-training int8 (``cfg.mode`` dynamic or static) as a :class:`QuantizedModel`."""
    data, report = quantize_graph(prep, cfg, keep_fp32, ranges)
    data = compact_graph(data)  # the same numbers in a smaller file (shared constants, short names)
    meta = {
        "mode": cfg.mode,
        "config": cfg.to_dict(),
        "reduce_range": cfg.reduced_range,
        "layers": report,
        **info,
    }
    return wrap_graph(prep.model, data, meta, prep.example_inputs)
