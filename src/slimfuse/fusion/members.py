"""Train the members of an ensemble: N seeds of one model, or one model per K-fold split.

``train_members("mnist1d_cnn", data, n=5)`` trains 5 copies from seeds ``seed .. seed+4``;
``kfold=K`` trains K members, member ``k`` on the training data without fold ``k`` (fold ``k``
is then its out-of-fold data: ``fold_indices`` says which samples). Every member is trained by
the one loop and carries its spec, so the ensemble saves as a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.folds import kfold as make_folds
from slimfuse.fusion.folds import labels, with_train_subset
from slimfuse.models.source import build_model, record
from slimfuse.tasks import Task
from slimfuse.training import TrainConfig, train


@dataclass
class Members:
    """The trained ``(name, model)`` pairs and, for K-fold, each member's held-out indices."""

    pairs: list[tuple[str, nn.Module]]
    fold_indices: list[np.ndarray] = field(default_factory=list)
    val_scores: dict[str, float] = field(default_factory=dict)


def train_members(
    source: str,
    data: Data,
    *,
    n: int = 5,
    kfold: int | None = None,
    config: TrainConfig | None = None,
    task: str | Task = "classification",
    model_kwargs: dict[str, Any] | None = None,
    checkpoint_dir: Any = None,
) -> Members:
    """Train ``n`` seeds (or ``kfold`` fold-members) of ``source`` with the one loop."""
    cfg = config or TrainConfig(quiet=True)
    kw = dict(model_kwargs or {})
    if kfold is None and n < 1:
        raise FusionError(f"n={n}: expected at least 1 member")
    folds = make_folds(labels(data), kfold, cfg.seed) if kfold is not None else None
    count = len(folds) if folds is not None else n
    out = Members(pairs=[])
    for k in range(count):
        name = f"fold{k}" if folds is not None else f"seed{cfg.seed + k}"
        member_data = with_train_subset(data, folds[k][0]) if folds is not None else data
        torch.manual_seed(cfg.seed + k)  # the initialisation follows the seed too
        model = build_model(source, data=data, **kw)
        member_cfg = cfg.replace(seed=cfg.seed + k)
        result = train(
            model,
            member_data,
            task,
            member_cfg,
            description=f"member {name}",
            checkpoint_dir=None if checkpoint_dir is None else f"{checkpoint_dir}/{name}",
        )
        record(
            model,
            lineage={
                "stage": "train-members",
                "member": name,
                "config": member_cfg.to_dict(),  # what retrains it per fold (stack, weighted)
                "best_val": result.best_metric,
                "best_epoch": result.best_epoch,
            },
        )
        out.pairs.append((name, model))
        out.val_scores[name] = float(result.best_metric or 0.0)
        if folds is not None:
            out.fold_indices.append(folds[k][1])
    return out
