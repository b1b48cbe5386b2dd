"""The ``auto`` mode (the default): dynamic int8 for transformer encoders, static otherwise.

Static int8 rounds each activation to one calibrated range; a transformer encoder's activations
have outlier channels that such a range cannot hold (MiniLM: mean cosine 0.835 static against
0.994 dynamic on held-out text), while a CNN keeps its accuracy static and runs faster. The one
rule, :func:`resolve_mode`, is what :func:`slimfuse.quantize` applies, so the library call, a
recipe's ``quantize`` stage and ``slimfuse quantize`` pick the same mode for the same model.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from slimfuse.models.source import is_transformer_encoder, record
from slimfuse.quantization.config import AnyQuantConfig, Auto, Dynamic, QuantConfig, Static

log = logging.getLogger("slimfuse.quantization")

# the settings static reads and dynamic does not: given with auto, they ask for static
STATIC_ONLY = frozenset(Static.model_fields) - frozenset(Dynamic.model_fields)


def resolve_mode(
    config: AnyQuantConfig, model: nn.Module, data: Any = None
) -> tuple[AnyQuantConfig, str | None]:
    """``config`` with ``auto`` resolved for ``model`` (logged once) and why; any other mode is
    returned as it is, with ``None``."""
    if not isinstance(config, Auto):
        return config, None
    static_keys = sorted(STATIC_ONLY & config.model_fields_set)
    if static_keys:
        mode, why = "static", f"{', '.join(static_keys)} set"
    elif is_transformer_encoder(model, data):
        mode, why = "dynamic", "transformer encoder"
    else:
        mode, why = "static", "no token inputs or attention layers"
    given = config.model_dump(include=set(config.model_fields_set) - {"mode"})
    resolved = QuantConfig.parse({**given, "mode": mode})
    log.info("mode auto -> %s (%s)", mode, why)
    return resolved, why  # type: ignore[return-value]


def record_resolved(model: nn.Module, config: AnyQuantConfig, why: str) -> None:
    """The resolved mode in ``model``'s lineage (its bundle then says what ran)."""
    record(
        model,
        lineage={"stage": "quantize", "mode": config.mode, "requested": "auto", "because": why},
    )
