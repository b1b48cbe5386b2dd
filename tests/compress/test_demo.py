"""The demo's wiring (recipe -> compress -> one run folder) on a tiny recipe and a two-trial
search; the shipped settings are checked, not run (the full demo takes minutes)."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from slimfuse.cli.demo import DEMO_RECIPE, DEMO_SEARCH, run_demo, search_settings
from slimfuse.errors import ConfigError
from slimfuse.pipeline.recipe import load_recipe

TINY = (
    "data: mnist1d\nseed: 0\nstages:\n"
    "  - {stage: train-members, name: members, model: mnist1d_cnn, "
    "model_kwargs: {channels: 8}, n: 2, epochs: 3}\n"
    "  - {stage: fuse, name: ensemble, method: mean}\n"
)


def test_the_shipped_demo_is_members_fused_then_a_seeded_search_counted_in_trials():
    recipe, _ = load_recipe(DEMO_RECIPE)
    assert [s.stage for s in recipe.stages] == ["train-members", "fuse"]
    cfg = search_settings(DEMO_SEARCH)
    assert cfg.objective == "size" and cfg.max_drop <= 0.01
    # the trials bound the search, not the clock: the budget in minutes is far above it
    assert cfg.budget_minutes >= 30 and cfg.trials <= 20


def test_bad_search_settings_stop_before_anything_trains(tmp_path):
    with pytest.raises(ConfigError, match="max_drop"):
        run_demo(tmp_path / "run", recipe=TINY, search={"max_drop": 2})
    assert not (tmp_path / "run").exists()


def test_a_tiny_demo_writes_the_compressed_model_its_rows_and_report(tmp_path):
    out = tmp_path / "run"
    settings = {"max_drop": 0.05, "objective": "size", "trials": 2, "epochs": 2}
    result = run_demo(out, recipe=TINY, search=settings, quiet=True)
    stages = [r["stage"] for r in result["stages"] if r["engine"] == "onnxruntime"]
    assert stages == ["members", "ensemble", "compressed"]
    rows = json.loads((out / "metrics.json").read_text())["stages"]
    assert [r["stage"] for r in rows] == [r["stage"] for r in result["stages"]]
    found = result["search"]
    assert found.chosen is not None
    # the deployable file is the chosen model's, and it runs
    assert (out / "model.onnx").read_bytes() == (out / "compress" / "model.onnx").read_bytes()
    compressed = next(
        r for r in result["stages"] if r["stage"] == "compressed" and r["engine"] == "onnxruntime"
    )
    assert compressed["onnx_bytes"] == (out / "model.onnx").stat().st_size
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()
    assert (out / "compressed" / "slimfuse.json").is_file()
    assert "compressed" in (out / "report.html").read_text()
    assert result["cpu_seconds"] > 0
