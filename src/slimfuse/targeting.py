"""Per-layer targeting: one syntax for choosing modules, shared by every technique.

A *selector* is one of:

- an exact module name, as in ``model.named_modules()``: ``"features.0"``, ``"encoder.layer.3"``
- a regular expression on module names, prefixed ``re:``: ``"re:.*attention\\.self\\.(query|key)"``
  (matched with :func:`re.fullmatch`)
- a module type: a class (``nn.Linear``) or its name as a string, prefixed ``type:``
  (``"type:Conv1d"``) or bare (``"Conv1d"``) when no module has that exact name

``targets`` says what to act on (``None``: every module of the technique's supported types);
``ignore`` removes modules from that set, with the same syntax. A selector that matches nothing is
an error (a typo must not silently act on nothing)::

    from slimfuse.targeting import Targeting, select_modules

    layers = select_modules(model, targets=["type:Linear"], ignore=["re:.*classifier"],
                            default_types=(nn.Linear, nn.Conv1d))
    # -> {"encoder.0": Linear(...), ...} in model order
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimfuse.errors import ConfigError

Selector = str | type
REGEX_PREFIX = "re:"
TYPE_PREFIX = "type:"


def _as_list(selectors: Selector | Iterable[Selector] | None) -> list[Selector]:
    if selectors is None:
        return []
    if isinstance(selectors, (str, type)):
        return [selectors]
    return list(selectors)


def _type_matches(module: nn.Module, type_name: str) -> bool:
    cls = type(module)
    return any(
        type_name in (c.__name__, f"{c.__module__}.{c.__qualname__}", f"nn.{c.__name__}")
        for c in cls.__mro__
    )


def matches(selector: Selector, name: str, module: nn.Module) -> bool:
    """Whether one selector picks the module called ``name``."""
    if isinstance(selector, type):
        return isinstance(module, selector)
    if not isinstance(selector, str) or not selector:
        raise ConfigError(
            f"layer selector {selector!r}: expected a module name, 're:<regex>', "
            "'type:<ClassName>' or a module class"
        )
    if selector.startswith(REGEX_PREFIX):
        return re.fullmatch(_compile(selector), name) is not None
    if selector.startswith(TYPE_PREFIX):
        return _type_matches(module, selector[len(TYPE_PREFIX) :])
    return name == selector


def _compile(selector: str) -> re.Pattern[str]:
    try:
        return re.compile(selector[len(REGEX_PREFIX) :])
    except re.error as exc:
        raise ConfigError(f"layer selector {selector!r}: not a valid regex ({exc})") from exc


def _resolve(selector: Selector, modules: dict[str, nn.Module]) -> Selector:
    """A bare string that names no module but names a module class means that type."""
    if (
        isinstance(selector, str)
        and not selector.startswith((REGEX_PREFIX, TYPE_PREFIX))
        and selector not in modules
        and any(_type_matches(m, selector) for m in modules.values())
    ):
        return TYPE_PREFIX + selector
    return selector


def select_modules(
    model: nn.Module,
    targets: Selector | Iterable[Selector] | None = None,
    ignore: Selector | Iterable[Selector] | None = None,
    *,
    default_types: Sequence[type] = (),
    what: str = "layer",
) -> dict[str, nn.Module]:
    """Modules of ``model`` picked by ``targets`` minus ``ignore``, by name in model order.

    With ``targets=None`` every module that is an instance of ``default_types`` is picked. A
    selector (in ``targets`` or ``ignore``) that matches no module raises :class:`ConfigError`.
    """
    modules = {n: m for n, m in model.named_modules() if n}
    tsel = [_resolve(s, modules) for s in _as_list(targets)]
    isel = [_resolve(s, modules) for s in _as_list(ignore)]
    for sel in (*tsel, *isel):
        if not any(matches(sel, n, m) for n, m in modules.items()):
            raise ConfigError(
                f"{what} selector {_show(sel)} matches no module of {type(model).__name__}; "
                f"module names look like {', '.join(list(modules)[:4]) or '(none)'}"
            )
    picked: dict[str, nn.Module] = {}
    for n, m in modules.items():
        if tsel:
            if not any(matches(s, n, m) for s in tsel):
                continue
        elif not (default_types and isinstance(m, tuple(default_types))):
            continue
        if any(matches(s, n, m) for s in isel):
            continue
        picked[n] = m
    return picked


def _show(selector: Selector) -> str:
    return selector.__name__ if isinstance(selector, type) else repr(selector)


@dataclass(frozen=True)
class Targeting:
    """``targets`` + ``ignore`` as a value that round-trips to a dict (recipes, bundles)."""

    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = field(default_factory=tuple)

    def select(
        self, model: nn.Module, default_types: Sequence[type] = (), what: str = "layer"
    ) -> dict[str, nn.Module]:
        return select_modules(
            model, self.targets, self.ignore, default_types=default_types, what=what
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets) if self.targets is not None else None,
            "ignore": list(self.ignore),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Targeting:
        t = d.get("targets")
        return cls(
            targets=tuple(_as_list(t)) if t is not None else None,
            ignore=tuple(_as_list(d.get("ignore"))),
        )
