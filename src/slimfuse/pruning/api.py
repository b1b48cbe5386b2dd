"""``slimfuse.prune``: one call for unstructured, structured and transformer pruning + recovery.

- ``sparsity=0.9``: magnitude masks, ``schedule="agp"`` (cubic, during fine-tuning) or
  ``"oneshot"`` (then fine-tune with the masks kept); masks are folded in and the bundle stores
  the sparse weights compactly. ``threshold=τ`` instead drops every ``|w| <= τ`` (one-shot).
- ``channels=0.5``: structured removal of channels/neurons (``importance`` l1, l2, bn, taylor),
  optionally ``iterative_steps`` of prune → recover, then recovery.
- ``ffn=0.5, heads=0.25``: FFN neurons and attention heads of a BERT-style encoder.

Recovery fine-tunes for ``finetune_epochs`` with the one training loop (``recovery="distill"``
uses the unpruned model as teacher).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

from torch import nn

from slimfuse.data import Data
from slimfuse.errors import ConfigError, SlimfuseWarning
from slimfuse.models.source import check_float_model
from slimfuse.pruning.recovery import Recovery, recover
from slimfuse.pruning.schedule import SCHEDULES, AGPCallback
from slimfuse.pruning.unstructured import MaskCallback, check_sparsity, finalize, prune_unstructured
from slimfuse.targeting import Selector
from slimfuse.tasks import Task, get_task
from slimfuse.training import TrainConfig, trainable_copy

_LAYERWISE = ("sparsity", "threshold", "channels")
# option: (its default, the kinds of pruning that read it); anything else is refused, not dropped.
# (``schedule="oneshot"`` agrees with every kind: structured pruning is one-shot or iterative.)
_OPTION_KINDS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "importance": ("l1", ("channels", "ffn/heads")),
    "iterative_steps": (1, ("channels",)),
    "unsupported": ("error", ("channels",)),
    "global_pruning": (None, _LAYERWISE),
    "targets": (None, _LAYERWISE),
    "ignore": (None, _LAYERWISE),
}


def _check_options_apply(kind: str, **options: Any) -> None:
    for name, value in options.items():
        default, kinds = _OPTION_KINDS[name]
        if value != default and kind not in kinds and value not in ((), []):
            raise ConfigError(
                f"{name}={value!r} does not apply to {kind} pruning; it is for {', '.join(kinds)}"
            )


def check_request(
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    channels: float | None = None,
    ffn: float | None = None,
    heads: float | None = None,
    schedule: str = "agp",
    importance: str = "l1",
    targets: Any = None,
    ignore: Any = None,
    global_pruning: bool | None = None,
    iterative_steps: int = 1,
    unsupported: str = "error",
    finetune_epochs: int = 0,
) -> str:
    """Check what :func:`prune` is asked, before any model or data: returns the kind of pruning.

    Exactly one of sparsity, threshold, channels or ffn/heads, and no option that kind does not
    read (a recipe's ``prune`` stage runs this when the recipe is parsed).
    """
    given = {
        "sparsity": sparsity is not None,
        "threshold": threshold is not None,
        "channels": channels is not None,
        "ffn/heads": ffn is not None or heads is not None,
    }
    modes = [n for n, v in given.items() if v]
    if len(modes) != 1:
        raise ConfigError(
            "give exactly one of sparsity, threshold, channels or ffn/heads; "
            f"got {', '.join(modes) or 'none'}"
        )
    _check_options_apply(
        modes[0],
        importance=importance,
        iterative_steps=iterative_steps,
        unsupported=unsupported,
        global_pruning=global_pruning,
        targets=targets,
        ignore=ignore,
    )
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs {finetune_epochs}: expected >= 0")
    if sparsity is not None and schedule == "agp" and not finetune_epochs:
        raise ConfigError(
            "schedule 'agp' prunes gradually during fine-tuning; expected finetune_epochs >= 1 "
            "(or schedule 'oneshot')"
        )
    return modes[0]


def prune(
    model: nn.Module,
    data: Data | None = None,
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    channels: float | None = None,
    ffn: float | None = None,
    heads: float | None = None,
    schedule: Literal["agp", "oneshot"] = "agp",
    importance: str = "l1",
    targets: Selector | Iterable[Selector] | None = None,
    ignore: Selector | Iterable[Selector] | None = None,
    global_pruning: bool | None = None,
    iterative_steps: int = 1,
    unsupported: Literal["error", "skip"] = "error",
    finetune_epochs: int = 0,
    lr: float = 1e-3,
    batch_size: int = 100,
    recovery: Recovery = "finetune",
    task: str | Task = "classification",
    example_inputs: Any = None,
    inputs: Any = None,
    seed: int = 0,
    quiet: bool = True,
    checkpoint_dir: Any = None,
) -> nn.Module:
    """Return a pruned copy of ``model`` (the input is left unchanged).

    Pruning that removes nothing (no weight zeroed, no channel removed: every layer ignored,
    a ratio too small to take one channel) warns (``SlimfuseWarning``; an error with the
    CLI's ``--strict``)."""
    request = dict(locals())  # the arguments, passed on as they are
    from slimfuse.measuring import count_params

    before = count_params(model)
    pruned = _prune(**request)
    after = count_params(pruned)
    if after[0] >= before[0] and after[1] >= before[1]:
        warnings.warn(
            f"pruning removed nothing: {before[0]:,} parameters, {before[1]:,} non-zero before "
            "and after (are the targeted layers ignored, or the ratio too small for one channel?)",
            SlimfuseWarning,
            stacklevel=2,
        )
    return pruned


def _prune(
    model: nn.Module,
    data: Data | None,
    *,
    sparsity: float | None,
    threshold: float | None,
    channels: float | None,
    ffn: float | None,
    heads: float | None,
    schedule: Literal["agp", "oneshot"],
    importance: str,
    targets: Selector | Iterable[Selector] | None,
    ignore: Selector | Iterable[Selector] | None,
    global_pruning: bool | None,
    iterative_steps: int,
    unsupported: Literal["error", "skip"],
    finetune_epochs: int,
    lr: float,
    batch_size: int,
    recovery: Recovery,
    task: str | Task,
    example_inputs: Any,
    inputs: Any,
    seed: int,
    quiet: bool,
    checkpoint_dir: Any,
) -> nn.Module:
    check_request(
        sparsity=sparsity,
        threshold=threshold,
        channels=channels,
        ffn=ffn,
        heads=heads,
        schedule=schedule,
        importance=importance,
        targets=targets,
        ignore=ignore,
        global_pruning=global_pruning,
        iterative_steps=iterative_steps,
        unsupported=unsupported,
        finetune_epochs=finetune_epochs,
    )
    check_float_model(model, "pruning", "prune the float model, then quantize the pruned one")
    task = get_task(task)
    if finetune_epochs and data is None:
        raise ConfigError("fine-tuning after pruning needs data")
    cfg = TrainConfig(
        epochs=finetune_epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        quiet=quiet,
        restore_best=False,  # the last epoch is the one at the final sparsity
    )
    teacher = model.eval() if recovery == "distill" else None

    def fine_tune(m: nn.Module, callbacks: list[Any], desc: str) -> None:
        if finetune_epochs and data is not None:
            recover(
                m,
                data,
                task,
                cfg,
                recovery=recovery,
                teacher=teacher,
                callbacks=callbacks,
                checkpoint_dir=checkpoint_dir,
                description=desc,
            )

    if sparsity is not None or threshold is not None:
        if sparsity is not None:
            check_sparsity(sparsity)
        model = trainable_copy(model)
        gp = True if global_pruning is None else global_pruning
        if schedule == "agp" and threshold is None:
            cb = AGPCallback(model, sparsity, targets=targets, ignore=ignore, global_pruning=gp)
            fine_tune(model, [cb], "prune agp")
            masks = cb.masks
        else:
            masks = prune_unstructured(
                model,
                sparsity=sparsity,
                threshold=threshold,
                targets=targets,
                ignore=ignore,
                global_pruning=gp,
            )
            fine_tune(model, [MaskCallback(masks)], "prune finetune")
        return finalize(model, masks)

    if channels is not None:
        from slimfuse.pruning.structured import prune_structured

        x = example_inputs
        if x is None and data is not None:
            x = data.example_input(1)

        def between(m: nn.Module, step: int) -> None:
            if step < iterative_steps - 1:
                fine_tune(m, [], f"recover {step + 1}/{iterative_steps}")

        small = prune_structured(
            model,
            x,
            ratio=channels,
            importance=importance,
            targets=targets,
            ignore=ignore,
            global_pruning=bool(global_pruning),
            data=data,
            task=task,
            iterative_steps=iterative_steps,
            recover=between if iterative_steps > 1 else None,
            unsupported=unsupported,
        )
        fine_tune(small, [], "recover")
        return small

    from slimfuse.pruning.transformer import prune_transformer

    if inputs is None and data is not None and importance == "activation":
        loader = data.loader("train", batch_size=32)
        inputs = [task.unpack(b)[0] for b, _ in zip(loader, range(4), strict=False)]
    small = prune_transformer(
        model, ffn_ratio=ffn or 0.0, head_ratio=heads or 0.0, importance=importance, inputs=inputs
    )
    fine_tune(small, [], "recover")
    return small
