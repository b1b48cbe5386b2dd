"""Shared fixtures: real data, small real models, one thread for stable, fast tests."""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.training import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist1d():
    return slimfuse.load_data("mnist1d")


@pytest.fixture(scope="session")
def digits():
    return slimfuse.load_data("digits")


@pytest.fixture(scope="session")
def trained_cnn(mnist1d):
    """A real MNIST-1D CNN trained for a few epochs (about 1 s), the same whatever runs first."""
    torch.manual_seed(0)
    model = slimfuse.build_model("mnist1d_cnn", data=mnist1d)
    slimfuse.train(model, mnist1d, config=TrainConfig(epochs=8, quiet=True))
    return model
