"""Errors that slimfuse raises on purpose.

Every subclass of :class:`SlimfuseError` carries a one-line message saying what was seen and
what was expected; the CLI prints that line and exits with code 2 (no traceback unless
``--debug``).
"""

from __future__ import annotations

from typing import Any


class SlimfuseError(Exception):
    """Base class: bad input or an unsupported request, reported as one line."""

    exit_code = 2


class DataError(SlimfuseError):
    """The data source is missing, malformed or does not fit the model."""


class ModelError(SlimfuseError):
    """The model source cannot be resolved, built or loaded."""


class UnsafeFileError(ModelError):
    """A file would need pickle to load and the caller did not opt in."""


class UntrustedCodeError(SlimfuseError):
    """A model or data source is code and the caller did not opt in (``trust_code``)."""


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


class SlimfuseWarning(UserWarning):
    """Something a user should know (nothing was pruned, a split is small); ``--strict`` makes
    it an error with exit code 1."""


def validation_error(exc: Any) -> tuple[str, str]:
    """Where (``stages.0.epochs``) and what (the message) of a pydantic ``ValidationError``.

    Of several errors the most specific is shown (in a union such as ``int | list[int]`` the
    list item that is out of bounds, not "not an int"); pydantic's internal union tags are
    left out of the location.
    """
    errors = exc.errors()
    err = max(errors, key=lambda e: len(e["loc"]))
    first = errors[0]["loc"][:1]
    loc = [p for p in err["loc"] if isinstance(p, int) or p in first or "[" not in str(p)]
    loc = [p for p in loc if not (isinstance(p, str) and ("-" in p or "[" in p))]
    return ".".join(str(p) for p in loc), err["msg"].removeprefix("Value error, ")
