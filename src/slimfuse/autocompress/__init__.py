"""The search behind ``slimfuse compress``: the smallest or fastest model within an accuracy
budget, found across techniques (post-training int8, distilled students, channel and
transformer pruning, low rank, int8 endings). :func:`~slimfuse.autocompress.search.compress` is
the entry point (the verb ``slimfuse.compress``); :mod:`slimfuse.autocompress.space` holds the
chains, :mod:`.trial` runs one, :mod:`.results` chooses and writes the result, :mod:`.config` is
the typed :class:`CompressConfig`.

The search (and torch) load on first use of :func:`compress`, so the CLI starts light."""

from __future__ import annotations

from typing import Any

from slimfuse.autocompress.config import CompressConfig

__all__ = ["CompressConfig", "CompressResult", "compress"]


def __getattr__(name: str) -> Any:
    if name in ("compress", "CompressResult"):
        from slimfuse.autocompress import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
