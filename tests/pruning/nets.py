"""Small nets with the structures structured pruning must handle, and a tiny data set."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slimfuse.data import Data, from_arrays


class ConcatDepthwiseNet(nn.Module):
    """Residual add, channel concatenation, a depthwise conv and BatchNorm in one net."""

    def __init__(self, num_classes: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU()
        )
        self.a = nn.Conv1d(width, width, 3, padding=1)
        self.b = nn.Conv1d(width, width, 1)
        self.dw = nn.Conv1d(2 * width, 2 * width, 3, padding=1, groups=2 * width)
        self.bn = nn.BatchNorm1d(2 * width)
        self.res = nn.Conv1d(2 * width, 2 * width, 1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.unsqueeze(1))
        h = torch.cat([self.a(h).relu(), self.b(h).relu()], dim=1)
        h = self.bn(self.dw(h)).relu()
        h = h + self.res(h)
        return self.fc(h.mean(2))


def concat_net(num_classes: int = 3, width: int = 16) -> nn.Module:
    return ConcatDepthwiseNet(num_classes, width)


def tiny_data(n: int = 240, length: int = 12, classes: int = 3, seed: int = 0) -> Data:
    """A learnable toy problem: the class is which third of the signal has the bump."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, length)).astype(np.float32)
    third = length // classes
    for i, c in enumerate(y):
        x[i, c * third : (c + 1) * third] += 1.5
    return from_arrays(x, y, name="tiny", seed=seed)
