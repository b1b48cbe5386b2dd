"""The factorize stage in a recipe, and the ``slimfuse factorize`` command."""

from __future__ import annotations

import pytest

import slimfuse
from slimfuse.lowrank import LowRankLinear
from tests.helpers import run_cli

RECIPE = """
data: digits
seed: 0
measure_engines: [torch]
stages:
  - stage: train
    name: dense
    model: mlp
    model_kwargs: {hidden: [96, 64]}
    epochs: 2
  - stage: factorize
    name: small
    model: dense
    budget: 0.5
    calibration_samples: 64
    epochs: 1
    recovery: distill
  - stage: export
"""


def test_recipe_with_a_factorize_stage(tmp_path) -> None:
    result = slimfuse.run(RECIPE, tmp_path / "run", quiet=True)
    rows = {r["stage"]: r for r in result["stages"]}
    assert rows["small"]["macs"] <= 0.5 * rows["dense"]["macs"]
    assert rows["small"]["metric_value"] > 0.5
    small = slimfuse.load(tmp_path / "run" / "small")
    assert any(isinstance(m, LowRankLinear) for m in small.modules())
    assert (tmp_path / "run" / "model.onnx").is_file()


def test_recipe_refuses_a_bad_stage(tmp_path) -> None:
    bad = RECIPE.replace("budget: 0.5", "budget: 0.5\n    energy: 0.9")
    with pytest.raises(slimfuse.errors.ConfigError, match="give exactly one of energy"):
        slimfuse.run(bad, tmp_path / "bad", quiet=True)


def test_cli(tmp_path) -> None:
    out = tmp_path / "f"
    done = run_cli(
        "factorize", "--model", "mlp", "--kw", "hidden=[96, 1]", "--data", "digits",
        "--ratio", "0.5", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rank    19 of 64: net.0 (0.495 of its weights)" in done.stdout
    assert "left alone: net.2 (Linear): no rank makes it smaller" in done.stdout
    assert isinstance(slimfuse.load(out).net[0], LowRankLinear)
    for flags, msg in [
        (["--energy", "1.5"], "--energy 1.5: expected a fraction in (0, 1]"),
        (["--ratio", "0"], "--ratio 0: expected a fraction in (0, 1]"),
        (["--energy", "0.9", "--whiten"], "--whiten does not apply to --method 'energy'"),
    ]:
        bad = run_cli("lowrank", "--model", "mlp", "--data", "digits", *flags, "--out", str(out))
        assert bad.returncode == 2, bad.stderr
        assert msg in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
