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
    assert "<table" in html and "<svg" in html
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


def test_the_demo_recipe_validates_members_then_their_fusion():
    from slimfuse.cli.demo import DEMO_RECIPE
    from slimfuse.pipeline.recipe import load_recipe

    recipe, _ = load_recipe(DEMO_RECIPE)  # then slimfuse compress: tests/compress/test_demo.py
    kinds = [s.stage for s in recipe.stages]
    assert kinds == ["train-members", "fuse"]


# -- sparsity kept through the stages ----------------------------------------------------------


def _bundle_zeros(folder) -> tuple[int, int]:
    """(zeros, weights) of the pruned layers (net.0, net.2) as a bundle holds them: float
    weights, weight-only layers dequantized, or an int8 graph's quantized initializers."""
    import onnx
    from onnx import numpy_helper

    import slimfuse

    model = slimfuse.load(folder)
    zeros = total = 0
    if getattr(model, "int8_graph", False):  # its int8 weights (symmetric: 0 is 0), any names
        for t in onnx.load_from_string(model.graph_bytes()).graph.initializer:
            q = numpy_helper.to_array(t)
            if q.dtype.kind in "iu" and q.dtype.itemsize == 1 and q.ndim >= 2:
                zeros, total = zeros + int((q == 0).sum()), total + q.size
        assert total == 64 * 40 + 10 * 64
        return zeros, total
    for layer in ("net.0", "net.2"):
        m = model.get_submodule(layer)
        w = m.dequantized() if hasattr(m, "dequantized") else m.weight
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros, total


def _sparse_recipe(student: str) -> str:
    return (
        "data: mnist1d\nseed: 0\nmeasure_engines: [torch]\nstages:\n"
        "  - {stage: train, name: dense, model: mlp, model_kwargs: {hidden: [64]}, epochs: 3}\n"
        "  - {stage: prune, name: pruned, sparsity: 0.9, epochs: 2, lr: 0.003}\n"
        f"  - {{stage: distill, name: distilled, teachers: [dense], student: {student}, "
        "epochs: 2, lr: 0.003}\n"
        "  - {stage: quantize, name: int4, model: distilled, mode: weight-only, bits: 4}\n"
        "  - {stage: quantize, name: int8, model: distilled, mode: static}\n"
    )


def test_a_pruned_model_stays_sparse_through_distill_and_quantize(tmp_path):
    """prune 90% -> distil the pruned model (its bundle as the student) -> int4 weight-only and
    static int8: every stage's bundle keeps the zeros."""
    out = tmp_path / "run"
    text = _sparse_recipe(str(out / "pruned"))
    stages = text.split("  - ")
    run_recipe("  - ".join(stages[:3]), out, quiet=True)  # the pruned bundle exists first
    run_recipe(text, out, quiet=True, resume=True)
    for stage in ("pruned", "distilled", "int4", "int8"):
        zeros, total = _bundle_zeros(out / stage)
        assert zeros / total >= 0.9 - 1e-3, f"{stage}: {zeros / total:.3f}"


def test_a_distill_stage_takes_an_earlier_stage_as_its_student(tmp_path):
    import slimfuse
    from slimfuse.models.source import spec_of

    run_recipe(_sparse_recipe("pruned"), tmp_path, quiet=True)
    pruned = slimfuse.load(tmp_path / "pruned")
    distilled = slimfuse.load(tmp_path / "distilled")
    assert not torch.equal(pruned.net[0].weight, distilled.net[0].weight)  # it trained on
    assert bool((distilled.net[0].weight[pruned.net[0].weight == 0] == 0).all())
    assert [e["kind"] for e in spec_of(distilled).edits] == ["sparse"]
    for stage in ("distilled", "int4", "int8"):
        zeros, total = _bundle_zeros(tmp_path / stage)
        assert zeros / total >= 0.9 - 1e-3, f"{stage}: {zeros / total:.3f}"


def test_merging_differently_pruned_models_keeps_the_recorded_sparsity(tmp_path):
    """Averaging two differently pruned models would refill zeros outside the training loop:
    the merge keeps every weight either pruned at zero, so the stage's sparsity check (which
    refuses a stage that lowers a recorded sparsity, see below) passes."""
    import slimfuse

    text = (
        "data: digits\nmeasure_engines: [torch]\nstages:\n"
        "  - {stage: train, name: dense, model: mlp, model_kwargs: {hidden: [32]}, epochs: 2}\n"
        "  - {stage: prune, name: a, model: dense, sparsity: 0.8, sparsity_schedule: oneshot}\n"
        "  - {stage: prune, name: b, model: dense, sparsity: 0.8, sparsity_schedule: oneshot, "
        "global_pruning: false}\n"
        "  - {stage: merge, name: soup, members: [a, b], method: uniform}\n"
    )
    run_recipe(text, tmp_path, quiet=True)
    a, b, soup = (slimfuse.load(tmp_path / n) for n in ("a", "b", "soup"))
    keys = ("net.0.weight", "net.2.weight")
    masks = {k: (a.state_dict()[k] == 0, b.state_dict()[k] == 0) for k in keys}
    assert any(not torch.equal(*masks[k]) for k in keys)  # pruned apart
    for k in keys:
        assert bool((soup.state_dict()[k][masks[k][0] | masks[k][1]] == 0).all())


def test_the_sparsity_check_sees_every_form_a_pruned_layer_takes():
    """Float weights (also a fused model's members'), weight-only layers and int8 graphs are
    counted; zeros lost in any of them are named."""
    import slimfuse
    from slimfuse.errors import ModelError
    from slimfuse.fusion import Mean
    from slimfuse.pipeline.checks import check_sparsity
    from slimfuse.pruning import Magnitude

    data = slimfuse.load_data("digits")
    torch.manual_seed(0)
    dense = slimfuse.build_model("mlp", data=data, hidden=[32])
    pruned = slimfuse.prune(dense, Magnitude(sparsity=0.8, sparsity_schedule="oneshot"), data)
    before = check_sparsity(pruned, "p", "prune")["sparsity"]
    assert list(before) == ["net.0.weight", "net.2.weight"]
    int4 = check_sparsity(slimfuse.quantize(pruned, {"mode": "weight-only", "bits": 4}), "q", "")
    assert all(int4["sparsity"][k] >= before[k] for k in before)
    int8 = check_sparsity(slimfuse.quantize(pruned, {"mode": "static"}, data), "q", "quantize")
    assert int8["checked"] >= 1 and min(int8["sparsity"].values()) >= 0.8 - 1e-3
    fused = slimfuse.fuse([("a", pruned), ("b", dense)], Mean())
    assert check_sparsity(fused, "f", "fuse")["checked"] == 2
    with torch.no_grad():
        fused.members["a"].net[2].weight.add_(0.01)
    lowered = r"^stage 'f' \(fuse\) lowered .* 1 layer: members\.a\.net\.2\.weight [\d.]+% -> 0\.0%"
    with pytest.raises(ModelError, match=lowered):
        check_sparsity(fused, "f", "fuse")
