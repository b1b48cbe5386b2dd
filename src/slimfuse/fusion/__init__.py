"""Model fusion: prediction-level fusion, stacking, learned heads, mutual learning, merging.

A file per method: ``ensemble.py`` (mean), ``weighted.py``, ``vote.py``, ``stacking.py``,
``head.py`` (deep fusion), ``mutual.py`` (Deep Mutual Learning), ``merge/`` (uniform and greedy
soups, TIES), ``members.py`` (train N seeds or K folds), ``sklearn.py`` (scikit-learn members),
``build.py`` (rebuilding fused bundles), ``api.py`` (the ``fuse`` verb), ``stage.py``, ``cli.py``.

Every fused model is an ``nn.Module`` that trains, distils, measures, saves and exports like any
other. Names are loaded lazily (``import slimfuse.fusion`` stays light)::

    from slimfuse.fusion import MeanFusion
    ensemble = MeanFusion([("a", cnn_a), ("b", cnn_b)], space="probs")
"""

from __future__ import annotations

from slimfuse.lazy import lazy_names

_NAMES: dict[str, str] = {
    "FusionModule": "slimfuse.fusion.ensemble",
    "MeanFusion": "slimfuse.fusion.ensemble",
    "WeightedFusion": "slimfuse.fusion.weighted",
    "VoteFusion": "slimfuse.fusion.vote",
    "StackingFusion": "slimfuse.fusion.stacking",
    "HeadFusion": "slimfuse.fusion.head",
    "MutualLearning": "slimfuse.fusion.mutual",
    "SklearnMember": "slimfuse.fusion.sklearn",
    "train_members": "slimfuse.fusion.members",
    "fuse": "slimfuse.fusion.api",
    "FUSE_METHODS": "slimfuse.fusion.api",
    "merge": "slimfuse.fusion.merge",
    "MERGE_METHODS": "slimfuse.fusion.merge",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
