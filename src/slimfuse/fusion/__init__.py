"""Model fusion: prediction-level fusion, stacking, learned heads, mutual learning, merging.

A file per method: ``ensemble.py`` (mean), ``weighted.py``, ``vote.py``, ``stacking.py``,
``head.py`` (deep fusion), ``mutual.py`` (Deep Mutual Learning), ``merge/`` (uniform and greedy
soups, TIES), ``members.py`` (train N seeds or K folds), ``sklearn.py`` (scikit-learn members),
``build.py`` (rebuilding fused bundles), ``config.py`` (one config per method), ``api.py`` (the
``fuse`` verb; ``merge/`` has ``merge``).

Every fused model is an ``nn.Module`` that trains, distils, measures, saves and exports like any
other. Names are loaded lazily (``import slimfuse.fusion`` stays light)::

    from slimfuse.fusion import MeanFusion, Weighted, fuse
    ensemble = MeanFusion([("a", cnn_a), ("b", cnn_b)], space="probs")
    weighted = fuse([("a", cnn_a), ("b", cnn_b)], Weighted(), data)
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
    "FuseConfig": "slimfuse.fusion.config",
    "Mean": "slimfuse.fusion.config",
    "Weighted": "slimfuse.fusion.config",
    "Vote": "slimfuse.fusion.config",
    "SoftVote": "slimfuse.fusion.config",
    "Stack": "slimfuse.fusion.config",
    "Head": "slimfuse.fusion.config",
    "MergeConfig": "slimfuse.fusion.config",
    "Uniform": "slimfuse.fusion.config",
    "Greedy": "slimfuse.fusion.config",
    "Ties": "slimfuse.fusion.config",
    "fuse": "slimfuse.fusion.api",
    "FUSE_HANDLERS": "slimfuse.fusion.api:HANDLERS",
    "merge": "slimfuse.fusion.merge",
    "MERGE_HANDLERS": "slimfuse.fusion.merge:HANDLERS",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
