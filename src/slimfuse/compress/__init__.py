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
from slimfuse.compress.search import CompressResult, compress

__all__ = ["CompressConfig", "CompressResult", "compress"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> CompressResult:
        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
