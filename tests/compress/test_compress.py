"""slimfuse compress: a real search on MNIST-1D with tiny members and few trials.

One search is shared by the tests: it is interrupted for real (a fault at its third trial's
stages), then resumed; its chosen model's recipe is run again with ``slimfuse run``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import slimfuse
from slimfuse.autocompress import CompressConfig, trial
from slimfuse.autocompress.results import choose
from slimfuse.cli import main
from slimfuse.config import TrainConfig

KW = dict(max_drop=0.05, objective="latency", epochs=2, budget_minutes=5)


def chain_kwargs(reference) -> dict:
    """What :func:`trial.chain_recipe` needs besides the chain: MNIST-1D from ``reference``."""
    return dict(
        reference=reference,
        data="mnist1d",
        data_kwargs={},
        split_seed=0,
        seed=0,
        threads=1,
        task="classification",
    )


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("members")
    data = slimfuse.load_data("mnist1d")
    paths = []
    for seed in range(2):
        model = slimfuse.build_model("mnist1d_cnn", data=data, channels=8)
        slimfuse.train(model, data, config=TrainConfig(epochs=6, seed=seed, quiet=True))
        paths.append(str(slimfuse.save(model, root / f"m{seed}")))
    return paths


@pytest.fixture(scope="module")
def search(members, tmp_path_factory):
    """Interrupted at trial 1 (after trial 0 finished), then resumed up to 3 trials."""
    out = tmp_path_factory.mktemp("search") / "out"
    real = trial.run_chain
    calls: list[int] = []

    def interrupted(recipe, data, task, folder, watch):
        calls.append(int(folder.name))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C during the second trial
        return real(recipe, data, task, folder, watch)

    mp = pytest.MonkeyPatch()
    mp.setattr(trial, "run_chain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        slimfuse.compress(members, "mnist1d", out=out, trials=3, **KW)
    mp.undo()
    first = json.loads((out / "trials" / "000" / "trial.json").read_text())
    stamp = (out / "trials" / "000" / "bundle" / "model.safetensors").stat().st_mtime_ns
    assert not (out / "pareto.md").exists()

    resumed: list[int] = []

    def counted(recipe, data, task, folder, watch):
        resumed.append(int(folder.name))
        return real(recipe, data, task, folder, watch)

    mp.setattr(trial, "run_chain", counted)
    try:
        result = slimfuse.compress(members, "mnist1d", out=out, trials=3, resume=True, **KW)
    finally:
        mp.undo()
    return {
        "out": out,
        "result": result,
        "first": first,
        "stamp": stamp,
        "calls": calls,
        "resumed": resumed,
    }


def test_resume_continues_without_redoing_trials(search):
    out, result = search["out"], search["result"]
    assert search["calls"] == [0, 1]
    # trial 0 finished before the interruption and is not run again; the interrupted one is
    assert 0 not in search["resumed"] and len(search["resumed"]) == 2
    assert (out / "trials" / "000" / "bundle" / "model.safetensors").stat().st_mtime_ns == (
        search["stamp"]
    )
    summary = json.loads((out / "compress.json").read_text())
    assert summary["counts"]["complete"] + summary["counts"]["stopped"] == 3
    numbers = [r["number"] for r in result.trials]
    assert 0 in numbers and search["first"]["variants"][0]["val_metric"] == next(
        r["val_metric"] for r in result.trials if r["number"] == 0
    )
    # the cheap post-training trials ran first, in the order they were queued
    assert [r["chain"][0]["mode"] for r in sorted(result.trials, key=lambda r: r["number"])][
        :1
    ] == ["dynamic"]


def test_time_budget_counts_across_resume(search, members, tmp_path):
    """The minutes of earlier runs count: a resume whose budget they already spent runs no
    trial, however many --trials are left."""
    import shutil

    import optuna

    out = tmp_path / "copy"
    shutil.copytree(search["out"], out)
    storage = f"sqlite:///{out / 'search.db'}"
    spent = optuna.load_study(study_name="compress", storage=storage).user_attrs["seconds"]
    assert spent > 0
    before = sorted(p.name for p in (out / "trials").iterdir())
    kw = {**KW, "budget_minutes": spent / 60}
    result = slimfuse.compress(members, "mnist1d", out=out, trials=10, resume=True, **kw)
    assert sorted(p.name for p in (out / "trials").iterdir()) == before
    assert result.chosen is not None


def test_chosen_within_budget_and_a_trial_over_budget_never_chosen(search):
    result = search["result"]
    cfg = CompressConfig(**KW)
    assert result.chosen is not None and result.chosen["drop"] <= cfg.max_drop + 1e-9
    rows = result.trials
    # a budget the best trial on the objective misses: it is never chosen
    fastest = min(rows, key=lambda r: r["latency_ms"])
    tight = CompressConfig(**{**KW, "max_drop": max(0.0, fastest["drop"] - 1e-6)})
    pick = choose(rows, tight)
    if fastest["drop"] > 0:
        assert pick is None or pick["number"] != fastest["number"]
    for r in rows:
        over = r["drop"] > tight.max_drop
        assert not (over and pick is not None and pick["number"] == r["number"])
    # nothing within a budget no trial met
    assert choose([{**r, "drop": 0.5} for r in rows], cfg) is None


def test_outputs_and_recipe_reproduce_the_chosen_model(search, tmp_path):
    out, result = search["out"], search["result"]
    for name in ("pareto.md", "model.onnx", "recipe.yaml", "metrics.json", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "chosen" / "slimfuse.json").is_file()
    assert "(chosen)" in (out / "pareto.md").read_text()
    rows = json.loads((out / "metrics.json").read_text())["stages"]
    chosen = next(r for r in rows if r["stage"] == "chosen" and r["engine"] == "onnxruntime")
    assert chosen["metric_value"] == result.test["chosen"]
    again = slimfuse.run(out / "recipe.yaml", tmp_path / "again", quiet=True)
    last = [r for r in again["stages"] if r["engine"] == "onnxruntime"][-1]
    assert last["metric_value"] == pytest.approx(chosen["metric_value"], abs=1e-12)
    assert last["onnx_bytes"] == chosen["onnx_bytes"]
    assert (tmp_path / "again" / "model.onnx").stat().st_size == (out / "model.onnx").stat().st_size


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--max-drop", "-0.1"], "--max-drop -0.1: expected a drop in [0, 1)"),
        (["--max-drop", "1"], "--max-drop 1"),
        (["--budget-minutes", "0"], "--budget-minutes 0"),
        (["--trials", "0"], "--trials 0"),
    ],
)
def test_bad_budgets_are_one_line(flags, expected, tmp_path, capsys):
    code = main(["compress", "--model", "x", "--data", "mnist1d", "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_no_validation_data_and_bad_input_are_one_line(members, tmp_path, capsys):
    path = tmp_path / "tiny.npz"  # one sample per class: nothing to split off for validation
    np.savez(path, X=np.random.default_rng(0).normal(size=(3, 40)).astype("float32"), y=[0, 1, 2])
    code = main(
        ["compress", "--model", members[0], "--data", str(path), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "validation" in err, err
    code = main(
        [
            "compress",
            "--model",
            members[0],
            "--data",
            "mnist1d",
            "--out",
            str(tmp_path / "o"),
            "--resume",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no search" in err, err
    code = main(
        [
            "compress",
            "--model",
            str(tmp_path / "nowhere"),
            "--data",
            "mnist1d",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err


def test_a_trained_chain_with_an_int8_ending_reproduces_with_slimfuse_run(search, tmp_path):
    """The search's own path for a chain that trains (a narrowed student, a channel pruning,
    then the int8 ending measured after the shared prefix) against ``slimfuse run``."""
    from slimfuse.autocompress.space import ending_stage
    from slimfuse.tasks import get_task

    out = search["out"]
    chain = [
        {
            "stage": "distill",
            "name": "student",
            "student": "mnist1d_cnn",
            "student_kwargs": {"channels": 4},
            "loss": "kd",
            "temperature": 4.0,
            "alpha": 0.9,
            "epochs": 2,
            "lr": 1e-2,
        },
        {"stage": "prune", "name": "pruned", "channels": 0.25, "epochs": 1, "recovery": "distill"},
    ]
    cfg = CompressConfig(**KW)
    kw = chain_kwargs((out / "reference").resolve())
    data, task = slimfuse.load_data("mnist1d"), get_task("classification")
    ctx = trial.run_chain(trial.chain_recipe(chain, **kw), data, task, tmp_path / "t", None)
    entry = ending_stage("static", cfg)
    model = trial.continue_chain(ctx, entry, 0)
    ours = slimfuse.measure(model, data, task, engines=["onnxruntime"], latency_batches=())[0]
    recipe = trial.chain_recipe([*chain, entry], export=True, **kw)
    (tmp_path / "r.yaml").write_text(trial.recipe_text(recipe))
    again = slimfuse.run(tmp_path / "r.yaml", tmp_path / "again", quiet=True)
    last = [r for r in again["stages"] if r["engine"] == "onnxruntime"][-1]
    assert last["stage"] == "int8"
    assert last["metric_value"] == ours["metric_value"]
    assert last["onnx_bytes"] == ours["onnx_bytes"]


def test_executorch_engine_ships_the_pte_it_measured(members, tmp_path):
    """--engine executorch: every figure is the .pte's (ExecuTorch, XNNPACK); the post-training
    move is PT2E int8 at export, and the recipe's export stage writes the same program."""
    pytest.importorskip("executorch")
    out = tmp_path / "pte"
    result = slimfuse.compress(
        members[0], "mnist1d", out=out, engine="executorch", trials=2, batch=1, **KW
    )
    assert result.chosen is not None and result.test["engine"] == "executorch"
    first = json.loads((out / "trials" / "000" / "trial.json").read_text())
    assert first["chain"] == [] and first["variants"][0]["chain"] == [
        {"stage": "export", "format": "pte", "int8": True}
    ]
    shipped = out / "model.pte"
    assert result.chosen["file_bytes"] == shipped.stat().st_size
    assert result.chosen["onnx_bytes"] is None and not (out / "model.onnx").exists()
    rows = json.loads((out / "metrics.json").read_text())["stages"]
    assert {r["engine"] for r in rows} == {"torch", "executorch"}
    assert "PTE KiB" in (out / "pareto.md").read_text()
    slimfuse.run(out / "recipe.yaml", tmp_path / "again", quiet=True)
    assert (tmp_path / "again" / "model.pte").read_bytes() == shipped.read_bytes()


