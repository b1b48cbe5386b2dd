"""Refusing models trained on another split of the same data.

A model built for a :class:`~slimfuse.data.Data` records its split (``spec.split``: the data's
name, split seed, sizes and fingerprints of the validation and test samples, see
:func:`slimfuse.data.split_record`). Fusing, merging or distilling from a model trained on
another split of the same data would score the result on samples that model trained on:
:func:`check_same_split` refuses it with one line. Models that record no split (an
``nn.Module`` of your own, a bundle from before splits were recorded) are not checked, nor are
models of other data (another name).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from slimfuse.data import split_record
from slimfuse.errors import DataError
from slimfuse.models.bundle import specs_in
from slimfuse.models.source import spec_of


def recorded_splits(model: nn.Module) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, split)`` for every split the model's spec records, a fused model's members'
    (live or in its spec) included; ``where`` is ``""`` for the model itself, else
    ``"its member 'a'"``."""
    for name, module in model.named_modules():
        spec = spec_of(module)
        if spec is None:
            continue
        for path, entry in _walk(spec.to_dict(), _member_path(name)):
            split = entry.get("split")
            if isinstance(split, dict):
                yield path, split


def _member_path(name: str) -> list[str]:
    """``members.a.members.b`` -> ``["a", "b"]`` (other submodules: their dotted name)."""
    parts = name.split(".") if name else []
    out, i = [], 0
    while i < len(parts):
        if parts[i] == "members" and i + 1 < len(parts):
            out.append(parts[i + 1])
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


def _walk(spec: dict[str, Any], path: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield _where(path), spec
    if spec.get("source") != "fused":
        return
    list(specs_in(spec))  # checks the member entries
    for entry in spec.get("kwargs", {}).get("members", []):
        yield from _walk(entry["spec"], [*path, entry["name"]])


def _where(path: list[str]) -> str:
    return " ".join(f"(its member {p!r})" for p in path)


def _describe(split: dict[str, Any], *, name: bool = True) -> str:
    seed = split.get("split_seed")
    text = f"split {split.get('data')}" if name else "split"
    text += f" seed {seed}" if seed is not None else ""
    prints = [f"{s} {split[s]}" for s in ("test", "val") if split.get(s)]
    return text + (f" ({', '.join(prints)})" if prints else "")


def check_same_split(model: nn.Module, data: Any, what: str) -> None:
    """Refuse (:class:`DataError`, one line naming ``what`` and both splits) a model whose
    recorded split is of the same data as ``data`` (same name) but holds other validation or
    test samples. ``data`` ``None`` or a model without a recorded split: nothing to check."""
    if data is None:
        return
    here = split_record(data)
    for where, split in recorded_splits(model):
        if split.get("data") != here.get("data"):
            continue
        differ = [
            s for s in ("test", "val") if split.get(s) and here.get(s) and split[s] != here[s]
        ]
        if not differ:
            continue
        leak = (
            "its test score would leak"
            if "test" in differ
            else "what is fitted or chosen on the validation split would leak"
        )
        theirs = split.get("split_seed")
        fix = (
            f"use --split-seed {theirs} (split_seed) here or retrain it on this split"
            if theirs is not None
            else "retrain it on this split"
        )
        who = f"{what} {where}".strip()
        raise DataError(
            f"{who} was trained on {_describe(split)}, the data here is "
            f"{_describe(here, name=False)}: {leak}; {fix}"
        )


def check_members_split(pairs: Any, data: Any, role: str = "member") -> None:
    """:func:`check_same_split` for every ``(name, model)`` pair (``role``: member, teacher)."""
    if data is None:
        return
    for i, item in enumerate(pairs):
        name, model = item if isinstance(item, tuple) else (None, item)
        label = f"{role} {i} ({name!r})" if name is not None else f"{role} {i}"
        check_same_split(model, data, label)
