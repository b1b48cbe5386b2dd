"""Model soups (Wortsman et al., 2022): average the weights of fine-tuned variants of one model.

- ``uniform``: the mean of all ingredients' weights.
- ``greedy``: ingredients sorted by validation score, best first; each is added to the soup only
  if the soup's validation score does not drop, so the result is never worse on validation than
  the best ingredient.

BatchNorm statistics are re-estimated on training data after every averaging.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from slimfuse.errors import FusionError, SlimfuseWarning
from slimfuse.fusion.config import Greedy, Uniform
from slimfuse.fusion.merge.common import MergeJob, average, build, states, val_score
from slimfuse.tasks import get_task


def uniform_soup(
    pairs: Sequence[tuple[str, nn.Module]], config: Uniform, job: MergeJob
) -> tuple[nn.Module, dict[str, Any]]:
    """The mean of all ingredients' weights; with data, their validation scores and the soup's
    (a warning when the soup scores below every ingredient)."""
    data, task = job.data, job.task
    sts = states(pairs)
    model = build(pairs[0][1], average(sts), data, task, ingredients=[m for _, m in pairs])
    info: dict[str, Any] = {"method": "uniform", "ingredients": [n for n, _ in pairs]}
    if data is not None:
        task = get_task(task)
        scores = {n: val_score(m, data, task) for n, m in pairs}
        info.update(ingredient_val=scores, val=val_score(model, data, task))
        worst = min(scores.values()) if task.higher_is_better else max(scores.values())
        if task.better(worst, info["val"]):
            warnings.warn(
                f"the uniform soup scores {info['val']:.4f} on validation, worse than every "
                f"ingredient ({', '.join(f'{n} {v:.4f}' for n, v in scores.items())}): weight "
                "averaging needs variants fine-tuned from one model; a greedy soup keeps the best "
                "ingredient, fusion averages predictions instead",
                SlimfuseWarning,
                stacklevel=3,  # the caller of slimfuse.merge
            )
    return model, info


def greedy_soup(
    pairs: Sequence[tuple[str, nn.Module]], config: Greedy, job: MergeJob
) -> tuple[nn.Module, dict[str, Any]]:
    """Ingredients best first by validation score, each kept only if the soup's does not drop."""
    data = job.data
    if data is None:
        raise FusionError("greedy soup needs validation data: expected data")
    task = get_task(job.task)
    sts = states(pairs)
    scores = {n: val_score(m, data, task) for n, m in pairs}
    order = sorted(range(len(pairs)), key=lambda i: scores[pairs[i][0]], reverse=True)
    if not task.higher_is_better:
        order = order[::-1]
    chosen = [order[0]]
    best = scores[pairs[order[0]][0]]
    model = pairs[order[0]][1]
    trail = [{"added": pairs[order[0]][0], "val": best}]
    for i in order[1:]:
        soup = [*chosen, i]
        candidate = build(
            pairs[0][1],
            average([sts[j] for j in soup]),
            data,
            task,
            ingredients=[pairs[j][1] for j in soup],
        )
        score = val_score(candidate, data, task)
        if score == best or task.better(score, best):
            chosen.append(i)
            best, model = score, candidate
            trail.append({"added": pairs[i][0], "val": score})
        else:
            trail.append({"rejected": pairs[i][0], "val": score})
    if len(chosen) == 1:
        model = copy.deepcopy(pairs[chosen[0]][1]).eval()  # the best ingredient, its own BN stats
    info = {
        "method": "greedy",
        "ingredients": [pairs[i][0] for i in chosen],
        "ingredient_val": scores,
        "val": best,
        "trail": trail,
    }
    return model, info
