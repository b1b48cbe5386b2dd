"""Pruning: unstructured magnitude masks and structured removal of channels, neurons and heads.

- :func:`prune` (``slimfuse.prune``): one call for every method, with recovery; the methods'
  configs :data:`PruneConfig` = :class:`Magnitude` | :class:`Threshold` | :class:`Channels` |
  :class:`Transformer` (:mod:`~slimfuse.pruning.config`)
- :mod:`~slimfuse.pruning.unstructured`: magnitude masks, per layer or global, sparsity or τ
- :mod:`~slimfuse.pruning.schedule`: Zhu & Gupta's cubic gradual schedule (AGP), one-shot
- :mod:`~slimfuse.pruning.structured`: channels/neurons removed on Torch-Pruning's dependency graph
- :mod:`~slimfuse.pruning.importance`: l1, l2, bn, taylor criteria in one registry
- :mod:`~slimfuse.pruning.transformer`: FFN neurons and attention heads of BERT-style encoders
- :mod:`~slimfuse.pruning.sparse`: sparsity kept: the layers' zero masks, the ``sparse`` record,
  compact bundles; :mod:`~slimfuse.pruning.resize`:
  the structural edit that lets ``slimfuse.load`` rebuild pruned shapes

Names are loaded on first use, so ``import slimfuse`` stays light.
"""

from __future__ import annotations

from slimfuse.lazy import lazy_names

_NAMES: dict[str, str] = {
    "PruneConfig": "slimfuse.pruning.config",
    "Magnitude": "slimfuse.pruning.config",
    "Threshold": "slimfuse.pruning.config",
    "Channels": "slimfuse.pruning.config",
    "Transformer": "slimfuse.pruning.config",
    "prune": "slimfuse.pruning.api",
}

__all__ = sorted(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
