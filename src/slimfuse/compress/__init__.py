"""``slimfuse compress``: the smallest or fastest model within an accuracy budget, found by a
search across techniques (post-training int8, distilled students, channel pruning, int8
endings). :func:`compress` is the entry point; :mod:`slimfuse.compress.space` the chains.

``slimfuse.compress`` is both this package and the verb: calling the package calls
:func:`compress` (once the package is imported, it is what ``slimfuse.compress`` names)."""

from __future__ import annotations

import sys
import types
from typing import Any

from slimfuse.compress.config import CompressConfig

__all__ = ["CompressConfig", "CompressResult", "compress"]


def __getattr__(name: str) -> Any:  # the search (and torch) load on first use: the CLI starts light
    if name in ("compress", "CompressResult"):
        from slimfuse.compress import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from slimfuse.compress.search import compress

        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