def test_export_stage_int8_is_for_pte_only():
    from slimfuse.errors import ConfigError
    from slimfuse.pipeline.recipe import check_recipe, parse_recipe

    text = "model: x\ndata: mnist1d\nstages:\n  - stage: export\n    int8: true\n"
    with pytest.raises(ConfigError, match="int8 is for format pte"):
        check_recipe(parse_recipe(text), "recipe")


def test_download_objective_tries_sparsity_and_counts_deflated_bytes(members, tmp_path):
    """--objective download: a queued chain prunes 80% of the student's weights (unstructured,
    recovered by distillation); its file deflates far below its size (zeros), the figure that
    objective minimises."""
    import optuna

    from slimfuse.autocompress.space import Space, enqueued, students, suggest
    from slimfuse.autocompress.trial import chain_recipe, measure_val, run_chain
    from slimfuse.tasks import get_task

    cfg = CompressConfig(objective="download", epochs=2)
    space = Space(pool=tuple(students(("mnist1d_cnn", {"channels": 8}), False)))
    sparse = [p for p in enqueued(cfg, space) if p.get("sparsity")]
    assert len(sparse) == 1 and sparse[0]["student"] == space.pool[-1].label
    chain = suggest(optuna.trial.FixedTrial(sparse[0]), cfg, space)
    assert chain[-1]["stage"] == "prune" and chain[-1]["sparsity"] == 0.8
    recipe = chain_recipe(chain, **chain_kwargs(members[0]))
    data, task = slimfuse.load_data("mnist1d"), get_task("classification")
    ctx = run_chain(recipe, data, task, tmp_path / "run", None)
    dense = measure_val(ctx.models["student"], data, task, batch=1, threads=1, folder=None)
    got = measure_val(ctx.model, data, task, batch=1, threads=1, folder=tmp_path / "sparse")
    assert got["file_bytes"] == dense["file_bytes"]  # ONNX stores the zeros
    # a 6-channel CNN: the graph's own bytes are half its file, the weights deflate to a fifth
    assert got["packed_bytes"] < 0.7 * dense["packed_bytes"]
