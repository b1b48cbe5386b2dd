"""Reference networks for the built-in data (inputs are ``(batch, features)`` tensors).

Each builder is registered in :data:`MODELS` by name; ``num_classes`` and the input size are
filled in from the data when not given (see :func:`slimfuse.models.source.build_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from slimfuse.registry import Registry

# Bounds a builder's arguments are checked against when they come from a file (a bundle, a
# recipe): sizes a real network of this family could have, so a file cannot ask for terabytes.
Width = Annotated[int, Field(ge=1, le=1 << 16)]
Widths = Annotated[Sequence[Width], Field(min_length=1, max_length=64)]
Classes = Annotated[int, Field(ge=1, le=1 << 20)]
Features = Annotated[int, Field(ge=1, le=1 << 24)]
Depth = Annotated[int, Field(ge=1, le=64)]

# Builders of other families are declared lazily so that importing the zoo stays light.
MODELS: Registry = Registry(
    "model",
    lazy={
        "hf_encoder": "slimfuse.models.hf:hf_encoder",
        "minilm": "slimfuse.models.hf:minilm",
        "fused": "slimfuse.fusion.build:build_fused",
    },
)


class MNIST1DCNN(nn.Module):
    """The convolutional baseline of the MNIST-1D paper (Greydanus, 2020): 3 convs + linear."""

    def __init__(self, num_classes: int = 10, in_length: int = 40, channels: int = 25) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        length = in_length
        for k in (5, 3, 3):
            length = (length + 2 - k) // 2 + 1
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        h = self.conv1(h).relu()
        h = self.conv2(h).relu()
        h = self.conv3(h).relu()
        return self.linear(h.flatten(1))


class MLP(nn.Module):
    """A plain ReLU MLP; ``hidden=(300, 100)`` is LeNet-300-100."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (100, 100)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class BasicBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv1(x)).relu()
        h = self.bn2(self.conv2(h))
        return (h + self.shortcut(x)).relu()


class ResNet1d(nn.Module):
    """A residual 1-D CNN with BatchNorm: a stem and ``len(widths)`` stages of basic blocks."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 128, 128),
        blocks_per_stage: int = 2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, widths[0], 5, padding=2, bias=False), nn.BatchNorm1d(widths[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks_per_stage):
                stages.append(BasicBlock1d(cin, w, stride=2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x.unsqueeze(1)))
        return self.fc(h.mean(dim=2))


class GRUClassifier(nn.Module):
    """A GRU over the sequence of scalar inputs, classifying from the last hidden state."""

    def __init__(self, num_classes: int = 10, hidden: int = 64, num_layers: int = 1) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.unsqueeze(-1))
        return self.fc(out[:, -1])


@MODELS.register("mnist1d_cnn")
def mnist1d_cnn(
    num_classes: Classes = 10,
    in_length: Annotated[int, Field(ge=13, le=1 << 20)] = 40,
    channels: Width = 25,
) -> nn.Module:
    return MNIST1DCNN(num_classes, in_length, channels)


@MODELS.register("mlp")
def mlp(
    in_features: Features, num_classes: Classes, hidden: Width | Widths = (100, 100)
) -> nn.Module:
    """Hidden layers of widths ``hidden`` (one number: one layer)."""
    return MLP(in_features, num_classes, (hidden,) if isinstance(hidden, int) else tuple(hidden))


@MODELS.register("lenet300")
def lenet300(in_features: Features, num_classes: Classes) -> nn.Module:
    return MLP(in_features, num_classes, (300, 100))


@MODELS.register("resnet1d")
def resnet1d(
    num_classes: Classes = 10, widths: Widths = (64, 128, 128), blocks_per_stage: Depth = 2
) -> nn.Module:
    return ResNet1d(num_classes, tuple(widths), blocks_per_stage)


@MODELS.register("gru")
def gru(num_classes: Classes = 10, hidden: Width = 64, num_layers: Depth = 1) -> nn.Module:
    return GRUClassifier(num_classes, hidden, num_layers)
