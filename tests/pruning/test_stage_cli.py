"""The prune stage in a recipe, and the ``slimfuse prune`` command."""

from __future__ import annotations

import numpy as np
import pytest

import slimfuse
from slimfuse.config import TrainConfig
from slimfuse.errors import ConfigError
from slimfuse.pruning.config import Channels
from tests.helpers import run_cli
from tests.pruning.nets import tiny_data

RECIPE = """
data: {data}
seed: 0
measure_engines: [torch]
stages:
  - stage: train
    name: dense
    model: resnet1d
    model_kwargs: {{widths: [16, 32], blocks_per_stage: 1}}
    epochs: 2
  - stage: prune
    name: slim
    model: dense
    channels: 0.5
    epochs: 1
  - stage: prune
    name: sparse
    model: dense
    sparsity: 0.8
    epochs: 2
"""


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    d = tiny_data()
    x, y = d.arrays("train")
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, X=x, y=y)
    return path


@pytest.mark.filterwarnings(
    "ignore:.*the validation split has:slimfuse.errors.SlimfuseWarning"
)  # tiny data
def test_recipe_with_prune_stages(npz, tmp_path) -> None:
    result = slimfuse.run(RECIPE.format(data=npz), tmp_path / "run", quiet=True)
    rows = {r["stage"]: r for r in result["stages"]}
    assert rows["slim"]["params"] < 0.4 * rows["dense"]["params"]
    assert rows["slim"]["macs"] < 0.4 * rows["dense"]["macs"]
    assert rows["sparse"]["nonzero_params"] < 0.3 * rows["sparse"]["params"]
    assert rows["sparse"]["size_bytes"] < 0.5 * rows["dense"]["size_bytes"]
    dense = slimfuse.load(tmp_path / "run" / "dense")
    assert dense.stem[0].out_channels == 16  # the earlier stage's model was not touched
    assert slimfuse.load(tmp_path / "run" / "slim").stem[0].out_channels == 8


def test_stage_config_is_validated(npz, tmp_path) -> None:
    bad = RECIPE.format(data=npz).replace("channels: 0.5", "channels: 1.5")
    with pytest.raises(Exception, match="channels"):
        slimfuse.run(bad, tmp_path / "bad", quiet=True)


def test_cli_prune(npz, tmp_path) -> None:
    out = run_cli(
        "train",
        "--model",
        "mlp",
        "--data",
        str(npz),
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "m"),
        "--quiet",
    )
    assert out.returncode == 0, out.stderr
    out = run_cli(
        "prune",
        "--model",
        str(tmp_path / "m"),
        "--data",
        str(npz),
        "--channels",
        "0.5",
        "--importance",
        "l2",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "p"),
        "--quiet",
    )
    assert out.returncode == 0, out.stderr
    assert "stored" in out.stdout
    assert slimfuse.load(tmp_path / "p").net[0].out_features == 50
    bad = run_cli(
        "prune",
        "--model",
        str(tmp_path / "m"),
        "--data",
        str(npz),
        "--sparsity",
        "1.2",
        "--sparsity-schedule",
        "oneshot",
        "--out",
        str(tmp_path / "q"),
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip() == "slimfuse prune: error: --sparsity 1.2: Input should be less than 1"
    )


def test_prune_needs_data_to_fine_tune() -> None:
    with pytest.raises(ConfigError, match="fine-tuning after pruning needs data"):
        slimfuse.prune(
            slimfuse.build_model("mlp", in_features=4, num_classes=2),
            Channels(channels=0.5),
            None,
            train=TrainConfig(epochs=1),
        )
