"""ONNX export with a checker pass and a parity check, and the ONNX Runtime runner.

:func:`export_onnx` tries the dynamo exporter first and falls back to the TorchScript one;
the batch axis is dynamic (and, for token inputs, the sequence axis). The result must pass
``onnx.checker.check_model(full_check=True)`` and agree with eager PyTorch in ONNX Runtime within
``atol`` at batch 1 and at the larger parity batch, or :class:`ExportError` is raised.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.atomic import atomic_file
from slimfuse.errors import ExportError
from slimfuse.graph_passes import optimize_for_cpu
from slimfuse.models.source import int8_graphs
from slimfuse.tasks import forward

OPSET = 18
TORCHSCRIPT_MAX_OPSET = 20
PARITY_ATOL = 1e-4
# each node's module path, which quantization maps ONNX nodes back to modules by; the other
# per-node metadata the exporter writes is debug info (stack traces with this machine's source
# paths, FX nodes, module classes): 18% of the MNIST-1D CNN's file, 27% of the residual CNN's
SCOPES = "pkg.torch.onnx.name_scopes"


def as_tuple(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """Split example inputs into (args, kwargs, input names)."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs), list(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}, [f"input_{i}" for i in range(len(inputs))]
    return (inputs,), {}, ["input"]


def _tensors(inputs: Any) -> list[torch.Tensor]:
    args, kwargs, _ = as_tuple(inputs)
    return [*args, *kwargs.values()]


