"""Deep fusion: a trainable head over frozen members' logits or intermediate features.

``y = head(concat(g_1(x), ..., g_N(x)))`` where ``g_i`` is member ``i``'s logits (``on="logits"``),
the input of one of its layers (``on="features"``; by default its last ``nn.Linear``, i.e. the
penultimate features), or both. The members stay frozen; only the head trains, through the one
training loop :func:`slimfuse.training.train`. A logits head with no hidden layer starts as
the mean of the members' logits, so training starts from plain averaging.
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

import torch
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.common import FuseJob, Members, attach_spec
from slimfuse.fusion.config import FUSE_TRAINING, Head
from slimfuse.fusion.ensemble import FusionModule
from slimfuse.tasks import forward
from slimfuse.training import TrainConfig, train

SOURCES = ("logits", "features", "both")


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` in ``model`` (the classifier, whose input is the features)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise FusionError(
            f"{type(model).__name__} has no nn.Linear layer: expected one, or pass layer="
        )
    return names[-1]


class HeadFusion(FusionModule):
    """A head trained over frozen members; ``fit(data)`` trains it and returns self.

    Learned attributes: ``result_`` (the training summary) and ``best_val_``.
    """

    def __init__(
        self,
        members: Members,
        *,
        on: Literal["logits", "features", "both"] = "logits",
        layer: str | None = None,
        hidden: int = 0,
        dropout: float = 0.0,
        in_features: int | None = None,
        n_classes: int | None = None,
    ) -> None:
        super().__init__(members)
        if on not in SOURCES:
            raise FusionError(f"on={on!r}: expected one of {', '.join(SOURCES)}")
        if hidden < 0 or not 0.0 <= dropout < 1.0:
            raise FusionError(f"hidden={hidden}, dropout={dropout}: expected >= 0 and in [0, 1)")
        self.on, self.hidden, self.dropout = on, hidden, dropout
        self.layers: dict[str, str] = {}
        self._feats: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []
        self._capturing = False
        if on != "logits":
            for name, m in self.pairs:
                lname = layer or last_linear(m)
                target = dict(m.named_modules()).get(lname)
                if target is None:
                    raise FusionError(f"member {name!r} has no layer {lname!r}")
                self.layers[name] = lname
                self._hooks.append(target.register_forward_pre_hook(self._keeper(name)))
        self.layer = layer
        self.head: nn.Module | None = None
        if in_features is not None and n_classes is not None:
            self._make_head(in_features, n_classes)

    def _keeper(self, name: str) -> Any:
        owner = weakref.ref(self)  # the member must not keep this head alive

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            head = owner()
            if head is not None and head._capturing:  # only while this head runs its members
                head._feats[name] = args[0].flatten(1)

        return hook

    def remove_hooks(self) -> None:
        """Detach the feature hooks from the members (the head stops working)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _inputs(self, x: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._capturing = True
        try:
            outs = self.member_outputs(x, *args, **kwargs)
        finally:
            self._capturing = False
        parts: list[torch.Tensor] = []
        if self.on in ("features", "both"):
            parts += [self._feats[n] for n in self.names]
        if self.on in ("logits", "both"):
            parts += outs
        self._feats = {}
        return torch.cat(parts, dim=-1)

    def _make_head(self, in_features: int, n_classes: int) -> None:
        if self.hidden:
            self.head = nn.Sequential(
                nn.Linear(in_features, self.hidden),
                nn.ReLU(),
                nn.Dropout(self.dropout),
                nn.Linear(self.hidden, n_classes),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(in_features, n_classes))
        if self.on == "logits" and not self.hidden:  # start as the mean of the logits
            lin = self.head[-1]
            assert isinstance(lin, nn.Linear)
            with torch.no_grad():
                eye = torch.eye(n_classes) / len(self.names)
                lin.weight.copy_(eye.repeat(1, len(self.names)))
                lin.bias.zero_()
        self.in_features, self.n_classes = in_features, n_classes
        attach_spec(
            self,
            self.pairs,
            "head",
            on=self.on,
            layer=self.layer,
            hidden=self.hidden,
            dropout=self.dropout,
            in_features=in_features,
            n_classes=n_classes,
        )

    def fit(
        self, data: Data, *, config: TrainConfig | None = None, task: Any = "classification"
    ) -> HeadFusion:
        """Build the head for the members' output sizes and train it with the one loop."""
        with torch.no_grad():
            x = data.example_input(2)
            probe = self._inputs(x)
            outs = forward(self.members[self.names[0]], x)
        if self.head is None:
            self._make_head(int(probe.shape[-1]), int(outs.shape[-1]))
        cfg = config or TrainConfig(**FUSE_TRAINING, quiet=True)
        self.result_ = train(self, data, task, cfg, description="fusion head")
        self.best_val_ = self.result_.best_metric
        return self

    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.head is None:
            raise FusionError("this HeadFusion is not fitted: call fit(data) first")
        return self.head(self._inputs(x, *args, **kwargs))


def _build(members: list[tuple[str, nn.Module]], **kw: Any) -> nn.Module:
    return HeadFusion(members, **kw)


def fuse_head(pairs: list[tuple[str, nn.Module]], config: Head, job: FuseJob) -> HeadFusion:
    """The ``head`` handler of :func:`slimfuse.fuse`: the head trained on ``job.data``."""
    fused = HeadFusion(
        pairs, on=config.on, layer=config.layer, hidden=config.hidden, dropout=config.dropout
    )
    return fused.fit(job.needs_data("head"), config=job.train, task=job.task)
