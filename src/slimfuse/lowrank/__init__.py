"""Low-rank factorization: Linear and conv layers replaced by two smaller ones (truncated SVD).

- :func:`factorize` (``slimfuse.factorize``): one call for every method, with recovery; the
  methods' configs :data:`LowRankConfig` = :class:`Energy` | :class:`Ratio` | :class:`Budget`
  (:mod:`~slimfuse.lowrank.config`)
- :mod:`~slimfuse.lowrank.energy`, :mod:`~slimfuse.lowrank.ratio`,
  :mod:`~slimfuse.lowrank.budget` (ranks by sensitivity within a FLOPs / parameter budget): how
  each method chooses ranks
- :mod:`~slimfuse.lowrank.layers`: the factorized layers, the (whitened) SVD and the ``lowrank``
  edit that lets ``slimfuse.load`` rebuild them; :mod:`~slimfuse.lowrank.plan`: the layers a
  method may factorize and the report; :mod:`~slimfuse.lowrank.profile`: calibration statistics

Names are loaded on first use, so ``import slimfuse`` stays light.
"""

from __future__ import annotations

from slimfuse.lazy import lazy_names

_NAMES: dict[str, str] = {
    "LowRankConfig": "slimfuse.lowrank.config",
    "Energy": "slimfuse.lowrank.config",
    "Ratio": "slimfuse.lowrank.config",
    "Budget": "slimfuse.lowrank.config",
    "factorize": "slimfuse.lowrank.api",
    "LowRankLinear": "slimfuse.lowrank.layers",
    "LowRankConv": "slimfuse.lowrank.layers",
}

__all__ = sorted(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
