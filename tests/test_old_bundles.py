"""Bundles written by an earlier slimfuse (0.1, before the typed configs and code trust) still
load and give the same outputs. tests/fixtures/bundles_0_1/ was written by that version: a CNN,
its static int8 graph, int4 weight-only, channel-pruned and 80%-sparse copies, and a fused model
of the CNN and the pruned one; outputs.pt holds their outputs on eight inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import slimfuse

OLD = Path(__file__).parent / "fixtures" / "bundles_0_1"


@pytest.mark.parametrize("name", ["cnn", "int8", "int4", "pruned", "sparse", "fused"])
def test_an_old_bundle_loads_and_gives_the_same_outputs(name):
    saved = torch.load(OLD / "outputs.pt", weights_only=True)
    model = slimfuse.load(OLD / name)
    got = model(saved["x"])
    if name == "int8":  # ONNX Runtime's int8 kernels may round differently on another CPU
        torch.testing.assert_close(got, saved[name], atol=0.05, rtol=0.01)
    else:
        assert torch.equal(got, saved[name])
