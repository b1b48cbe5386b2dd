"""One config language: typed, frozen configs that validate recipes, make CLI flags and go into
bundles' lineage.

Every method's settings are a :class:`Config`, a frozen pydantic model whose fields carry their
type, bounds, default and a one-line description. A verb's methods form a :class:`Family`, told
apart by one key (``QuantConfig``: ``mode`` is ``dynamic``, ``static``, ``weight-only`` or
``qat``). An option a method does not read cannot be written: its config has no such field, and
the family says which methods have it::

    from slimfuse.quantization import Static
    cfg = Static(calibration="entropy")              # or QUANT.parse({"mode": "static", ...})
    QUANT.parse({"mode": "dynamic", "calibration": "entropy"})
    # ConfigError: calibration does not apply to mode 'dynamic'; it is for static, qat

The same classes make the command line (:func:`add_flags`, :func:`given`): one flag per field,
``--calibration-batches`` for ``calibration_batches``, with the field's description, choices and
default in its help. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from slimfuse.errors import ConfigError, validation_error

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config: frozen, unknown keys refused, values validated on construction."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, protected_namespaces=(), validate_default=False
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_line(exc, type(self), values)) from exc

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (what a recipe or ``slimfuse.json`` holds)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls: type[C], values: Any, where: str = "") -> C:
        """Validate ``values`` (a recipe's keys, a stored config) into this config; one line on
        error, naming the key as ``where.key``."""
        return validate(cls, values, where)

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes``, validated like a new config."""
        return type(self).from_dict({**self.model_dump(), **changes})


def _line(
    exc: ValidationError, cls: type[BaseModel], values: Any, where: str = "", flags: bool = False
) -> str:
    """``where.key value: what is wrong`` (``--key value: ...`` for flags) for the most specific
    error of a validation."""
    key, msg = validation_error(exc)
    if msg == "Extra inputs are not permitted":
        msg = f"unknown setting; expected some of {', '.join(cls.model_fields)}"
    top = key.split(".")[0]
    name = (flag_name(key) if key else "") if flags else ".".join(p for p in (where, key) if p)
    if isinstance(values, dict) and top in values and "." not in key:
        value = values[top]
        shown = " ".join(map(str, value)) if flags and isinstance(value, list) else value
        name += f" {shown}" if flags else f" {value!r}"
    return f"{name}: {msg}" if name else msg


def validate(cls: type[C], values: Any, where: str = "", *, flags: bool = False) -> C:
    """``values`` as a ``cls``; a ConfigError names the key (``flags``: as ``--flag value``)."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"{where or cls.__name__}: expected a mapping, got {type(values).__name__}"
        )
    try:
        return cls.model_validate(values)
    except (ValidationError, ConfigError) as exc:
        # a model with an __init__ (Config's) is validated through it: its error has the cause
        cause = exc if isinstance(exc, ValidationError) else exc.__cause__
        if not isinstance(cause, ValidationError):
            raise
        raise ConfigError(_line(cause, cls, values, where, flags)) from cause


# -- the one training loop's settings ----------------------------------------------------------


class TrainConfig(Config):
    """The one training loop's settings (every stage that trains reads these)."""

    epochs: int = Field(30, ge=0, description="passes over the training data")
    batch_size: int = Field(100, ge=1, description="samples per optimizer step")
    lr: float = Field(1e-2, gt=0, allow_inf_nan=False, description="learning rate at the start")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="the optimizer")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD's momentum")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="the learning rate over the run"
    )
    warmup_steps: int = Field(0, ge=0, description="steps of linear learning-rate warm-up")
    patience: int | None = Field(
        None, ge=1, description="early stopping: epochs in a row without a better one (see best_by)"
    )
    restore_best: bool = Field(
        True, description="end with the weights of the best validation epoch (else the last)"
    )
    best_by: Literal["metric", "loss"] = Field(
        "metric",
        description="what makes an epoch the best (restore_best, patience): the validation "
        "metric, ties broken by the lower validation loss, then the later epoch; or the "
        "validation loss alone",
    )
    max_grad_norm: float | None = Field(None, gt=0, description="clip the gradients' norm")
    group_by_length: bool = Field(
        False, description="token data: batch texts of similar length together (less padding)"
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="where training runs: auto (cuda if available, else mps, else cpu), cpu, "
        "cuda, cuda:N or mps; the trained model comes back on the CPU, and deployed models are "
        "measured on the CPU runtime they target",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="training arithmetic: fp32, or bf16 / fp16 autocast (fp16 with loss "
        "scaling; a GPU only)",
    )
    seed: int = Field(0, description="seed for initialisation, shuffling and dropout")
    quiet: bool = Field(False, description="no progress bars or per-epoch lines")


