from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import slimfuse
from slimfuse.errors import ModelError
from slimfuse.models import bundle


@pytest.mark.parametrize("name", ["mnist1d_cnn", "mlp", "resnet1d", "gru"])
def test_save_load_roundtrip_is_identical(name, mnist1d, tmp_path):
    model = slimfuse.build_model(name, data=mnist1d).eval()
    with torch.no_grad():  # perturb BN running stats too, so buffers must round-trip
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(0.1)
    folder = slimfuse.save(model, tmp_path / name)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "slimfuse.json"}
    meta = json.loads((folder / "slimfuse.json").read_text())
    assert meta["model"]["source"] == name and "torch" in meta["versions"]
    loaded = slimfuse.load(folder)
    x = mnist1d.example_input(16)
    assert torch.equal(loaded(x), model(x))


def test_bundle_reloads_in_a_fresh_process(trained_cnn, mnist1d, tmp_path):
    slimfuse.save(trained_cnn, tmp_path / "b")
    x = mnist1d.example_input(8)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, slimfuse\n"
        "m = slimfuse.load(sys.argv[1])\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "torch.save(m(x).detach(), sys.argv[3])\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path / "b"),
            str(tmp_path / "x.pt"),
            str(tmp_path / "y.pt"),
        ],
        check=True,
    )
    y = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.equal(y, trained_cnn(x))


def test_a_failed_save_leaves_the_old_bundle_intact(trained_cnn, tmp_path, monkeypatch):
    folder = slimfuse.save(trained_cnn, tmp_path / "b")
    before = (folder / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("slimfuse.models.bundle.serialize", boom)
    with pytest.raises(OSError, match="No space left"):
        slimfuse.save(trained_cnn, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folder left behind


def test_model_without_source_is_refused(tmp_path):
    with pytest.raises(ModelError, match="has no recorded source"):
        slimfuse.save(torch.nn.Linear(2, 2), tmp_path / "x")


def test_load_rejects_a_non_bundle(tmp_path):
    with pytest.raises(ModelError, match="is not a bundle"):
        bundle.load(tmp_path)


def test_a_bundle_records_the_task_it_was_measured_for(tmp_path):
    from slimfuse.models.source import task_of

    model = slimfuse.build_model("mlp", in_features=4, num_classes=1)
    back = slimfuse.load(slimfuse.save(model, tmp_path / "r", metrics={"task": "regression"}))
    assert task_of(back) == "regression"
    assert task_of(slimfuse.load(slimfuse.save(model, tmp_path / "plain"))) == "classification"
