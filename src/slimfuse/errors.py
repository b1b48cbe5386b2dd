"""Errors that slimfuse raises on purpose.

Every subclass of :class:`SlimfuseError` carries a one-line message saying what was seen and
what was expected; the CLI prints that line and exits with code 2 (no traceback unless
``--debug``).
"""

from __future__ import annotations


class SlimfuseError(Exception):
    """Base class: bad input or an unsupported request, reported as one line."""

    exit_code = 2


class DataError(SlimfuseError):
    """The data source is missing, malformed or does not fit the model."""


class ModelError(SlimfuseError):
    """The model source cannot be resolved, built or loaded."""


class UnsafeFileError(ModelError):
    """A file would need pickle to load and the caller did not opt in."""


class ConfigError(SlimfuseError):
    """A config or recipe value is out of range or of the wrong kind."""


class ExportError(SlimfuseError):
    """ONNX export failed or the exported graph disagrees with PyTorch."""


class TrainingError(SlimfuseError):
    """Training cannot go on (a NaN/Inf loss, for instance)."""


class UnsupportedLayerError(SlimfuseError):
    """A technique was asked to act on a layer type it cannot handle."""


class FusionError(SlimfuseError):
    """Models to fuse or merge do not fit together, or fusion settings are out of range."""