# the training settings a command's flags and a recipe stage's keys set (seed and quiet are the
# command's and the recipe's own)
TRAIN_KEYS = tuple(k for k in TrainConfig.model_fields if k not in ("seed", "quiet"))


class Family:
    """The configs of one verb's methods, told apart by the value of one key (``key``).

    ``QuantConfig = Family("QuantConfig", "mode", [Dynamic, Static, ...])``: every class has a
    ``Literal`` field named ``key`` whose one value names the method. :meth:`parse` (or calling
    the family: ``QuantConfig(mode="static", calibration="entropy")``) picks the class and
    refuses a key it does not have, naming the methods that do. ``trains`` maps the methods
    that train with the one loop to their training defaults (QAT: 5 epochs at lr 1e-3): only
    those read :class:`TrainConfig`'s keys.
    """

    def __init__(
        self,
        name: str,
        key: str,
        variants: Sequence[type[Config]],
        *,
        default: str | None = None,
        trains: dict[str, dict[str, Any]] | None = None,
    ):
        self.__name__ = self.name = name
        self.key = key
        self.variants: dict[str, type[Config]] = {}
        for cls in variants:
            (kind,) = get_args(cls.model_fields[key].annotation)
            self.variants[kind] = cls
        self.default = default
        self.trains = dict(trains or {})

    def __repr__(self) -> str:
        return f"{self.name}({' | '.join(c.__name__ for c in self.variants.values())})"

    def __call__(self, **values: Any) -> Config:
        return self.parse(values)

    def __contains__(self, config: object) -> bool:
        return type(config) in self.variants.values()

    def names(self) -> list[str]:
        return list(self.variants)

    def readers(self, field: str) -> list[str]:
        """The methods whose config has ``field`` (training keys: the methods that train)."""
        if field in TRAIN_KEYS and field not in self.fields():
            return list(self.trains)
        return [n for n, cls in self.variants.items() if field in cls.model_fields]

    def fields(self) -> dict[str, FieldInfo]:
        """Every field of every method (the first method's definition of a shared name)."""
        out: dict[str, FieldInfo] = {}
        for cls in self.variants.values():
            for name, info in cls.model_fields.items():
                out.setdefault(name, info)
        return out

    def kind_of(self, values: dict[str, Any], where: str = "", flags: bool = False) -> str:
        kind = values.get(self.key, self.default)
        if kind not in self.variants:
            name = flag_name(self.key) if flags else ".".join(p for p in (where, self.key) if p)
            raise ConfigError(f"{name} {kind!r}: expected one of {', '.join(self.variants)}")
        return str(kind)

    def check_keys(self, kind: str, keys: Iterable[str], flags: bool = False) -> None:
        """Refuse a key the method ``kind`` has no field for, saying which methods read it."""
        cls = self.variants[kind]
        for key in keys:
            if key in cls.model_fields or (key in TRAIN_KEYS and kind in self.trains):
                continue
            readers = self.readers(key)
            name = flag_name(key) if flags else key
            method = f"{flag_name(self.key) if flags else self.key} {kind!r}"
            if readers:
                raise ConfigError(
                    f"{name} does not apply to {method}; it is for {', '.join(readers)}"
                )
            own = [k for k in cls.model_fields if k != self.key]
            raise ConfigError(
                f"unknown setting {name} for {method}; "
                + (f"expected some of {', '.join(own)}" if own else "it has no settings")
            )

    def parse(self, values: Any, where: str = "", *, flags: bool = False) -> Config:
        """The config ``values`` describe (a mapping with ``key``, or a config already)."""
        if isinstance(values, Config):
            if values not in self:
                raise ConfigError(
                    f"{type(values).__name__} is not a {self.name} ({', '.join(self.variants)})"
                )
            return values
        config, train = self.split(values, where, flags=flags)
        if train:
            raise ConfigError(
                f"{', '.join(train)}: training settings go in a TrainConfig, not the {self.name}"
            )
        return config

    def split(
        self, values: Any, where: str = "", *, flags: bool = False
    ) -> tuple[Config, dict[str, Any]]:
        """A flat mapping (a recipe stage's keys, the given flags) as the method's config and
        the training keys it was given (only a method that trains reads them)."""
        if not isinstance(values, dict):
            raise ConfigError(f"{where or self.name}: expected a mapping with {self.key}")
        kind = self.kind_of(values, where, flags)
        self.check_keys(kind, values, flags)
        cls = self.variants[kind]
        own = {k: v for k, v in values.items() if k in cls.model_fields}
        train = {k: v for k, v in values.items() if k not in cls.model_fields}
        return validate(cls, {**own, self.key: kind}, where, flags=flags), train

    def training(
        self, config: Config, given: dict[str, Any], *, flags: bool = False, **fixed: Any
    ) -> TrainConfig | None:
        """The :class:`TrainConfig` of a method that trains: its defaults, then ``given``."""
        kind = getattr(config, self.key)
        if kind not in self.trains:
            return None
        return validate(TrainConfig, {**self.trains[kind], **given, **fixed}, flags=flags)

    def add_flags(self, parser: Any, *, help: str = "", train: bool = True) -> None:
        """``--KEY`` (the method) and one flag per field of every method, each saying which
        methods read it; ``train``: the training flags too (for the methods that train)."""
        parser.add_argument(
            flag_name(self.key),
            choices=self.names(),
            default=None,
            help=f"{help} (default: {self.default})" if help else f"(default: {self.default})",
        )
        fields = {n: f for n, f in self.fields().items() if n != self.key}
        add_flags(parser, fields, readers=self.readers, group=f"{self.key} settings")
        if train and self.trains:
            defaults = next(iter(self.trains.values()))
            add_flags(
                parser,
                TrainConfig.model_fields,
                skip=("seed", "quiet"),
                readers=lambda _: list(self.trains),
                group=f"training ({', '.join(self.trains)})",
                defaults=defaults,
            )

    def from_flags(
        self, args: argparse.Namespace, **fixed: Any
    ) -> tuple[Config, TrainConfig | None]:
        """The method's config and its training config from the flags the user set (``fixed``:
        training values every command sets, such as ``seed`` and ``quiet``)."""
        values = given(args, [self.key, *self.fields(), *(TRAIN_KEYS if self.trains else ())])
        values.setdefault(self.key, self.default)
        config, train = self.split(values, flags=True)
        return config, self.training(config, train, flags=True, **fixed)


