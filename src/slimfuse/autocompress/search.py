"""``slimfuse.compress`` (:func:`compress`): the smallest or fastest model within an accuracy
budget, found by an Optuna search over chains of techniques (:mod:`slimfuse.autocompress.space`).

The search keeps everything in its ``out`` folder: ``reference/`` (the model the budget is
measured against: the fused models when several are given), ``search.db`` (the Optuna study,
SQLite: an interrupted search continues with ``resume=True`` and does not redo finished trials),
``trials/NNN/`` (each trial's bundle and ``trial.json``), and at the end ``pareto.md`` /
``compress.json`` (the front of validation accuracy, latency and ONNX bytes), ``chosen/`` and
``model.onnx`` (the chosen model), ``recipe.yaml`` (its chain: ``slimfuse run`` reproduces it),
``metrics.json`` and ``report.md`` / ``report.html`` (test figures of the reference and the
chosen model, measured once the choice is made and never used to make it).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimfuse.autocompress.config import CompressConfig
from slimfuse.autocompress.results import (
    TOL,
    CompressResult,
    describe,
    drop_text,
    file_kind,
    finish,
    metric_name,
    objective_key,
)
from slimfuse.autocompress.space import (
    Space,
    ending_param,
    enqueued,
    forms,
    students,
    suggest,
)
from slimfuse.errors import ConfigError, DataError, SlimfuseError
from slimfuse.training import TrainingInterrupted

log = logging.getLogger("slimfuse.compress")
STUDY = "compress"
# what a resumed search must share with the one it continues
KEPT = ("max_drop", "objective", "batch", "engine", "epochs", "seed", "fusion")
# the tasks a budget can be kept on: accuracy, or the cosine to the reference's embeddings
TASKS = ("classification", "embedding")


class _ChainFailed(Exception):
    """A chain a stage refused (a layer it cannot prune...): the trial fails, the search goes on."""


def _space(model: Any, task: str, engine: str = "onnxruntime") -> Space:
    """The search space of the reference ``model``: students of its zoo architecture (of its
    first member for an ensemble), or for a text encoder its number of blocks."""
    from slimfuse.fusion.ensemble import FusionModule
    from slimfuse.models.source import spec_of
    from slimfuse.models.zoo import MODELS

    if task == "embedding":
        from slimfuse.distillation.students import find_blocks

        try:
            blocks = len(find_blocks(model)[1])
        except SlimfuseError:  # no block list: no shallower students
            blocks = 1
        return Space(encoder_blocks=max(1, blocks), engine=engine)
    ensemble = isinstance(model, FusionModule)
    inner = model.members[model.names[0]] if ensemble else model
    spec = spec_of(inner)
    if spec is None or not isinstance(spec.source, str) or spec.source not in MODELS:
        return Space(ensemble=ensemble, engine=engine)
    arch = (spec.source, dict(spec.kwargs or {}))
    return Space(pool=tuple(students(arch, ensemble)), ensemble=ensemble, engine=engine)


def _reference(
    models: Sequence[Any], data: Any, out: Path, cfg: CompressConfig, resume: bool
) -> tuple[Any, dict[str, Any], Any]:
    """The reference model (loaded back from ``out/reference``), its validation figures, and
    the data the search runs on: text becomes token data whose targets are the reference's
    own embeddings (the ``embedding`` task's cosine then measures fidelity to it)."""
    from slimfuse.autocompress.trial import measure_val
    from slimfuse.models.bundle import load, save
    from slimfuse.models.resolve import load_model
    from slimfuse.models.source import check_model_fits, task_of
    from slimfuse.tasks import get_task

    folder, info = out / "reference", out / "reference.json"
    if resume and info.is_file() and (folder / "slimfuse.json").is_file():
        reference = load(folder)
        return reference, json.loads(info.read_text()), _encoded(reference, data)
    loaded = [load_model(m, data=data) if not hasattr(m, "forward") else m for m in models]
    names = [m if isinstance(m, str) else f"m{i}" for i, m in enumerate(models)]
    task = get_task(task_of(loaded[0]))
    if task.name not in TASKS:
        raise ConfigError(
            f"compress keeps an accuracy budget: it takes classification models (accuracy) "
            f"or text encoders (cosine to the reference's embeddings), not {task.name}"
        )
    if task.name == "embedding" and len(loaded) > 1:
        raise ConfigError(
            f"{len(loaded)} encoders given: compress fuses classification models only; give "
            "one encoder"
        )
    for name, model in zip(names, loaded, strict=True):
        check_model_fits(model, data, task.name, what=f"model {name!r}")
    if len(loaded) > 1:
        from slimfuse.fusion.api import fuse

        pairs = [(f"m{i}", m) for i, m in enumerate(loaded)]
        log.info("fusing %d models (%s) into the reference", len(loaded), cfg.fusion)
        reference = fuse(pairs, {"method": cfg.fusion}, data, task=task)
    else:
        reference = loaded[0]
    save(reference, folder)
    reference = load(folder)  # the reference as every trial (and the recipe) loads it
    data = _encoded(reference, data)
    figures = measure_val(
        reference,
        data,
        task,
        batch=cfg.batch,
        threads=cfg.threads,
        folder=None,
        engine=cfg.engine,
    )
    figures["task"] = task.name
    figures["file_bytes_fp32"] = figures["file_bytes"]
    figures["sources"] = [
        str(m) if isinstance(m, (str, Path)) else type(m).__name__ for m in models
    ]
    info.write_text(json.dumps(figures, indent=2) + "\n")
    return reference, figures, data


def _encoded(reference: Any, data: Any) -> Any:
    """Text as token data for the encoder ``reference``, read with its own tokenizer (the
    reference bundle keeps a copy: ``slimfuse run`` of the written recipe reads text the same
    way); other data as it is."""
    from slimfuse.data.text import is_text

    if not is_text(data):
        return data
    from slimfuse.distillation.text import encode_text

    return encode_text(reference, data, what="the reference")


def _open_study(out: Path, cfg: CompressConfig, resume: bool, space: Space) -> Any:
    import optuna
    from optuna.samplers import TPESampler
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = out / "search.db"

    # constrained multi-objective TPE: each trial sets its constraint (drop - max_drop <= 0)
    sampler = TPESampler(seed=cfg.seed, n_startup_trials=8)
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{db}",
        directions=["minimize", "maximize"],
        sampler=sampler,
        load_if_exists=resume,
    )
    settings = {k: getattr(cfg, k) for k in KEPT}
    if resume:
        before = study.user_attrs.get("settings", {})
        changed = [k for k in KEPT if k in before and before[k] != settings[k]]
        if changed:
            k = changed[0]
            raise ConfigError(
                f"--resume with {k} {settings[k]!r}, the search in {out} has {before[k]!r}; "
                "continue it with the same settings or start another --out"
            )
        requeued = list(study.user_attrs.get("requeued", []))
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING:  # the process was killed during it
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
                continue
            if t.number not in requeued:
                log.info("trial %d was interrupted: it runs again", t.number)
                requeued.append(t.number)
                study.enqueue_trial(t.params)
        study.set_user_attr("requeued", requeued)
    else:
        study.set_user_attr("settings", settings)
        for params in enqueued(cfg, space):
            study.enqueue_trial(params)
    return study


