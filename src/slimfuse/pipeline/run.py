"""Run a recipe: stages in order, a bundle and a measurement after each, then the report.

Every stage's new model is checked before it is measured (:mod:`slimfuse.pipeline.checks`: a
stage that lowered a recorded sparsity is an error naming the stage and the layers)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from slimfuse.data import load_data
from slimfuse.data.text import is_text
from slimfuse.errors import SlimfuseError
from slimfuse.exporting import export_onnx
from slimfuse.measuring import measure, write_metrics
from slimfuse.models.bundle import load, save, stored_bytes
from slimfuse.models.resolve import load_model
from slimfuse.models.source import check_model_fits, record
from slimfuse.pipeline.checks import check_sparsity
from slimfuse.pipeline.fuse import member_scores
from slimfuse.pipeline.recipe import Recipe, check_recipe, load_recipe, parse_recipe
from slimfuse.pipeline.stages import STAGES, Context
from slimfuse.report import write_report
from slimfuse.tasks import get_task
from slimfuse.training import seed_all
from slimfuse.trust import trusting

log = logging.getLogger("slimfuse.pipeline")  # each stage's line, the report's path


def run_recipe(
    recipe: str | Path | Recipe,
    out: str | Path,
    *,
    quiet: bool = False,
    resume: bool = False,
    text: str | None = None,
    trust_code: bool | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` (a path, YAML text or :class:`Recipe`) into ``out``; returns metrics.

    A model or data source in the recipe that is code (``file.py:fn``, ``module:fn``) runs only
    with ``trust_code=True``: a recipe is a file, and files are not trusted to run code.
    """
    with trusting(trust_code):
        return _run(recipe, out, quiet=quiet, resume=resume, text=text)


def _run(
    recipe: str | Path | Recipe, out: str | Path, *, quiet: bool, resume: bool, text: str | None
) -> dict[str, Any]:
    if isinstance(recipe, Recipe):
        check_recipe(recipe)
        text = text or recipe.model_dump_json(indent=2)
    elif isinstance(recipe, Path) or (isinstance(recipe, str) and "\n" not in recipe):
        recipe, text = load_recipe(recipe)
    else:
        text = recipe
        recipe = parse_recipe(recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(text)
    seed_all(recipe.seed)
    task = get_task(recipe.task)
    data = load_data(recipe.data, split_seed=recipe.split_seed, **recipe.data_kwargs)
    ctx = Context(
        data=data,
        task=task,
        out=out,
        seed=recipe.seed,
        threads=recipe.threads,
        quiet=quiet,
        resume=resume,
    )
    if recipe.model is not None:
        ctx.model = load_model(recipe.model, data=data, **recipe.model_kwargs)
        check_model_fits(ctx.model, data, task.name)
        if is_text(data):  # an encoder's: token data, the recipe's model's embeddings as reference
            from slimfuse.distillation.text import encode_text

            data = ctx.data = encode_text(ctx.model, data, what="the recipe's model")
    metrics_path = out / "metrics.json"
    rows: list[dict[str, Any]] = []
    if resume and metrics_path.is_file():
        rows = json.loads(metrics_path.read_text())["stages"]
    say = (lambda *_: None) if quiet else log.info
    say(f"data: {data.describe()}")
    last_bundle: Path | None = None
    for i, entry in enumerate(recipe.stages, start=1):
        name = entry.name or entry.stage
        ctx.stage_name = name
        bundle = out / name
        st = STAGES.get(entry.stage)
        cfg = st.config.parse(entry.config())
        done = (
            resume
            and (bundle / "slimfuse.json").is_file()
            and any(r["stage"] == name for r in rows)
        )
        if done:
            say(f"[{i}/{len(recipe.stages)}] {name}: done earlier, loading {bundle}")
            ctx.model = ctx.models[name] = load(bundle)
            continue
        say(f"[{i}/{len(recipe.stages)}] {name} ({entry.stage})")
        t0 = time.perf_counter()
        try:
            # every stage starts from the recipe's seed: a model it builds (a student, members)
            # does not depend on what earlier stages drew, so --resume builds the same one
            seed_all(recipe.seed)
            new = st.fn(ctx, cfg)
        except SlimfuseError as exc:  # say which stage: a recipe may run one kind several times
            if not str(exc).startswith("stage "):
                exc.args = (f"stage {name!r} ({entry.stage}): {exc}",)
            raise
        seconds = time.perf_counter() - t0
        if new is not None:
            kept = check_sparsity(new, name, entry.stage)
            if kept["checked"]:
                say(f"    sparsity kept in {kept['checked']} recorded layers")
        if new is None:
            if not entry.measure or ctx.model is None or entry.stage == "export":
                continue
            new = ctx.model
        else:
            record(
                new,
                lineage={
                    "stage": entry.stage,
                    "name": name,
                    "config": cfg.to_dict(),
                    "seconds": round(seconds, 2),
                },
            )
        ctx.model = ctx.models[name] = new
        if not entry.measure:
            save(new, bundle, recipe=text)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            onnx = None
            if "onnxruntime" in recipe.measure_engines:
                onnx = export_onnx(new, data.example_input(1), Path(tmp) / "model.onnx")
            stage_rows = measure(
                new,
                data,
                task,
                stage=name,
                engines=recipe.measure_engines,
                threads=recipe.threads,
                onnx_path=onnx,
            )
            members = member_scores(new, ctx)  # an ensemble's members, for the report
            for r in stage_rows:
                r["bundle"] = str(bundle)
                r["seconds"] = round(seconds, 2)
                if members:
                    r["members"] = members
            rows = [r for r in rows if r["stage"] != name] + stage_rows
            save(
                new,
                bundle,
                recipe=text,
                onnx=onnx,
                metrics={"task": task.name, "metric": task.metric, "stages": rows},
            )
        for r in stage_rows:
            r["size_bytes"] = stored_bytes(bundle)
        write_metrics(metrics_path, rows, task.name, task.metric)
        last_bundle = bundle
        best = stage_rows[0]
        say(
            f"    {task.metric} {best['metric_value']:.4f}  params {best['params']:,}  "
            f"b64 latency {best.get('latency_ms_b64', float('nan')):.2f} ms  ({seconds:.1f}s)"
        )
    result = {"task": task.name, "metric": task.metric, "stages": rows}
    write_metrics(metrics_path, rows, task.name, task.metric)
    write_report(out, result)
    if last_bundle is not None:  # the final bundle carries the whole pipeline's metrics and report
        write_metrics(last_bundle / "metrics.json", rows, task.name, task.metric)
        write_report(last_bundle, result, bundles=out)
    say(f"report: {out / 'report.html'}")
    return result
