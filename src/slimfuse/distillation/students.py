"""Students built from their teachers: fewer blocks (depth) or fewer channels (width).

- :func:`depth_student`: a copy that keeps chosen blocks of a block list (``nn.Sequential`` or
  ``nn.ModuleList``), initialised from the teacher's weights, DistilBERT-style. Works for the
  transformer layers of Hugging Face encoders (``minilm``: ``encoder.encoder.layer``) and the
  residual blocks of ``resnet1d`` (``layers``). The change is recorded as a ``keep_blocks`` edit,
  so ``slimfuse.load`` rebuilds the shallower model from its bundle.
- :func:`width_student`: a copy with ``ratio`` of its channels removed by the ``shrink`` the
  caller passes (``slimfuse.distill`` passes structured pruning's, keeping the most important
  channels).
- :func:`build_student`: one entry point: ``depth=3``, ``keep=[0, 3, 5]`` or ``width=0.5``
  (the keys of :class:`~slimfuse.distillation.config.StudentFromTeacher`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ConfigError, ModelError
from slimfuse.models.source import check_float_model, record
from slimfuse.tasks import forward
from slimfuse.training import trainable_copy

# (model, example_inputs, *, ratio, importance) -> the model with ``ratio`` of its channels
# removed (in place or a new model); slimfuse.distill passes structured pruning's
Shrink = Callable[..., nn.Module]

# where the block list lives, tried in order
BLOCK_PATHS = ("encoder.encoder.layer", "encoder.layer", "layers", "blocks", "layer")


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.Module]:
    """``(path, container)`` of the model's block list."""
    modules = dict(model.named_modules())
    for p in [path] if path else BLOCK_PATHS:
        m = modules.get(p)
        if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m) > 0:
            return p, m
    if path:
        raise ConfigError(
            f"{type(model).__name__} has no block list at {path!r}; expected an nn.Sequential "
            "or nn.ModuleList there"
        )
    raise ConfigError(
        f"{type(model).__name__} has no block list (looked for {', '.join(BLOCK_PATHS)}); "
        "expected a model with an nn.Sequential/ModuleList of blocks (resnet1d, HF encoders) "
        "or give blocks_path="
    )


def uniform_keep(n: int, depth: int) -> list[int]:
    """``depth`` block indices spread over ``n`` blocks, always keeping the first and the last."""
    if not 1 <= depth <= n:
        raise ConfigError(f"depth {depth}: expected 1..{n} (the teacher has {n} blocks)")
    if depth == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (depth - 1)) for i in range(depth)})


def _set_blocks(model: nn.Module, path: str, keep: Sequence[int]) -> nn.Module:
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    kept = [old[i] for i in keep]
    setattr(
        parent, attr, type(old)(kept) if isinstance(old, nn.ModuleList) else nn.Sequential(*kept)
    )
    config = getattr(getattr(model, "encoder", None), "config", None)
    if config is not None and hasattr(config, "num_hidden_layers") and "layer" in attr:
        config.num_hidden_layers = len(kept)  # HF encoders: keep the config truthful
    return model


def keep_blocks_edit(
    model: nn.Module, edit: dict[str, Any], _state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler for bundles: keep the recorded blocks (weights are loaded afterwards)."""
    return _set_blocks(model, edit["path"], edit["keep"])


def _shape_changing(
    container: nn.Module, model: nn.Module, example_inputs: Any
) -> dict[int, tuple[Any, Any]]:
    """Blocks whose output shape differs from their input shape (they cannot be dropped)."""
    shapes: dict[int, tuple[Any, Any]] = {}
    handles = []
    for i, block in enumerate(container):

        def hook(_m: nn.Module, inp: Any, out: Any, i: int = i) -> None:
            a = inp[0] if isinstance(inp, tuple) and inp else inp
            b = out[0] if isinstance(out, tuple) else out
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                shapes[i] = (tuple(a.shape), tuple(b.shape))

        handles.append(block.register_forward_hook(hook))
    try:
        with torch.no_grad():
            forward(model.eval(), example_inputs)
    finally:
        for h in handles:
            h.remove()
    return {i: s for i, s in shapes.items() if s[0] != s[1]}


def depth_student(
    teacher: nn.Module,
    *,
    depth: int | None = None,
    keep: Sequence[int] | None = None,
    blocks_path: str | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """A copy of ``teacher`` keeping ``keep`` blocks (or ``depth`` spread uniformly).

    With ``example_inputs``, dropping a block that changes the shape (a stride or width change)
    is refused with the block's index and shapes.
    """
    path, blocks = find_blocks(teacher, blocks_path)
    n = len(blocks)
    if keep is None:
        if depth is None:
            raise ConfigError("depth_student needs depth= or keep=; expected one of them")
        keep = uniform_keep(n, depth)
    keep = [int(i) for i in keep]
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise ConfigError(
            f"keep {keep}: expected increasing block indices in 0..{n - 1} without repeats"
        )
    if example_inputs is not None:
        changing = _shape_changing(blocks, teacher, example_inputs)
        dropped = [i for i in changing if i not in keep]
        if dropped:
            i = dropped[0]
            raise ConfigError(
                f"block {i} of {path!r} changes the shape {changing[i][0]} -> {changing[i][1]}, "
                f"so it cannot be dropped; expected keep to include {sorted(changing)}"
            )
    student = trainable_copy(teacher)
    _set_blocks(student, path, keep)
    student.train()
    record(student, edit={"kind": "keep_blocks", "path": path, "keep": keep})
    record(student, lineage={"stage": "student", "kind": "depth", "path": path, "keep": keep})
    return student


def width_student(
    teacher: nn.Module,
    example_inputs: Any,
    *,
    ratio: float,
    importance: str = "l1",
    shrink: Shrink | None = None,
) -> nn.Module:
    """A copy of ``teacher`` with ``ratio`` of the channels removed by ``shrink``."""
    if shrink is None:
        raise ConfigError(
            "a width-reduced student needs shrink= (a function that removes channels); "
            "slimfuse.distill passes structured pruning's"
        )
    student = trainable_copy(teacher)  # a frozen teacher's copy must train (and be prunable)
    student = shrink(student, example_inputs, ratio=ratio, importance=importance)
    record(student, lineage={"stage": "student", "kind": "width", "ratio": ratio})
    return student.train()


def build_student(
    teacher: nn.Module,
    example_inputs: Any = None,
    *,
    depth: int | None = None,
    keep: Sequence[int] | None = None,
    width: float | None = None,
    importance: str = "l1",
    blocks_path: str | None = None,
    shrink: Shrink | None = None,
) -> nn.Module:
    """A student from its teacher: ``depth``/``keep`` blocks and/or ``width`` (a channel ratio,
    removed by ``shrink``). The teacher is not changed."""
    if isinstance(teacher, (list, tuple)):
        raise ModelError(
            "a student is built from one teacher model; expected one model, not a list"
        )
    if depth is None and keep is None and width is None:
        raise ConfigError("build_student needs depth=, keep= or width=; expected at least one")
    check_float_model(
        teacher, "a student built from the teacher", "build it from the float teacher's bundle"
    )
    student = teacher
    if depth is not None or keep is not None:
        student = depth_student(
            teacher, depth=depth, keep=keep, blocks_path=blocks_path, example_inputs=example_inputs
        )
    if width is not None:
        if example_inputs is None:
            raise ConfigError("a width-reduced student needs example_inputs for pruning")
        student = width_student(
            student, example_inputs, ratio=width, importance=importance, shrink=shrink
        )
    return student
