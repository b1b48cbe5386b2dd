"""Per-layer targeting: names, regexes, types, ignore list, errors."""

from __future__ import annotations

import pytest
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.targeting import Targeting, select_modules


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 4, 3),
        nn.ReLU(),
        nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)),
        nn.Linear(4, 2),
    )


def test_defaults_pick_types_in_order() -> None:
    got = select_modules(_net(), default_types=(nn.Linear,))
    assert list(got) == ["2.0", "2.1", "3"]


def test_exact_regex_type_and_ignore() -> None:
    net = _net()
    assert list(select_modules(net, ["0", "3"])) == ["0", "3"]
    assert list(select_modules(net, "re:2\\..*")) == ["2.0", "2.1"]
    assert list(select_modules(net, [nn.Conv1d])) == ["0"]
    assert list(select_modules(net, "type:Linear", ignore=["re:2\\.1", "3"])) == ["2.0"]
    assert list(select_modules(net, "Linear")) == ["2.0", "2.1", "3"]  # bare class name


def test_selector_matching_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"layer selector 'fc9' matches no module of Sequential"):
        select_modules(_net(), ["fc9"])
    with pytest.raises(ConfigError, match="not a valid regex"):
        select_modules(_net(), ["re:("])


def test_targeting_round_trips() -> None:
    t = Targeting(targets=("re:2\\..*",), ignore=("2.1",))
    assert Targeting.from_dict(t.to_dict()) == t
    assert list(t.select(_net())) == ["2.0"]