def repeat_batch(inputs: Any, batch: int) -> Any:
    def rep(t: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(batch) % t.shape[0]
        return t[idx]

    if isinstance(inputs, Mapping):
        return {k: rep(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(rep(t) for t in inputs)
    return rep(inputs)


class OrtRunner:
    """An ONNX Runtime session behind the same call as a module: ``runner(x)`` -> tensor."""

    def __init__(self, path: str | Path, threads: int | None = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.training = False

    def feeds(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        values = list(args) + [kwargs[k] for k in self.input_names[len(args) :] if k in kwargs]
        if len(values) != len(self.input_names):
            raise ExportError(
                f"{self.path.name} takes inputs {self.input_names}; got {len(values)} values"
            )
        return {
            n: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for n, v in zip(self.input_names, values, strict=True)
        }

    def run_numpy(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(self.feeds(*args, **kwargs)))

    def eval(self) -> OrtRunner:
        return self


def _dynamic(names: list[str], tensors: list[torch.Tensor]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for n, t in zip(names, tensors, strict=True):
        axes[n] = {0: "batch"}
        if not t.is_floating_point() and t.dim() == 2:  # token ids / masks: dynamic sequence too
            axes[n][1] = "sequence"
    return axes


def _keep_unfolded(model: nn.Module) -> Any:
    """``should_fold`` for the ONNX optimizer: no folding inside modules with ``onnx_no_fold``.

    Packed weights (int4 two per byte) would otherwise be folded into the float weights they
    decode to, and the file would be larger than the fp32 one; ONNX Runtime folds them at load.
    """
    names = {
        f"{type(m).__module__}.{type(m).__qualname__}"
        for m in model.modules()
        if getattr(m, "onnx_no_fold", False)
    }
    if not names:
        return None

    def should_fold(node: Any) -> bool | None:
        hierarchy = node.metadata_props.get("pkg.torch.onnx.class_hierarchy", "")
        return False if any(n in hierarchy for n in names) else None

    return should_fold


def _export(
    model: nn.Module, inputs: Any, path: Path, opset: int, dynamo: bool, keep_scopes: bool
) -> None:
    args, kwargs, names = as_tuple(inputs)
    tensors = _tensors(inputs)
    axes = _dynamic(names, tensors)
    common = dict(
        input_names=names, output_names=["output"], opset_version=opset, dynamic_axes=axes
    )
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        # the ONNX IR passes log each folded constant at INFO, and ONNX Runtime's quantizers
        # give the root logger a handler: without this, an export prints hundreds of lines
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if dynamo:
            should_fold = _keep_unfolded(model)
            prog = torch.onnx.export(
                model,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                verbose=False,
                report=False,
                optimize=should_fold is None,
                **common,
            )
            if should_fold is not None:
                from onnxscript.optimizer import optimize_ir

                optimize_ir(prog.model, should_fold=should_fold)
            for node in prog.model.graph.all_nodes():
                for key in [k for k in node.metadata_props if not (keep_scopes and k == SCOPES)]:
                    del node.metadata_props[key]
            prog.save(str(path))
        else:
            if kwargs:  # the TorchScript exporter takes positional inputs only
                args = tuple(kwargs.values())
            common["opset_version"] = min(opset, TORCHSCRIPT_MAX_OPSET)
            torch.onnx.export(model, args, str(path), dynamo=False, **common)


def default_opset(model: Any) -> int:
    """The highest ``onnx_opset`` that ``model`` or a module inside it asks for, else ``OPSET``."""
    modules = model.modules() if hasattr(model, "modules") else [model]
    asked = [int(m.onnx_opset) for m in modules if getattr(m, "onnx_opset", None)]
    return max(asked, default=OPSET)


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int | None = None,
    parity: bool = True,
    atol: float = PARITY_ATOL,
    parity_batch: int = 64,
    dynamo: bool | None = None,
    cpu_passes: bool = True,
    keep_scopes: bool = False,
) -> Path:
    """Export ``model`` to ``path`` (written atomically) and check it; returns the path.

    ``opset`` defaults to the highest ``onnx_opset`` attribute of the model or any module in it
    (an ensemble of encoders asks what its encoders ask), else :data:`OPSET` (18).
    Transformer encoders ask for 23, where attention exports as ONNX's one fused ``Attention``
    op (and GELU as ``Gelu``): MiniLM ran 1.10-1.16x faster in ONNX Runtime fp32 than with the
    MatMul / Softmax spelling of opset 18. ``cpu_passes`` applies
    :func:`slimfuse.graph_passes.optimize_for_cpu` (BatchNorm folded into convolutions, 1-D
    convolutions run as 2-D) before the checks. The exporter's per-node debug metadata is
    dropped; ``keep_scopes`` keeps each node's module path (``pkg.torch.onnx.name_scopes``).
    """
    import onnx

    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder: expected the path of an .onnx file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if hasattr(
        model, "export_onnx"
    ):  # modules with their own graph (e.g. int8 QDQ) export themselves
        return model.export_onnx(path, example_inputs, opset=opset, atol=atol)
    inner = [name for name in int8_graphs(model) if name]  # the root exports itself (above)
    if inner:
        raise ExportError(
            f"cannot export {type(model).__name__}: {', '.join(map(repr, inner))} in it is an "
            "int8 ONNX Runtime graph, which does not trace into a larger ONNX graph; combine the "
            "float models, then quantize the result (one int8 graph)"
        )
    opset = opset or default_opset(model)
    errors: list[str] = []
    tries = [True, False] if dynamo is None else [dynamo]
    with atomic_file(path) as tmp:
        for use_dynamo in tries:
            try:
                _export(model, example_inputs, tmp, opset, use_dynamo, keep_scopes)
                break
            except OSError:
                raise  # the disk, not the model: another exporter would fail the same way
            except Exception as exc:
                errors.append(f"{'dynamo' if use_dynamo else 'torchscript'}: {_first_line(exc)}")
        else:
            raise ExportError(f"ONNX export of {type(model).__name__} failed: " + "; ".join(errors))
        if cpu_passes:
            _optimize_file(tmp)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as exc:
            raise ExportError(f"exported ONNX graph fails the checker: {_first_line(exc)}") from exc
        if parity:
            check_parity(model, tmp, example_inputs, atol=atol, batches=(1, parity_batch))
    return path


def _optimize_file(path: Path) -> None:
    import onnx

    graph = onnx.load(str(path))
    if any(optimize_for_cpu(graph).values()):
        onnx.save(graph, str(path))


@torch.no_grad()
def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    example_inputs: Any,
    *,
    atol: float = PARITY_ATOL,
    batches: Sequence[int] = (1, 64),
) -> float:
    """Max abs difference between eager PyTorch and ONNX Runtime; raises past ``atol``."""
    runner = OrtRunner(onnx_path)
    n_given = len(_tensors(example_inputs))
    if len(runner.input_names) != n_given:
        raise ExportError(
            f"the exported graph takes {len(runner.input_names)} inputs but the model takes {n_given}: "
            "the exporter traced inputs as constants (the model leaves torch, e.g. through numpy)"
        )
    worst = 0.0
    for b in batches:
        x = repeat_batch(example_inputs, b)
        ref = forward(model, x)
        args, kwargs, _ = as_tuple(x)
        got = runner(*args, **kwargs)
        if got.shape != ref.shape:
            raise ExportError(
                f"ONNX output shape {tuple(got.shape)} at batch {b}; PyTorch gives {tuple(ref.shape)}"
            )
        diff = float((got - ref).abs().max())
        worst = max(worst, diff)
        if not diff <= atol:
            raise ExportError(
                f"ONNX Runtime differs from PyTorch by {diff:.3g} at batch {b} (allowed {atol:g})"
            )
    return worst


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
