"""K-fold splits (a clear error when the data is too small for K folds) and the members'
out-of-fold predictions, which stacking and cross-validated weights are fitted on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from torch import nn
from torch.utils.data import DataLoader, Subset

from slimfuse.data import Data, fit_standardize
from slimfuse.data.preprocessing import MEAN, STD, TARGET_MEAN, TARGET_STD
from slimfuse.errors import FusionError
from slimfuse.fusion.predict import as_loader, collect
from slimfuse.models.source import rebuild, spec_of
from slimfuse.training import train


def check_cv(cv: Any, *, prefit: bool = True) -> None:
    """``cv`` is an integer number of folds >= 2, or ``"prefit"`` where ``prefit`` allows it."""
    if prefit and cv == "prefit":
        return
    if not isinstance(cv, int) or isinstance(cv, bool) or cv < 2:
        raise FusionError(f"cv={cv!r}: expected an integer number of folds >= 2 or 'prefit'")


def check_folds(y: np.ndarray, k: int, what: str) -> None:
    """``k`` stratified folds need ``k`` samples in all and of every class present (real-valued
    targets: ``k`` samples)."""
    check_cv(k, prefit=False)
    n = len(y)
    if n < k:
        raise FusionError(f"{k} folds need at least {k} samples; the {what} has {n}")
    if np.asarray(y).dtype.kind == "f":
        return
    classes, counts = np.unique(y, return_counts=True)
    low = int(np.argmin(counts))
    if counts[low] < k:
        raise FusionError(
            f"{k} folds need at least {k} samples of every class; in the {what} ({n} samples) "
            f"class {classes[low]} has {counts[low]}"
        )


def kfold(y: np.ndarray, k: int, seed: int = 0, what: str = "training data") -> list:
    """Stratified ``[(train_idx, test_idx)] * k`` over labels ``y`` (shuffled with ``seed``);
    real-valued targets (regression): plain shuffled K-fold."""
    y = np.asarray(y)
    check_folds(y, k, what)
    if y.dtype.kind == "f":
        kf = KFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in kf.split(np.zeros(len(y)))]
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]


def with_train_subset(data: Data, indices: np.ndarray) -> Data:
    """``data`` whose train split is only ``indices`` of it (val and test unchanged)."""
    return replace(data, train=Subset(data.train, [int(i) for i in indices]))


def labels(data: Data, split: str = "train") -> np.ndarray:
    return np.asarray(data.arrays(split)[1])


@torch.no_grad()
def fit_scaling(model: nn.Module, data: Data, indices: np.ndarray) -> nn.Module:
    """A rebuilt member's standardization fitted on the training samples ``indices`` (in place),
    as a scaler in a scikit-learn pipeline is refitted per fold: a rebuild holds placeholders
    (mean 0, std 1) that a bundle's weights would fill. Input statistics (``input_mean`` /
    ``input_std``) and regression target statistics (``target_mean`` / ``target_std``), where
    the model has them."""
    has = {n for n, _ in model.named_buffers(recurse=False)}
    if not has & {MEAN, TARGET_MEAN}:
        return model
    x, y = data.arrays("train")
    for (mean, std), values in (((MEAN, STD), x), ((TARGET_MEAN, TARGET_STD), y)):
        if mean in has:
            part = values[indices]
            stats = fit_standardize(part.reshape(len(part), -1))
            buf_mean, buf_std = getattr(model, mean), getattr(model, std)
            buf_mean.copy_(torch.tensor(stats["mean"]).reshape(buf_mean.shape))
            buf_std.copy_(torch.tensor(stats["std"]).reshape(buf_std.shape))
    return model


def out_of_fold(
    members: Sequence[tuple[str, nn.Module]],
    data: Data,
    k: int,
    train_config: Any,
    *,
    task: Any = "classification",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The members' out-of-fold predictions of the training split.

    The training data is split into ``k`` stratified folds; for each fold, every member is
    rebuilt from its recorded source (its standardization refitted on those folds,
    :func:`fit_scaling`) and retrained with the one training loop on the other ``k - 1``
    folds (``train_config``: one :class:`~slimfuse.training.TrainConfig` for all, or one per
    member; fold ``f`` trains with the member's seed + 1000 f), then predicts the
    held-out fold, so every training sample is predicted by models that never saw it.
    Returns ``(outputs, labels, folds)``: raw outputs ``(members, samples, classes)`` in the
    training split's order, and the ``[(train_idx, test_idx)]``.
    """
    configs = list(train_config) if isinstance(train_config, Sequence) else None
    if configs is not None and len(configs) != len(members):
        raise FusionError(
            f"{len(configs)} training configs for {len(members)} members: expected one per member"
        )
    specs = [spec_of(member) for _, member in members]
    for (name, _), spec in zip(members, specs, strict=True):
        if spec is None:
            raise FusionError(
                f"member {name!r} has no recorded source to retrain per fold: expected "
                "members built by slimfuse, or cv='prefit'"
            )
    y = labels(data, "train")
    folds = kfold(y, k, seed, what="training data")
    oof: list[torch.Tensor | None] = [None] * len(members)
    for f, (tr, te) in enumerate(folds):
        fold_data = with_train_subset(data, tr)
        held = DataLoader(Subset(data.train, [int(i) for i in te]), batch_size=256)
        for i, ((name, _), spec) in enumerate(zip(members, specs, strict=True)):
            # a member's seed is its own config's, or the shared one's + i (as train_members
            # seeds its members); fold f adds 1000 * f
            base = configs[i] if configs is not None else train_config
            seed_i = base.seed if configs is not None else base.seed + i
            cfg = base.replace(seed=seed_i + 1000 * f)
            torch.manual_seed(cfg.seed)
            fresh = fit_scaling(rebuild(spec), data, tr)  # type: ignore[arg-type]
            train(fresh, fold_data, task, cfg, description=f"fold {f + 1} {name}")
            outs, _ = collect([(name, fresh)], held, task)
            if oof[i] is None:
                oof[i] = torch.zeros(len(y), outs.shape[-1])
            oof[i][torch.as_tensor(te)] = outs[0]  # type: ignore[index]
    return torch.stack(oof), torch.from_numpy(y), folds  # type: ignore[arg-type]


def held_out_predictions(
    fused: Any, data: Data | Any, task: Any = "classification", split: str = "val"
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """What a fusion with a ``cv`` setting (stacking, weighted) fits on: ``(outputs, labels,
    what)``, ``what`` naming the data for error messages.

    ``fused.cv == "prefit"``: its members' predictions of ``data``'s ``split`` (a loader is used
    as is); ``cv=K``: their out-of-fold predictions of the training split (:func:`out_of_fold`
    with the fusion's ``train_config`` and ``seed``), kept as ``fused.oof_outputs_`` and
    ``fused.fold_indices_``.
    """
    if fused.cv == "prefit":
        outputs, y = collect(fused.pairs, as_loader(data, split), task)
        return outputs, y, "validation data" if split == "val" else f"{split} data"
    if not isinstance(data, Data):
        raise FusionError(f"cv={fused.cv} folds the training split: expected a Data, not a loader")
    outputs, y, fused.fold_indices_ = out_of_fold(
        fused.pairs, data, int(fused.cv), fused.train_config, task=task, seed=fused.seed
    )
    fused.oof_outputs_ = outputs
    return outputs, y, "training data"
