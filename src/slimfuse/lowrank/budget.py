"""The ``budget`` method: the model's FLOPs (or parameters) brought to ``budget`` of what they
were, each layer's rank chosen by its sensitivity on calibration data.

1. Each targeted layer's input covariance ``C`` over the calibration samples (token inputs: the
   real tokens only) and its FLOPs on one example input (its weights times its output
   positions).
2. Its SVD, whitened (``W C^1/2``: the squared singular values dropped are the output error) or
   plain (each component's output error ``s_i^2 v_i^T C v_i``, kept in that order). Its error
   curve ``E(r)``: the share of the layer's output energy lost at rank ``r``.
3. The ranks minimising the summed errors within the budget (:func:`allocate`, a knapsack over
   each layer's ranks and its dense form): the layers whose output error grows least per
   removed FLOP are cut first and deepest; a layer is only factorized below its break-even
   rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.lowrank.config import Budget
from slimfuse.lowrank.layers import Decomposition, decompose
from slimfuse.lowrank.plan import Choice, Layer, apply, candidates
from slimfuse.lowrank.profile import input_covariances, layer_positions
from slimfuse.measuring import count_params
from slimfuse.training import trainable_copy

if TYPE_CHECKING:
    from slimfuse.lowrank.api import Job


def _samples(inputs: Any) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    if isinstance(first, (tuple, list)):
        first = first[0]
    return int(first.shape[0])


def _first(inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return {k: v[:1] for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(v[:1] for v in inputs)
    return inputs[:1]


def calibration(job: Job, samples: int) -> list[Any]:
    """Input batches: ``job.inputs``, else up to ``samples`` training samples of the data."""
    if job.inputs is not None:
        batches = [job.inputs] if isinstance(job.inputs, (dict, torch.Tensor)) else job.inputs
        return list(batches)
    if job.data is None:
        raise ConfigError(
            "method 'budget' measures each layer's sensitivity on data; give data (or inputs=)"
        )
    out, seen = [], 0
    for batch in job.data.loader("train", batch_size=min(32, samples)):
        inputs, _ = job.task.unpack(batch)
        out.append(inputs)
        seen += _samples(inputs)
        if seen >= samples:
            break
    if not out:
        raise ConfigError("method 'budget': the training split is empty")
    return out


def error_curve(
    layer: Layer, cov: torch.Tensor | None, whiten: bool
) -> tuple[Decomposition, np.ndarray]:
    """The layer's decomposition (components in the order they are kept) and ``E(r)`` for
    ``r = 0 .. full rank``: the share of its output energy on the data lost at rank ``r``."""
    if whiten and cov is not None:
        dec = decompose(layer.module, cov)
        energy = dec.s**2
    else:
        dec = decompose(layer.module)
        energy = dec.s**2
        if cov is not None:  # each component's output energy: s_i^2 v_i^T C v_i
            energy = energy * ((dec.vh @ cov.double()) * dec.vh).sum(1).clamp(min=0)
            order = torch.argsort(energy, descending=True)
            dec = Decomposition(dec.u[:, order], dec.s[order], dec.vh[order], None)
            energy = energy[order]
    e = energy.numpy()
    total = float(e.sum())
    lost = (
        1.0 - np.concatenate([[0.0], np.cumsum(e)]) / total if total > 0 else np.zeros(len(e) + 1)
    )
    return dec, np.clip(lost, 0.0, 1.0)


def allocate(
    curves: list[np.ndarray],
    unit: list[float],
    dense: list[float],
    rmax: list[int],
    target: float,
    bins: int = 4000,
) -> list[int | None]:
    """Ranks (``None``: dense) minimising the summed ``curves[l][r]`` with the summed costs
    (``unit[l] * r`` factorized, ``dense[l]`` otherwise) at most ``target``: a knapsack over
    the costs in ``bins`` steps of the target (each rounded up, so the sum stays within it),
    then the slack the rounding left is spent where it buys the most error per unit of cost."""
    n = len(curves)
    choice: list[int | None] = [None] * n
    free = [i for i in range(n) if rmax[i] >= 1 and dense[i] > 0]
    room = target - sum(dense[i] for i in range(n) if i not in free)
    if free and room > 0:
        scale = bins / room
        best = np.zeros(bins + 1)
        picks = []
        for i in free:  # options: rank 1..rmax, then dense
            costs = np.append(unit[i] * np.arange(1, rmax[i] + 1), dense[i])
            errors = np.append(curves[i][1 : rmax[i] + 1], 0.0)
            steps = np.ceil(costs * scale - 1e-9).astype(np.int64)
            new = np.full(bins + 1, np.inf)
            arg = np.full(bins + 1, -1, dtype=np.int64)
            for j in np.flatnonzero(steps <= bins):
                c = steps[j]
                cand = np.full(bins + 1, np.inf)
                cand[c:] = best[: bins + 1 - c] + errors[j]
                better = cand < new
                new[better], arg[better] = cand[better], j
            best = new
            picks.append((arg, steps, rmax[i]))
        b = bins
        for i, (arg, steps, m) in zip(reversed(free), reversed(picks), strict=True):
            j = int(arg[b])
            if j < 0:  # nothing fits: left to the check before (rank 1 everywhere fits)
                j = 0
            choice[i] = j + 1 if j < m else None
            b -= int(steps[j])
    cost = sum(dense[i] if r is None else unit[i] * r for i, r in enumerate(choice))
    slack = target - cost
    while True:  # spend what is left where it buys the most error per unit of cost
        pick, gain = None, 0.0
        for i in free:
            r = choice[i]
            if r is None:
                continue
            if r < rmax[i]:
                dc, de = unit[i], curves[i][r] - curves[i][r + 1]
            else:
                dc, de = dense[i] - unit[i] * r, curves[i][r]
            if dc <= slack + 1e-9 and de > 0 and de / max(dc, 1e-30) > gain:
                pick, gain = i, de / max(dc, 1e-30)
        if pick is None:
            return choice
        r = choice[pick]
        assert r is not None
        if r < rmax[pick]:
            choice[pick], slack = r + 1, slack - unit[pick]
        else:
            choice[pick], slack = None, slack - (dense[pick] - unit[pick] * r)


def factorize_budget(model: nn.Module, cfg: Budget, job: Job) -> nn.Module:
    small = trainable_copy(model)
    layers, alone = candidates(small, cfg)
    batches = calibration(job, cfg.calibration_samples)
    example = job.example_inputs
    if example is None:
        example = job.data.example_input(1) if job.data is not None else _first(batches[0])
    modules = {layer.name: layer.module for layer in layers}
    positions, macs = layer_positions(small, modules, example)
    if cfg.of == "flops":
        if macs is None:
            raise ConfigError(
                "method 'budget' cannot count the model's FLOPs on the example input; use of "
                "'params'"
            )
        total = float(macs)
    else:
        positions = dict.fromkeys(positions, 1)
        total = float(count_params(small)[0])
    covs = input_covariances(small, modules, batches)
    decs, curves, unit, dense, rmax = [], [], [], [], []
    for layer in layers:
        dec, curve = error_curve(layer, covs[layer.name], cfg.whiten)
        pos = positions[layer.name]
        decs.append(dec)
        curves.append(curve)
        unit.append(float((layer.rows + layer.cols) * pos))
        dense.append(float(layer.weights * pos))
        rmax.append(layer.breakeven)
    target = sum(dense) - total * (1 - cfg.budget)
    floor = sum(u if m >= 1 and d > 0 else d for u, d, m in zip(unit, dense, rmax, strict=True))
    if target < floor - 1e-9:
        reach = (total - sum(dense) + floor) / total if total else 1.0
        raise ConfigError(
            f"budget {cfg.budget} of the model's {cfg.of} is out of reach: every targeted layer "
            f"at rank 1 still leaves {reach:.3f}; expected budget >= {reach:.3f} (or target more "
            "layers)"
        )
    ranks = allocate(curves, unit, dense, rmax, target)
    choices: dict[str, Choice] = {}
    after = total - sum(dense)
    for layer, dec, curve, r, u, d in zip(layers, decs, curves, ranks, unit, dense, strict=True):
        after += d if r is None else u * r
        err = 0.0 if r is None else float(curve[r])
        reason = "within the budget, the output error costs more here" if r is None else ""
        if positions[layer.name] == 0:
            reason = "not run on the example input"
        choices[layer.name] = Choice(
            r, reason or f"output error {err:.4f}", dec, {"output_error": round(err, 6)}
        )
    report = apply(small, layers, choices, alone, method="budget", budget=cfg.budget, of=cfg.of)
    info = {"of": cfg.of, "target": cfg.budget, "before": total, "after": after}
    info["fraction"] = after / total if total else 1.0
    object.__setattr__(
        small, "lowrank_info", {"method": "budget", "layers": report, "budget": info}
    )
    return small