def compress(
    models: Any,
    data: Any,
    *,
    out: str | Path,
    max_drop: float = 0.01,
    objective: str = "latency",
    batch: int = 64,
    engine: str = "onnxruntime",
    budget_minutes: float = 10.0,
    trials: int = 40,
    epochs: int = 80,
    seed: int = 0,
    threads: int = 1,
    fusion: str = "weighted",
    split_seed: int = 0,
    data_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    trust_code: bool | None = None,
) -> CompressResult:
    """Search chains of techniques for the model that minimises ``objective`` (``latency`` at
    ``batch`` on this CPU, or file ``size``) on ``engine`` (``onnxruntime``: an ``.onnx``
    file; ``executorch``: a ``.pte`` lowered to XNNPACK) while its validation accuracy stays
    within ``max_drop`` (0.01: one point) of the reference's (a text encoder's: the mean
    cosine to the reference's embeddings).

    - ``models``: one model or several (sources: bundle folders, ``file.py:fn``..., or modules);
      several are fused first (``fusion``: weighted or mean), and the fused model is the
      reference and the distillation teacher.
    - ``data``: a data source name (``mnist1d``, ``file.csv``...) with ``split_seed`` and
      ``data_kwargs`` as ``slimfuse.load_data`` takes them; it needs a validation split.
    - ``budget_minutes`` and ``trials`` bound the search (the post-training int8 trials run
      first); ``epochs``: the longest distillation a trial runs.
    - ``resume``: continue the search in ``out`` (same settings); finished trials are kept.

    Returns a :class:`CompressResult`; the folder layout is the module's docstring.
    """
    from slimfuse.trust import trusting

    cfg = CompressConfig(
        max_drop=max_drop,
        objective=objective,
        batch=batch,
        engine=engine,
        budget_minutes=budget_minutes,
        trials=trials,
        epochs=epochs,
        seed=seed,
        threads=threads,
        fusion=fusion,
    )
    if not isinstance(data, str):
        raise ConfigError(
            f"data: expected a data source name or path (the recipe names it), got "
            f"{type(data).__name__}"
        )
    listed = list(models) if isinstance(models, (list, tuple)) else [models]
    if not listed:
        raise ConfigError("no model given; expected one model or several to fuse")
    with trusting(trust_code):
        return _search(listed, data, Path(out), cfg, split_seed, data_kwargs or {}, resume)


