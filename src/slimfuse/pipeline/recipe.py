"""Recipes: YAML read with ``yaml.safe_load`` and validated; nothing in them is executed.

::

    model: mnist1d_cnn          # zoo name, file.py:fn, module:fn, bundle or HF folder (optional)
    model_kwargs: {}
    data: mnist1d
    data_kwargs: {}             # label_column, val_fraction, standardize (.csv / .npz: true)
    task: classification
    seed: 0                     # initialisation and shuffling
    split_seed: 0               # the train / val / test split
    threads: 1                  # threads for latency measurement
    stages:
      - stage: train            # a registered stage name
        name: teacher           # optional label (default: the stage name)
        epochs: 40              # the rest is the stage's config, validated by it
      - stage: export
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slimfuse import trust
from slimfuse.errors import ConfigError, validation_error
from slimfuse.pipeline.stages import STAGES
from slimfuse.tasks import TASKS


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    stage: str
    name: str | None = None
    measure: bool = True

    def config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    data: str = "mnist1d"
    data_kwargs: dict[str, Any] = Field(default_factory=dict)
    task: str = "classification"
    seed: int = 0
    split_seed: int = 0
    threads: int = Field(default=1, ge=1)
    measure_engines: list[str] = Field(default_factory=lambda: ["torch", "onnxruntime"])
    stages: list[StageEntry] = Field(min_length=1)

    @field_validator("data_kwargs")
    @classmethod
    def _data_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        for key in ("seed", "split_seed"):
            if key in kwargs:
                raise ValueError(f"{key!r} is not a data key: the split follows split_seed")
        return kwargs

    @field_validator("stages")
    @classmethod
    def _names(cls, stages: list[StageEntry]) -> list[StageEntry]:
        seen: dict[str, int] = {}
        for s in stages:
            base = s.name or s.stage
            seen[base] = seen.get(base, 0) + 1
            if s.name is None:
                s.name = base if seen[base] == 1 else f"{base}{seen[base]}"
            elif seen[base] > 1:
                raise ValueError(f"two stages are named {base!r}")
        return stages


def first_error(exc: ValidationError) -> tuple[str, str]:
    """Where (``stages.0.epochs``) and what (pydantic's message) of a validation's first error."""
    return validation_error(exc)


def parse_recipe(text: str, source: str = "recipe") -> Recipe:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with 'stages', got {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        where, msg = first_error(exc)
        raise ConfigError(f"{source}: {where}: {msg}") from exc
    check_recipe(recipe, source)
    return recipe


def check_recipe(recipe: Recipe, source: str = "recipe") -> None:
    """The task and every stage's keys (and their checks across keys), before anything runs."""
    TASKS.get(recipe.task)
    _check_sources(recipe, source)
    for entry in recipe.stages:
        st = STAGES.get(entry.stage)
        try:
            st.config.parse(entry.config()).check()
        except ConfigError as exc:
            raise ConfigError(f"{source}: stage {entry.name!r} ({entry.stage}): {exc}") from exc


# stage keys that name a model source (a zoo name, a bundle, file.py:fn ...) or a list of them
SOURCE_KEYS = ("model", "student", "teachers", "members", "parent")


def _check_sources(recipe: Recipe, source: str) -> None:
    """Refuse, before anything runs, a model or data source that is code unless it is trusted."""
    named = [("model", recipe.model), ("data", recipe.data)]
    for entry in recipe.stages:
        for key, value in entry.config().items():
            if key in SOURCE_KEYS:
                values = value if isinstance(value, list) else [value]
                named += [(f"stage {entry.name!r}: {key}", v) for v in values]
    for where, value in named:
        if isinstance(value, str) and trust.is_code(value):
            trust.require_trust(value, f"{source}: {where}:")


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"  # the source tree's example recipes


def where_examples() -> str:
    """Where example recipes are, for the line a missing recipe prints."""
    if EXAMPLES.is_dir():
        return f"example recipes: {EXAMPLES}"
    return "example recipes: examples/ in the slimfuse source tree"


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found ({where_examples()})")
    text = path.read_text()
    return parse_recipe(text, path.name), text
