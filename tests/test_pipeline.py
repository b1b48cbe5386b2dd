from __future__ import annotations

import json

import pytest
import torch

from slimfuse.errors import ConfigError
from slimfuse.pipeline.recipe import parse_recipe
from slimfuse.pipeline.run import run_recipe

RECIPE = """
data: digits
seed: 0
stages:
  - stage: train
    name: mlp
    model: mlp
    model_kwargs: {hidden: [32]}
    epochs: 2
  - stage: export
"""


def test_recipe_runs_and_writes_bundles_metrics_and_report(tmp_path):
    result = run_recipe(RECIPE, tmp_path, quiet=True)
    assert [r["engine"] for r in result["stages"]] == ["torch", "onnxruntime"]
    bundle = tmp_path / "mlp"
    names = {p.name for p in bundle.iterdir()}
    assert {
        "model.safetensors",
        "slimfuse.json",
        "model.onnx",
        "metrics.json",
        "recipe.yaml",
        "report.html",
    } <= names
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "report.html").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["stages"][0]["metric_value"] > 0.5
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64" in html
    meta = json.loads((bundle / "slimfuse.json").read_text())
    assert meta["model"]["lineage"][-1]["stage"] == "train"


def test_resume_skips_finished_stages(tmp_path):
    run_recipe(RECIPE, tmp_path, quiet=True)
    before = (tmp_path / "mlp" / "model.safetensors").stat().st_mtime_ns
    run_recipe(RECIPE, tmp_path, quiet=True, resume=True)
    assert (tmp_path / "mlp" / "model.safetensors").stat().st_mtime_ns == before


def test_a_resumed_recipe_builds_the_same_models_as_an_uninterrupted_one(tmp_path):
    """A stage that builds a model (here a fresh MLP) starts from the recipe's seed, whatever
    the stages before it drew: resuming after the first stage gives the same weights."""
    from safetensors.torch import load_file

    stages = (
        "data: digits\nmeasure_engines: [torch]\nstages:\n"
        "  - {stage: train, name: a, model: mlp, model_kwargs: {hidden: [16]}, epochs: 2}\n"
    )
    second = "  - {stage: train, name: b, model: mlp, model_kwargs: {hidden: [8]}, epochs: 1}\n"
    run_recipe(stages + second, tmp_path / "whole", quiet=True)
    run_recipe(stages, tmp_path / "split", quiet=True)  # interrupted after the first stage
    run_recipe(stages + second, tmp_path / "split", quiet=True, resume=True)
    whole = load_file(tmp_path / "whole" / "b" / "model.safetensors")
    split = load_file(tmp_path / "split" / "b" / "model.safetensors")
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)


def test_an_error_in_a_stage_names_it_and_keeps_the_stages_before(tmp_path):
    from slimfuse.errors import FusionError

    text = (
        "data: digits\nmeasure_engines: [torch]\nstages:\n"
        "  - {stage: train-members, name: two, model: mlp, n: 2, epochs: 1}\n"
        "  - {stage: fuse, name: mix, method: mean, weights: [1, 2, 3]}\n"
    )
    with pytest.raises(FusionError, match=r"^stage 'mix' \(fuse\): 3 weights for 2 members"):
        run_recipe(text, tmp_path, quiet=True)
    assert (tmp_path / "two" / "slimfuse.json").is_file()  # --resume starts after it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages: [{stage: trian}]", r"unknown stage 'trian'.*did you mean train"),
        (
            "stages: [{stage: train, epoks: 3}]",
            r"stage 'train' \(train\): epoks 3: unknown setting; expected some of",
        ),
        (
            "stages: [{stage: train, epochs: many}]",
            r"epochs 'many': Input should be a valid integer",
        ),
        ("stages: []", r"stages: List should have at least 1 item"),
        (
            "data: mnist1d\nstages: [{stage: train}]\ncolour: red",
            r"colour: Extra inputs are not permitted",
        ),
        ("stages: [{stage: train}]\n  bad: [", r"not valid YAML"),
        ("!!python/object/apply:os.system ['echo pwned']", r"not valid YAML"),
        ("task: clustering\nstages: [{stage: train}]", r"unknown task 'clustering'"),
        # options the stage's kind would not read, found before the first stage runs
        (
            "stages: [{stage: train}, {stage: quantize, mode: dynamic, calibration: entropy}]",
            r"stage 'quantize' \(quantize\): calibration does not apply to mode 'dynamic'; it is for static, qat",
        ),
        (
            "stages: [{stage: train}, {stage: prune, sparsity: 0.5, importance: taylor}]",
            r"stage 'prune' \(prune\): importance does not apply to method 'magnitude'; it is for channels, transformer",
        ),
        ("stages: [{stage: prune}]", r"stage 'prune' \(prune\): give exactly one of sparsity"),
        (
            "stages: [{stage: fuse, method: mean, cv: 5}]",
            r"stage 'fuse' \(fuse\): cv does not apply to method 'mean'; it is for weighted, stack",
        ),
        ("stages: [{stage: merge, method: ties}]", r"stage 'merge' \(merge\): ties needs parent"),
        (
            "stages: [{stage: merge, density: 0.5}]",
            r"density does not apply to method 'greedy'; it is for ties",
        ),
        (
            "stages: [{stage: distill, student: mlp, loss: mse, temperature: 2}]",
            r"stage 'distill' \(distill\): temperature does not apply to loss 'mse'; it is for kd, hint",
        ),
        (
            "stages: [{stage: distill, student: mlp, teachers: [t], ensemble_space: logits}]",
            r"ensemble_space does not apply to one teacher; it is for an ensemble of teachers",
        ),
    ],
)
def test_bad_recipes_are_refused_before_anything_runs(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(text)


def test_a_recipe_object_gets_the_same_checks_before_anything_runs(tmp_path):
    from slimfuse.pipeline.recipe import Recipe

    recipe = Recipe(data="digits", stages=[{"stage": "prune", "channels": 0.5, "sparsity": 0.5}])
    with pytest.raises(ConfigError, match=r"stage 'prune' \(prune\): give exactly one of"):
        run_recipe(recipe, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_the_demo_recipe_validates_and_bridges_every_family():
    from slimfuse.cli.main import DEMO_RECIPE
    from slimfuse.pipeline.recipe import load_recipe

    recipe, _ = load_recipe(DEMO_RECIPE)
    kinds = [s.stage for s in recipe.stages]
    assert kinds == ["train-members", "fuse", "distill", "prune", "quantize", "export"]
