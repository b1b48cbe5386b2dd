"""Calibration data: model inputs gathered from a loader or a ``forward_loop``, checked first.

Statistics are kept apart from surgery: :func:`calibration_inputs` only collects and validates
inputs (an empty source or NaN/Inf values stop here, before any model compute); the ranges are
computed on the fp32 ONNX graph by ONNX Runtime's calibrators (min-max, percentile, entropy)
through :class:`FeedReader`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.errors import DataError
from slimfuse.tasks import forward

CalibrationSource = Iterable[Any] | Callable[[nn.Module], Any]


def _strip_target(batch: Any) -> Any:
    """A loader batch ``(inputs, target)`` or ``{..., "target"}`` -> the model inputs."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in ("target", "labels")}
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch


def _tensors(inputs: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(inputs, Mapping):
        return [(str(k), v) for k, v in inputs.items()]
    if isinstance(inputs, (tuple, list)):
        return [(f"input_{i}", v) for i, v in enumerate(inputs)]
    return [("input", inputs)]


def check_finite(inputs: Any, where: str) -> None:
    """Raise :class:`DataError` if a float tensor of ``inputs`` holds NaN or Inf."""
    for name, t in _tensors(inputs):
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{where}: input {name!r} is a {type(t).__name__}; expected a tensor")
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise DataError(
                    f"{where}: input {name!r} has {bad} NaN/Inf value(s); expected finite numbers"
                )


def calibration_inputs(
    model: nn.Module, source: CalibrationSource | None, *, max_batches: int = 8
) -> list[Any]:
    """Model inputs for calibration from a loader / iterable of batches or a ``forward_loop``.

    A ``forward_loop(model)`` is run once with a hook that records what the model is called
    with. The result is never empty and holds only finite numbers, or :class:`DataError` says why.
    """
    if source is None:
        raise DataError("calibration data is missing: expected a loader or a forward_loop")
    if hasattr(source, "__len__") and len(source) == 0:  # type: ignore[arg-type]
        raise DataError("calibration data is empty (0 batches): expected at least one batch")
    found: list[Any] = []
    if callable(source) and not isinstance(source, (Iterable, torch.utils.data.DataLoader)):
        handle = model.register_forward_pre_hook(
            lambda _m, args, kwargs: (
                found.append(dict(kwargs) if kwargs else tuple(args))
                if len(found) < max_batches
                else None
            ),
            with_kwargs=True,
        )
        try:
            with torch.no_grad():
                source(model)
        finally:
            handle.remove()
        found = [f[0] if isinstance(f, tuple) and len(f) == 1 else f for f in found]
        what = "forward_loop call"
    else:
        for batch in source:
            found.append(_strip_target(batch))
            if len(found) >= max_batches:
                break
        what = "calibration batch"
    if not found:
        raise DataError(
            "calibration data is empty: the source gave no batches; expected at least one batch"
        )
    for i, inputs in enumerate(found, start=1):
        check_finite(inputs, f"{what} {i}")
    return found


def samples(batches: list[Any]) -> int:
    """How many samples ``batches`` hold (the first tensor's first dimension, summed)."""
    return sum(len(_tensors(b)[0][1]) for b in batches)


def _rows(inputs: Any, part: slice) -> Any:
    if isinstance(inputs, Mapping):
        return {k: v[part] for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(v[part] for v in inputs)
    return inputs[part]


def split_held_out(
    inputs: list[Any], calibration_batches: int, held_out_batches: int
) -> tuple[list[Any], list[Any]]:
    """``(calibration, held_out)``: batches past ``calibration_batches`` are held out (at most
    ``held_out_batches``); with too few, the last half (at least one); one batch is cut in two.

    :class:`DataError` when there is a single sample: nothing is left to check a budget on.
    """
    n = len(inputs)
    k = min(held_out_batches, max(n - calibration_batches, n // 2))
    if k >= 1:
        return inputs[: n - k], inputs[n - k :]
    size = samples(inputs)
    if size < 2:
        raise DataError(
            "max_drop is checked on held-out data: the calibration data is one sample; expected "
            "at least 2 (or data= with a validation split, or a metric_fn)"
        )
    half = size // 2
    return [_rows(inputs[0], slice(0, size - half))], [_rows(inputs[0], slice(size - half, None))]


def to_feeds(inputs: Any, input_names: list[str]) -> dict[str, np.ndarray]:
    """Model inputs -> an ONNX Runtime feed dict for a graph with ``input_names``."""
    if isinstance(inputs, Mapping):
        values = [inputs[n] for n in input_names]
    elif isinstance(inputs, (tuple, list)):
        values = list(inputs)
    else:
        values = [inputs]
    if len(values) != len(input_names):
        raise DataError(
            f"calibration inputs have {len(values)} tensor(s); the graph takes {input_names}"
        )
    return {
        n: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        for n, v in zip(input_names, values, strict=True)
    }


def feed_reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ready feed dicts."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

    return FeedReader()


@torch.no_grad()
def observe_inputs(
    model: nn.Module,
    names: list[str],
    inputs: list[Any],
    observe: Callable[[str, torch.Tensor], None],
    after_batch: Callable[[], None] | None = None,
) -> None:
    """Run the calibration ``inputs`` through ``model`` and call ``observe(name, x)`` with the
    input of each named layer (the one hook that activation statistics are gathered by; layers
    that read the same tensor get the same object); ``after_batch()`` runs after each batch."""
    handles = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: observe(name, args[0])  # the tensor itself: its id
        )
        for name in names
    ]
    try:
        for x in inputs:
            forward(model, x)
            if after_batch is not None:
                after_batch()
    finally:
        for h in handles:
            h.remove()


def input_ranges(model: nn.Module, names: list[str], inputs: list[Any]) -> dict[str, list[float]]:
    """Each named layer's input ``[min, max]`` over the calibration inputs."""
    ranges: dict[str, list[float]] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        old = ranges.get(name)
        ranges[name] = [min(lo, old[0]), max(hi, old[1])] if old else [lo, hi]

    observe_inputs(model, names, inputs, observe)
    return ranges