def _search(
    models: list[Any],
    source: str,
    out: Path,
    cfg: CompressConfig,
    split_seed: int,
    data_kwargs: dict[str, Any],
    resume: bool,
) -> CompressResult:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    from slimfuse.autocompress.trial import (
        Hopeless,
        Watch,
        chain_recipe,
        continue_chain,
        measure_val,
        run_chain,
    )
    from slimfuse.data import load_data
    from slimfuse.tasks import get_task

    started = time.time()
    db = out / "search.db"
    if resume and not db.is_file():
        raise ConfigError(f"--resume: {out} holds no search (no search.db); run without --resume")
    if not resume and db.is_file():
        raise ConfigError(
            f"{out} already holds a search; continue it with --resume or choose another --out"
        )
    data = load_data(source, split_seed=split_seed, **data_kwargs)
    if len(data.split("val")) == 0:
        raise DataError(
            f"{data.name}: the validation split is empty; the accuracy budget is kept on it"
        )
    out.mkdir(parents=True, exist_ok=True)
    reference, ref, data = _reference(models, data, out, cfg, resume)
    task = get_task(ref.get("task", "classification"))
    space = _space(reference, task.name, cfg.engine)
    study = _open_study(out, cfg, resume, space)
    # the time budget counts across --resume: the study keeps the seconds spent so far
    spent = float(study.user_attrs.get("seconds", 0.0))
    deadline = started + cfg.budget_minutes * 60 - spent
    if spent:
        log.info("%.1f of %g minutes spent before this run", spent / 60, cfg.budget_minutes)
    key = objective_key(cfg)
    floor = ref["val_metric"] - cfg.max_drop
    log.info(
        "reference: val %s %.4f, %.1f KiB %s, %.3f ms at batch %d; floor %.4f",
        metric_name(task.name),
        ref["val_metric"],
        ref["file_bytes"] / 1024,
        file_kind(cfg),
        ref["latency_ms"],
        cfg.batch,
        floor,
    )

    def recipe_of(chain: list[dict[str, Any]], export: bool = False) -> Any:
        return chain_recipe(
            chain,
            reference=(out / "reference").resolve(),
            data=source,
            data_kwargs=data_kwargs,
            split_seed=split_seed,
            seed=cfg.seed,
            threads=cfg.threads,
            task=task.name,
            export=export,
        )

    def same_as(trial: Any) -> Any:
        """An earlier finished trial that ran the same chain (the sampler may draw it again)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.number != trial.number and t.params == trial.params and "base" not in t.user_attrs:
                return t
        return None

    def objective(trial: Any) -> tuple[float, float]:
        chain = suggest(trial, cfg, space)
        trial.set_user_attr("chain", chain)
        twin = same_as(trial)
        if twin is not None:  # not run again: its result stands for this draw too
            trial.set_user_attr("twin", twin.number)
            if twin.state == TrialState.PRUNED:
                why = f"same chain as trial {twin.number}, stopped early"
                trial.set_user_attr("stopped", why)
                raise optuna.TrialPruned(why)
            for k, v in twin.user_attrs.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("twin", twin.number)
            trial.set_constraint("drop", twin.user_attrs["drop"] - cfg.max_drop - TOL)
            return tuple(twin.values)  # type: ignore[return-value]
        folder = out / "trials" / f"{trial.number:03d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        watch = Watch(
            floor=floor,
            deadline=deadline,
            slack_train=max(0.02, 2 * cfg.max_drop),
            slack_stage=max(0.005, cfg.max_drop / 2),
            metric=metric_name(task.name),
        )
        t0 = time.perf_counter()
        record: dict[str, Any] = {"number": trial.number, "chain": chain}
        variants: list[dict[str, Any]] = []
        try:
            ctx = run_chain(recipe_of(chain), data, task, folder, watch)
            # a chain that trains ends in each int8 form as well: the trained model is shared
            for i, form in enumerate(forms(chain, cfg, space)):
                where = folder if i == 0 else folder / form.label
                model, full = ctx.model, list(chain)
                if form.stage is not None:
                    model = continue_chain(ctx, form.stage, cfg.seed)
                    full.append(form.stage)
                if form.export is not None:
                    full.append(form.export)
                figures = measure_val(
                    model,
                    data,
                    task,
                    batch=cfg.batch,
                    threads=cfg.threads,
                    folder=where,
                    engine=cfg.engine,
                    int8=form.int8_export,
                )
                drop = ref["val_metric"] - figures["val_metric"]
                variants.append(
                    {
                        **figures,
                        "drop": drop,
                        "chain": full,
                        "folder": str(where.relative_to(out)),
                        "ending": form.label,
                    }
                )
        except Hopeless as why:
            record.update(state="stopped", why=str(why), seconds=time.perf_counter() - t0)
            (folder / "trial.json").write_text(json.dumps(record, indent=2) + "\n")
            trial.set_user_attr("stopped", str(why))
            raise optuna.TrialPruned(str(why)) from None
        except (TrainingInterrupted, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)  # runs again on --resume
            raise
        except SlimfuseError as exc:
            record.update(state="failed", why=str(exc))
            (folder / "trial.json").write_text(json.dumps(record, indent=2) + "\n")
            raise _ChainFailed(str(exc)) from exc
        seconds = round(time.perf_counter() - t0, 2)
        # the trial stands for its best variant (within the budget first); the others are
        # added to the study as trials of their own (same choices, their ending)
        best_v = min(
            variants, key=lambda v: (v["drop"] > cfg.max_drop + TOL, v[key], -v["val_metric"])
        )
        for v in variants:
            v["seconds"] = seconds
            if v is best_v:
                continue
            name, choices = ending_param(space)
            extra = {**trial.params, name: v["ending"]}
            dists = {**trial.distributions, name: CategoricalDistribution(choices)}
            study.add_trial(
                optuna.trial.create_trial(
                    params=extra,
                    distributions=dists,
                    values=[float(v[key]), float(v["val_metric"])],
                    user_attrs={**v, "base": trial.number},
                    constraints={"drop": v["drop"] - cfg.max_drop - TOL},
                )
            )
        record.update(state="complete", seconds=seconds, variants=variants)
        (folder / "trial.json").write_text(json.dumps(record, indent=2) + "\n")
        for k, v in best_v.items():
            trial.set_user_attr(k, v)
        trial.set_constraint("drop", best_v["drop"] - cfg.max_drop - TOL)
        return float(best_v[key]), float(best_v["val_metric"])

    best: dict[str, Any] = {}

    def progress(study_: Any, trial: Any) -> None:
        state = trial.state.name.lower()
        what = describe(trial.user_attrs.get("chain", []))
        if trial.state == optuna.trial.TrialState.COMPLETE:
            a = trial.user_attrs
            line = (
                f"val {a['val_metric']:.4f} (drop {drop_text(a['drop'], task.name)}), "
                f"{a['file_bytes'] / 1024:.1f} KiB, {a['latency_ms']:.3f} ms"
            )
            if a["drop"] <= cfg.max_drop + TOL and (not best or a[key] < best[key]):
                best.clear()
                best.update(a, number=trial.number)
        else:
            line = trial.user_attrs.get("stopped", state)
        shown = (
            f"trial {best['number']}: {best['file_bytes'] / 1024:.1f} KiB, "
            f"{best['latency_ms']:.3f} ms"
            if best
            else "none within the budget yet"
        )
        log.info("trial %d [%s] %s: %s | best: %s", trial.number, state, what, line, shown)
        study_.set_user_attr("seconds", spent + time.time() - started)
        if time.time() >= deadline:
            study_.stop()

    def ran() -> int:  # chains run: not a variant of one, not one drawn again, not interrupted
        return sum(
            1
            for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and not {"interrupted", "twin", "base"} & set(t.user_attrs)
        )

    if time.time() >= deadline:
        log.info("the time budget is spent: raise --budget-minutes to search on")
    while time.time() < deadline and ran() < cfg.trials:
        before = ran()
        study.optimize(
            objective,
            n_trials=cfg.trials - before,
            timeout=max(1.0, deadline - time.time()),
            callbacks=[progress],
            catch=(_ChainFailed,),
            gc_after_trial=False,
        )
        if ran() == before:  # only chains already run were drawn: the sampler has settled
            log.info("the sampler draws only chains already run: the search stops")
            break
    return finish(study, out, cfg, ref, data, task, recipe_of, time.time() - started)
