"""slimfuse: make trained PyTorch models smaller and faster, and fuse several into a better one.

The public verbs are loaded lazily, so ``import slimfuse`` stays light (no transformers, no
onnxruntime until used)::

    import slimfuse
    data = slimfuse.load_data("mnist1d")
    model = slimfuse.build_model("mnist1d_cnn", data=data)
    slimfuse.train(model, data)
    slimfuse.save(model, "runs/cnn")
"""

from __future__ import annotations

from slimfuse.lazy import lazy_names

__version__ = "0.1.0"

# verb -> "module:attribute"
_VERBS: dict[str, str] = {
    "load": "slimfuse.models.bundle:load",
    "save": "slimfuse.models.bundle:save",
    "load_model": "slimfuse.models.resolve:load_model",
    "build_model": "slimfuse.models.source:build_model",
    "load_data": "slimfuse.data:load_data",
    "train": "slimfuse.training:train",
    "TrainConfig": "slimfuse.training:TrainConfig",
    "evaluate": "slimfuse.tasks:evaluate",
    "measure": "slimfuse.measuring:measure",
    "export": "slimfuse.deploy:export",
    "run": "slimfuse.pipeline.run:run_recipe",
    "compress": "slimfuse.autocompress.search:compress",
    "prune": "slimfuse.api:prune",
    "PruneConfig": "slimfuse.pruning.config:PruneConfig",
    "factorize": "slimfuse.api:factorize",
    "LowRankConfig": "slimfuse.lowrank.config:LowRankConfig",
    "fuse": "slimfuse.fusion.api:fuse",
    "FuseConfig": "slimfuse.fusion.config:FuseConfig",
    "merge": "slimfuse.fusion.merge:merge",
    "MergeConfig": "slimfuse.fusion.config:MergeConfig",
    "distill": "slimfuse.api:distill",
    "DistillConfig": "slimfuse.distillation.config:DistillConfig",
    "quantize": "slimfuse.api:quantize",
    "QuantConfig": "slimfuse.quantization.config:QuantConfig",
}

__all__ = ["__version__", *_VERBS]


__getattr__, __dir__ = lazy_names(__name__, _VERBS)
