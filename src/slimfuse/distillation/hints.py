"""Feature (hint) distillation: capture named layers' outputs and adapt student widths (FitNets).

A hint pairs a student layer with a teacher layer (``{"conv2": "conv3"}``). :class:`FeatureTap`
records the outputs of named modules on every forward; :func:`make_adapter` builds the learned
regressor that maps the student feature to the teacher's shape when the widths differ:

- same shape: no adapter (identity, no parameters)
- ``(B, D)`` features: ``Linear(Ds, Dt)``
- ``(B, C, L)`` / ``(B, C, H, W)`` features whose channels differ: a 1x1 ``Conv1d`` / ``Conv2d``
  from ``Cs`` to ``Ct`` (then adaptive average pooling if the spatial sizes differ)
- ``(B, S, D)`` sequence features whose last dimension differs: ``Linear(Ds, Dt)`` per token
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ConfigError


def resolve_layer(model: nn.Module, name: str, role: str) -> nn.Module:
    """The submodule called ``name``; a one-line error listing close names when there is none."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    if not close:
        close = [n for n in names if name.split(".")[-1] in n][:4] or names[:4]
    raise ConfigError(
        f"{role} has no layer {name!r}; close names: {', '.join(close) or 'none'} "
        f"(expected a name from named_modules())"
    )


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]  # transformer layers return (hidden_states, ...)
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    raise ConfigError(
        f"a hint layer returned {type(out).__name__}; expected a tensor or a tuple starting with one"
    )


class FeatureTap:
    """Forward hooks that keep the latest output of each named module in :attr:`features`."""

    def __init__(self, model: nn.Module, names: Iterable[str], role: str) -> None:
        self.model = model
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            module = resolve_layer(model, name, role)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.features[name] = _first_tensor(output)

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _PoolTo(nn.Module):
    """1x1 convolution then adaptive average pooling to the teacher's spatial size."""

    def __init__(self, conv: nn.Module, size: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = conv
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if len(self.size) == 1:
            return nn.functional.adaptive_avg_pool1d(h, self.size[0])
        return nn.functional.adaptive_avg_pool2d(h, self.size)


def make_adapter(
    student_shape: torch.Size | tuple[int, ...],
    teacher_shape: torch.Size | tuple[int, ...],
    pair: str = "",
) -> nn.Module:
    """The learned regressor mapping a student feature of ``student_shape`` to ``teacher_shape``."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    where = f" for hint {pair}" if pair else ""
    if s == t:
        return nn.Identity()
    if len(s) != len(t) or s[0] != t[0]:
        raise ConfigError(
            f"student feature {s} and teacher feature {t}{where} cannot be matched; "
            "expected the same rank and batch size"
        )
    if len(s) == 2:
        return nn.Linear(s[1], t[1])
    if len(s) == 3 and s[1] == t[1] and s[2] != t[2]:  # (B, S, D) tokens: adapt the width
        return nn.Linear(s[2], t[2])
    if len(s) in (3, 4):
        conv_cls = nn.Conv1d if len(s) == 3 else nn.Conv2d
        conv = conv_cls(s[1], t[1], kernel_size=1)
        return conv if s[2:] == t[2:] else _PoolTo(conv, t[2:])
    raise ConfigError(
        f"student feature {s} and teacher feature {t}{where}: no adapter for rank {len(s)}; "
        "expected features of rank 2, 3 or 4"
    )
