"""Fusion fixtures: a few small, really trained MNIST-1D CNNs (session-scoped, a few seconds)."""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.training import TrainConfig


def small_cnn(data, seed: int, epochs: int = 3, channels: int = 12):
    torch.manual_seed(seed)  # its init too: the same members whatever ran before
    model = slimfuse.build_model("mnist1d_cnn", data=data, channels=channels)
    slimfuse.train(model, data, config=TrainConfig(epochs=epochs, seed=seed, quiet=True))
    return model


@pytest.fixture(scope="session")
def members(mnist1d):
    """Three small CNNs trained from different seeds."""
    return [(f"cnn{s}", small_cnn(mnist1d, s)) for s in range(3)]
