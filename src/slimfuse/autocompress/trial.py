"""One trial: a chain of recipe stages run from the reference, watched, measured, saved.

The stages run as ``slimfuse run`` runs them (the stage registry's functions, every stage from
the recipe's seed, the model loaded from the reference bundle as a recipe's ``model``), so the
recipe written for a chain reproduces the trial's model. A trial is stopped early when its
validation accuracy (an encoder's cosine) is already far outside the budget (:class:`Watch`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import SlimfuseError
from slimfuse.measuring import measure
from slimfuse.models.bundle import save, stored_bytes
from slimfuse.models.resolve import load_model
from slimfuse.models.source import record
from slimfuse.pipeline.recipe import Recipe, check_recipe
from slimfuse.pipeline.stages import STAGES, Context
from slimfuse.tasks import Task, evaluate
from slimfuse.training import Callback, seed_all

log = logging.getLogger("slimfuse.compress")
TRAINED = ("distill", "prune", "factorize")  # the stages a chain is watched after


class Hopeless(Exception):
    """A trial stopped early: why (its validation accuracy, the time budget)."""


@dataclass
class Watch(Callback):
    """Stops a trial whose validation accuracy is far below the budget's floor, or that runs
    past the search's deadline.

    During training (from half its steps on) a trial is hopeless below ``floor - slack_train``;
    after a stage that trains, below ``floor - slack_stage``: later stages (pruning, int8) take
    accuracy away far more often than they give it back."""

    floor: float
    deadline: float
    slack_train: float
    slack_stage: float
    metric: str = "accuracy"
    total_steps: int = 0
    step: int = 0
    last: float | None = None

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        self.total_steps, self.step = total_steps, 0

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.step = step
        if time.time() > self.deadline:
            raise Hopeless("the time budget ran out")

    def on_epoch_end(self, model: nn.Module, epoch: int, metric: float) -> None:
        self.last = metric
        late = self.total_steps and self.step * 2 >= self.total_steps
        if late and metric < self.floor - self.slack_train:
            raise Hopeless(
                f"val {self.metric} {metric:.4f} at epoch {epoch + 1}, the floor is "
                f"{self.floor:.4f}"
            )

    def after_stage(self, name: str, value: float) -> None:
        if value < self.floor - self.slack_stage:
            raise Hopeless(
                f"val {self.metric} {value:.4f} after {name}, the floor is {self.floor:.4f}"
            )


def chain_recipe(
    chain: list[dict[str, Any]],
    *,
    reference: Path,
    data: str,
    data_kwargs: dict[str, Any],
    split_seed: int,
    seed: int,
    threads: int,
    task: str,
    export: bool = False,
) -> Recipe:
    """The chain as a recipe (validated by the stage registry) starting from ``reference``."""
    stages = [dict(e) for e in chain] or [{"stage": "eval", "name": "reference"}]
    if export:
        stages.append({"stage": "export"})
    recipe = Recipe.model_validate(
        {
            "model": str(reference),
            "data": data,
            "data_kwargs": data_kwargs,
            "task": task,
            "seed": seed,
            "split_seed": split_seed,
            "threads": threads,
            "stages": stages,
        }
    )
    check_recipe(recipe, "search chain")
    return recipe


def recipe_text(recipe: Recipe, header: str = "") -> str:
    body = recipe.model_dump(mode="json", exclude_none=True)
    body.pop("measure_engines", None)
    body["stages"] = [
        {k: v for k, v in s.items() if k != "measure" or not v} for s in body["stages"]
    ]
    return header + yaml.safe_dump(body, sort_keys=False)


def val_metric(model: nn.Module, data: Data, task: Task) -> float:
    return float(evaluate(model, data.loader("val", batch_size=256), task))


def run_chain(recipe: Recipe, data: Data, task: Task, folder: Path, watch: Watch | None) -> Context:
    """The recipe's stages in order from its model, as ``slimfuse run`` runs them; the
    context (``ctx.model``: the last stage's) can go on with :func:`continue_chain`."""
    ctx = Context(
        data=data, task=task, out=folder, seed=recipe.seed, threads=recipe.threads, quiet=True
    )
    if watch is not None:
        ctx.callbacks = [watch]
    ctx.model = load_model(recipe.model, data=data, **recipe.model_kwargs)  # type: ignore[arg-type]
    for entry in recipe.stages:
        new = _stage(ctx, entry, recipe.seed)
        if new is not None and watch is not None and entry.stage in TRAINED:
            watch.after_stage(ctx.stage_name, val_metric(new, data, task))
    shutil.rmtree(folder / ".checkpoints", ignore_errors=True)
    return ctx


def continue_chain(ctx: Context, entry: dict[str, Any], seed: int) -> nn.Module:
    """One more stage after a chain (its model is not kept in ``ctx``: several endings can
    follow the same chain)."""
    from slimfuse.pipeline.recipe import StageEntry

    model, models = ctx.model, dict(ctx.models)
    try:
        new = _stage(ctx, StageEntry.model_validate(entry), seed)
        return model if new is None else new
    finally:
        ctx.model, ctx.models = model, models


def _stage(ctx: Context, entry: Any, seed: int) -> nn.Module | None:
    name = entry.name or entry.stage
    ctx.stage_name = name
    st = STAGES.get(entry.stage)
    cfg = st.config.parse(entry.config())
    t0 = time.perf_counter()
    seed_all(seed)  # every stage from the recipe's seed, as slimfuse run does
    try:
        new = st.fn(ctx, cfg)
    except SlimfuseError as exc:
        exc.args = (f"stage {name!r} ({entry.stage}): {exc}",)
        raise
    if new is None:
        return None
    record(
        new,
        lineage={
            "stage": entry.stage,
            "name": name,
            "config": cfg.to_dict(),
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )
    ctx.model = ctx.models[name] = new
    return new


def measure_val(
    model: nn.Module,
    data: Data,
    task: Task,
    *,
    batch: int,
    threads: int,
    folder: Path | None,
    engine: str = "onnxruntime",
    int8: bool = False,
) -> dict[str, Any]:
    """The deployed form on the validation split, run by ``engine``: its metric, file bytes
    and latency at ``batch`` (fixed threads); with ``folder``, the model is saved there
    (``bundle/``, and for ExecuTorch the ``model.pte`` measured: an ``int8`` one is quantized
    by PT2E at export, calibrated on the training data) with the bundle's bytes."""
    if folder is None:  # the reference: its file is measured, not kept
        with tempfile.TemporaryDirectory() as tmp:
            return _measure_file(model, data, task, batch, threads, Path(tmp), engine, int8)
    folder.mkdir(parents=True, exist_ok=True)
    out = _measure_file(model, data, task, batch, threads, folder, engine, int8)
    onnx = folder / "model.onnx" if engine == "onnxruntime" else None
    save(model, folder / "bundle", onnx=onnx, metrics={"task": task.name, "val": out})
    out["bundle_bytes"] = stored_bytes(folder / "bundle")
    if onnx is not None:  # the bundle keeps its copy
        onnx.unlink()
    return out


def _measure_file(
    model: nn.Module,
    data: Data,
    task: Task,
    batch: int,
    threads: int,
    folder: Path,
    engine: str,
    int8: bool,
) -> dict[str, Any]:
    """Write the deployed file into ``folder`` (``model.onnx`` or ``model.pte``), measure it."""
    from slimfuse.exporting import export_onnx

    if engine == "executorch":
        from slimfuse.deploy.pte import export_pte

        path = export_pte(
            model, data.example_input(1), folder / "model.pte", int8=int8, calibration=data
        )
    else:
        path = export_onnx(model, data.example_input(1), folder / "model.onnx")
    row = measure(
        model,
        data,
        task,
        split="val",
        engines=[engine],
        threads=threads,
        latency_batches=(batch,),
        budget_s=0.5,
        onnx_path=path if engine == "onnxruntime" else None,
        pte_path=path if engine == "executorch" else None,
    )[0]
    return {
        "val_metric": row["metric_value"],
        "latency_ms": row[f"latency_ms_b{batch}"],
        "file_bytes": row["file_bytes"],
        "packed_bytes": deflated_bytes(path),
        "onnx_bytes": row["onnx_bytes"],
        "params": row["params"],
        "macs": row["macs"],
    }


def deflated_bytes(path: Path) -> int:
    """The file's bytes deflated at zip's highest level: what a download of it costs (runs
    of zeros, pruned weights, shrink there; the file the runtime loads does not)."""
    return len(zlib.compress(path.read_bytes(), 9))