# -- the command line ------------------------------------------------------------------------


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _strip_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return annotation


def _choices(annotation: Any) -> list[Any] | None:
    annotation = _strip_none(annotation)
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return None


def _is_bool(annotation: Any) -> bool:
    return _strip_none(annotation) is bool


def _is_list(annotation: Any) -> bool:
    return get_origin(_strip_none(annotation)) in (list, tuple, Sequence, typing.Sequence)


def _is_dict(annotation: Any) -> bool:
    return get_origin(_strip_none(annotation)) is dict


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, (list, tuple, dict)) and not default:
        return "none"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default))
    return str(default)


def help_text(info: FieldInfo, readers: Sequence[str] | None = None, default: Any = ...) -> str:
    """A flag's help: the field's description, what reads it, its default (``default``: the
    command's own, where it differs from the field's)."""
    text = info.description or ""
    if readers:
        text += f" [{', '.join(readers)}]"
    shown = _default_text(info) if default is ... else _default_text(FieldInfo(default=default))
    return f"{text} (default: {shown})".strip().replace("%", "%%")


_METAVARS = {int: "N", float: "X", str: "TEXT"}


class _KeyValue(argparse.Action):
    """``--flag KEY=VALUE`` (repeatable) into a dict; values read as YAML scalars."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        import yaml

        out = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option} {item!r}: expected KEY=VALUE")
            out[key] = yaml.safe_load(value)
        setattr(namespace, self.dest, out)


def add_flags(
    parser: argparse.ArgumentParser | Any,
    fields: dict[str, FieldInfo],
    *,
    readers: Any = None,
    skip: Iterable[str] = (),
    group: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """One flag per field (``--group-size`` for ``group_size``), every default ``None`` so that
    :func:`given` can tell what the user set. Values stay text: the config validates them.
    ``readers(field)`` lists the methods that read a field (shown in the help); ``defaults``
    are the command's own defaults where they differ from the fields'. Returns the names added."""
    skip = set(skip)
    target = parser.add_argument_group(group) if group else parser
    added = []
    for name, info in fields.items():
        if name in skip:
            continue
        kw: dict[str, Any] = {"dest": name, "default": None}
        who = readers(name) if readers else None
        kw["help"] = help_text(info, who, (defaults or {}).get(name, ...))
        annotation = info.annotation
        if _is_bool(annotation):
            kw["action"] = argparse.BooleanOptionalAction
        elif _is_dict(annotation):
            kw.update(action=_KeyValue, nargs="+", metavar="KEY=VALUE")
        elif _is_list(annotation):
            kw.update(nargs="+", metavar=name.upper())
        else:
            choices = _choices(annotation)
            if choices is not None:  # argparse checks them; numbers are parsed as numbers
                kind = type(choices[0])
                kw.update(choices=choices, type=kind if kind in (int, float) else None)
            else:
                kw["metavar"] = _METAVARS.get(_strip_none(annotation), name.upper())
        target.add_argument(flag_name(name), **kw)
        added.append(name)
    return added


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags among ``names`` that the user set (their values as typed)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
