"""The quantization config: one frozen value that says what to do, round-tripping to a dict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from slimfuse.errors import ConfigError
from slimfuse.targeting import Targeting

Mode = Literal["dynamic", "static", "weight-only", "qat"]
MODES = ("dynamic", "static", "weight-only", "qat")
CALIBRATIONS = ("minmax", "percentile", "entropy")

# The modes that read each setting ("qat int4": qat with bits 4, which trains int4 weight-only
# layers and reads no activation ranges). Targets, ignore and extra apply to every mode.
_INT8 = ("dynamic", "static", "qat")
READ_BY: dict[str, tuple[str, ...]] = {
    "calibration": ("static", "qat"),
    "percentile": ("static", "qat"),
    "per_channel": _INT8,
    "reduce_range": _INT8,
    "quantize_attention": _INT8,
    "quantize_embeddings": _INT8,
    "max_drop": ("dynamic", "static"),
    "smoothquant": ("dynamic", "static"),
    "group_size": ("weight-only", "qat int4"),
    "calibration_batches": ("dynamic", "static", "qat", "qat int4"),
    "qat_epochs": ("qat", "qat int4"),
    "qat_lr": ("qat", "qat int4"),
    "distill": ("qat", "qat int4"),
}
_KIND_NAMES = {"qat": "qat with bits 8", "qat int4": "qat with bits 4"}


@dataclass(frozen=True)
class QuantConfig:
    """What :func:`slimfuse.quantize` does.

    - ``mode``: ``dynamic`` (int8 weights per channel, activations quantized at run time),
      ``static`` (int8 QDQ, activation ranges from calibration), ``weight-only`` (int8/int4
      group-wise weights, float compute) or ``qat`` (fake-quant training, then int8 QDQ).
    - ``bits``: 8, or 4 for ``weight-only`` (and ``qat``, which then trains int4 weight-only).
    - ``calibration``: ``minmax``, ``percentile`` (``percentile`` kept) or ``entropy``.
    - ``per_channel``: one weight scale per output channel (else one per tensor).
    - ``reduce_range``: int8 weights in 7 bits ([-64, 64]) so that ONNX Runtime's u8 x s8
      kernels cannot saturate on CPUs without VNNI; ``None`` (default) decides from this CPU
      (:func:`slimfuse.hardware.has_vnni`): 8 bits with VNNI, 7 without.
    - ``targets`` / ``ignore``: layer selectors in the shared syntax (:mod:`slimfuse.targeting`).
    - ``max_drop``: with ``mixed_precision``, the largest allowed metric drop; the most
      sensitive layers stay fp32 until the budget holds.
    - ``smoothquant``: migrate activation outliers into weights before quantizing (alpha). With
      ``max_drop`` too, only the fewest layers are smoothed (most int8-sensitive first) whose
      int8 model keeps the budget: each smoothed layer may cost a multiply at run time.
    - ``group_size``: weights per scale for ``weight-only``.
    - ``calibration_batches``: how many loader batches calibration reads.
    - ``qat_epochs`` / ``qat_lr``: the QAT fine-tune; ``distill``: use the fp32 model as teacher.
    """

    mode: Mode = "dynamic"
    bits: int = 8
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool | None = None
    targets: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    quantize_attention: bool = False
    quantize_embeddings: bool = True
    max_drop: float | None = None
    smoothquant: float | None = None
    group_size: int = 32
    calibration_batches: int = 8
    qat_epochs: int = 5
    qat_lr: float = 1e-3
    distill: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"quantization mode {self.mode!r}: expected one of {', '.join(MODES)}"
            )
        if self.bits not in (4, 8):
            raise ConfigError(f"bits {self.bits}: expected 8 or 4")
        if self.bits == 4 and self.mode not in ("weight-only", "qat"):
            raise ConfigError(
                f"bits 4 with mode {self.mode!r}: int4 is weight-only here; expected bits 8 "
                "or mode 'weight-only' / 'qat'"
            )
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(
                f"calibration {self.calibration!r}: expected one of {', '.join(CALIBRATIONS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile {self.percentile}: expected a value in (50, 100]")
        if self.max_drop is not None and not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise ConfigError(f"max_drop {self.max_drop}: expected a number >= 0")
        if self.smoothquant is not None and not 0.0 <= self.smoothquant <= 1.0:
            raise ConfigError(f"smoothquant alpha {self.smoothquant}: expected 0..1")
        if self.group_size < 1 or self.group_size % 2:
            raise ConfigError(f"group_size {self.group_size}: expected an even number >= 2")
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches {self.calibration_batches}: expected >= 1")
        if self.qat_epochs < 0 or not self.qat_lr > 0:
            raise ConfigError(
                f"qat_epochs {self.qat_epochs} / qat_lr {self.qat_lr}: expected >= 0 / > 0"
            )
        if self.targets is not None and not isinstance(self.targets, tuple):
            object.__setattr__(self, "targets", tuple(self.targets))
        if not isinstance(self.ignore, tuple):
            object.__setattr__(self, "ignore", tuple(self.ignore))

    @property
    def kind(self) -> str:
        """The mode, with ``qat`` split by bits: ``"qat int4"`` is int4 weight-only training."""
        return "qat int4" if self.mode == "qat" and self.bits == 4 else self.mode

    def check_applies(self) -> None:
        """Refuse a setting changed from its default that this mode does not read.

        Called by :func:`slimfuse.quantize`, not on construction: a bundle's stored config and
        the configs QAT derives from its own (``mode`` replaced) load as they are.
        """
        kind = self.kind
        subject = f"mode {self.mode!r}" + (f" with bits {self.bits}" if self.mode == "qat" else "")
        defaults = {f.name: f.default for f in fields(self) if f.name in READ_BY}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value == default or kind in READ_BY[name]:
                continue
            readers = ", ".join(_KIND_NAMES.get(k, k) for k in READ_BY[name])
            raise ConfigError(f"{name}={value!r} does not apply to {subject}; it is for {readers}")
        if self.percentile != defaults["percentile"] and self.calibration != "percentile":
            raise ConfigError(
                f"percentile={self.percentile!r} applies only with calibration 'percentile'; "
                f"got calibration {self.calibration!r}"
            )

    @property
    def reduced_range(self) -> bool:
        """``reduce_range`` resolved for this CPU: True means 7-bit int8 weights."""
        if self.reduce_range is None:
            from slimfuse.hardware import has_vnni

            return not has_vnni()
        return bool(self.reduce_range)

    @property
    def smooth_min_ratio(self) -> float:
        """Smoothing takes a layer whose largest input channel is this many times the median."""
        return float(self.extra.get("smooth_min_ratio", 4.0))

    @property
    def weight_qmax(self) -> int:
        """The largest int8 weight magnitude: 127, or 64 with the reduced range (ONNX Runtime's)."""
        return 64 if self.reduced_range else 127

    @property
    def targeting(self) -> Targeting:
        return Targeting(self.targets, self.ignore)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets) if self.targets is not None else None
        d["ignore"] = list(self.ignore)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown quantization setting(s) {', '.join(unknown)}; expected some of "
                + ", ".join(cls.__dataclass_fields__)
            )
        if known.get("targets") is not None:
            known["targets"] = tuple(known["targets"])
        known["ignore"] = tuple(known.get("ignore") or ())
        return cls(**known)
