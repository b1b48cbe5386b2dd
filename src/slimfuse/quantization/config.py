"""The quantization configs, one per mode:
``QuantConfig = Dynamic | Static | WeightOnly | QAT | Shared | Auto``.

Each mode has the fields it reads and no other: ``Static(calibration="entropy")`` is a config,
``Dynamic(calibration="entropy")`` is an error, and so is ``QuantConfig(mode="dynamic",
calibration="entropy")`` (it says which modes read ``calibration``). Calling the family
picks the class by ``mode``::

    QuantConfig(mode="static", calibration="percentile")   # -> Static(...)
    QuantConfig.parse({"mode": "qat", "bits": 4})          # a recipe's keys -> QAT(bits=4)
    QuantConfig()                                          # -> Auto(): dynamic or static int8

``auto``, the default, is dynamic int8 for transformer encoders and static int8 otherwise,
decided for the model at hand by :func:`slimfuse.quantization.auto.resolve_mode` (every entry
point: the library call, a recipe stage, the CLI).

QAT and weight sharing (``shared``: its centroids) train with the one loop: their training
settings are a :class:`~slimfuse.config.TrainConfig` (default 5 epochs at lr 1e-3), passed to
:func:`slimfuse.quantize` as ``train=``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from slimfuse.config import Config, Family
from slimfuse.hardware import has_vnni

if TYPE_CHECKING:
    from slimfuse.targeting import Targeting

QAT_TRAINING = {"epochs": 5, "lr": 1e-3}
SHARED_TRAINING = QAT_TRAINING  # the centroids' fine-tuning


class _Layers(Config):
    """What every mode reads: which layers."""

    targets: tuple[str, ...] | None = Field(
        None,
        description="layers to quantize: names, re:<regex>, type:<Class> (default: every layer "
        "the mode takes)",
    )
    ignore: tuple[str, ...] = Field((), description="layers to keep fp32 (same syntax)")

    @property
    def targeting(self) -> Targeting:
        from slimfuse.targeting import Targeting  # torch: configs stay importable without it

        return Targeting(self.targets, self.ignore)


class _Int8(_Layers):
    """What the int8 modes (an ONNX Runtime graph) read."""

    per_channel: bool = Field(
        True, description="one weight scale per output channel (else per tensor)"
    )
    reduce_range: bool | None = Field(
        None,
        description="int8 weights in 7 bits, exact on CPUs without VNNI (none: decided from this "
        "CPU, 7 bits where it lacks VNNI)",
    )
    quantize_attention: bool = Field(
        False, description="quantize attention's MatMuls too (they stay fp32 by default)"
    )
    quantize_embeddings: bool = Field(True, description="quantize embedding tables")
    calibration_batches: int = Field(
        8, ge=1, description="batches of training data calibration reads"
    )
    calibration_batch_size: int = Field(64, ge=1, description="samples per calibration batch")

    @property
    def reduced_range(self) -> bool:
        """``reduce_range`` resolved for this CPU: True means 7-bit int8 weights."""
        if self.reduce_range is None:
            return not has_vnni()
        return bool(self.reduce_range)

    @property
    def weight_qmax(self) -> int:
        """The largest int8 weight magnitude: 127, or 64 with the reduced range (ONNX Runtime's)."""
        return 64 if self.reduced_range else 127


class _Ranges(Config):
    """Activation ranges from calibration (static int8, QAT's starting ranges)."""

    calibration: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="how activation ranges are set from the calibration data"
    )
    percentile: float = Field(
        99.999, gt=50, le=100, description="the percentile kept (calibration percentile)"
    )

    @model_validator(mode="after")
    def _percentile_with_percentile(self) -> _Ranges:
        if self.percentile != 99.999 and self.calibration != "percentile":
            raise ValueError(
                f"percentile {self.percentile} applies only with calibration 'percentile'; "
                f"got calibration {self.calibration!r}"
            )
        return self


class _Budget(Config):
    """Post-training int8 under an accuracy budget, and outlier smoothing."""

    max_drop: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="mixed precision: the largest metric drop allowed (0.003 = 0.3 points), "
        "checked on held-out data; the most sensitive layers stay fp32 until it holds",
    )
    held_out_batches: int = Field(
        4,
        ge=1,
        description="batches max_drop is checked on, never calibrated on: from the data's "
        "validation split (its test split is reported), else read from the calibration source "
        "after the calibration batches",
    )
    smoothquant: float | None = Field(
        None,
        ge=0,
        le=1,
        description="smoothing strength alpha (smooth_method picks the scaling); with "
        "max_drop, only the fewest layers that keep the budget are smoothed",
    )
    smooth_method: Literal["outlier", "smoothquant"] = Field(
        "outlier",
        description="how smoothquant scales: outlier (weights ignored, only channels above the "
        "90th-percentile channel max move; measured better on MiniLM) or smoothquant (Xiao et "
        "al.: s = max|X|^alpha / max|W|^(1-alpha)); either folds 1/s into a LayerNorm that only "
        "the smoothed layers read",
    )
    smooth_min_ratio: float = Field(
        4.0,
        gt=1,
        description="smoothing takes an input whose largest channel is this many times the median",
    )
    sensitivity: Literal["auto", "onnxruntime", "emulated"] = Field(
        "auto",
        description="mixed precision's per-layer sensitivity: in ONNX Runtime (exact), a PyTorch "
        "emulation (fast), or auto (ONNX Runtime up to 16 layers)",
    )


class Dynamic(_Int8, _Budget):
    """int8 weights per output channel, activations quantized at run time (ONNX Runtime)."""

    mode: Literal["dynamic"] = "dynamic"


class Static(_Int8, _Ranges, _Budget):
    """int8 QDQ graph: u8 activations with calibrated ranges, s8 per-channel weights."""

    mode: Literal["static"] = "static"


AUTO_RULE = (
    "auto: dynamic for transformer encoders (models whose inputs are token ids / attention "
    "masks, or that contain attention layers: a torch MultiheadAttention or a module class "
    "named *SelfAttention), static otherwise; a setting only static reads (calibration, "
    "percentile) means static"
)


class Auto(_Int8, _Ranges, _Budget):
    """Dynamic or static int8, picked for the model when it is quantized (:data:`AUTO_RULE`)."""

    mode: Literal["auto"] = Field("auto", description=AUTO_RULE)


class _GroupWise(Config):
    bits: Literal[8, 4] = Field(8, description="weight bits")
    group_size: int = Field(
        32, ge=2, multiple_of=2, description="weights per scale (int4 weight-only)"
    )


class WeightOnly(_Layers, _GroupWise):
    """int8 / int4 weights with group-wise scales, packed in the bundle; float compute."""

    mode: Literal["weight-only"] = "weight-only"


class QAT(_Int8, _Ranges, _GroupWise):
    """Fake-quant training with the one loop, then int8 QDQ (``bits=4``: int4 weight-only)."""

    mode: Literal["qat"] = "qat"
    distill: bool = Field(False, description="train with the fp32 model as the teacher (QAT)")

    @model_validator(mode="after")
    def _int4_is_weight_only(self) -> QAT:
        if self.bits == 4:  # int4 QAT trains weight-only layers: no activation ranges
            int8_only = set(_Int8.model_fields) | set(_Ranges.model_fields)
            for name in sorted(int8_only - set(_Layers.model_fields) & self.model_fields_set):
                raise ValueError(f"{name} does not apply to qat with bits 4 (int4 is weight-only)")
        elif "group_size" in self.model_fields_set:
            raise ValueError("group_size applies to int4 (bits 4); got bits 8")
        return self


class Shared(_Layers):
    """Weight sharing (Deep Compression's trained quantization): per layer, the non-zero weights
    clustered into at most 2^bits values by k-means, the values fine-tuned with the one loop."""

    mode: Literal["shared"] = "shared"
    bits: int = Field(
        5, ge=2, le=8, description="index bits: at most 2^bits shared values per layer (2..8)"
    )
    init: Literal["linear", "density", "random"] = Field(
        "linear",
        description="k-means starting values: evenly spaced between the smallest and largest "
        "weight (linear), quantiles of the weights (density) or weights drawn at random",
    )
    kmeans_iters: int = Field(30, ge=0, le=1000, description="k-means iterations at most")
    layer_bits: dict[str, Annotated[int, Field(ge=2, le=8)]] = Field(
        {},
        description="index bits per layer in place of bits: SELECTOR=BITS (a name, re:<regex> or "
        "type:<Class>; the first that matches a layer sets its bits; each must match a targeted "
        "layer), e.g. net.0=4",
    )

    @field_validator("layer_bits", mode="before")
    @classmethod
    def _whole_bits(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, bits in value.items():
                if isinstance(bits, bool) or not isinstance(bits, int):
                    raise ValueError(f"{key}={bits!r}: expected whole bits 2..8")
        return value


QuantConfig = Family(
    "QuantConfig",
    "mode",
    [Dynamic, Static, WeightOnly, QAT, Shared, Auto],
    default="auto",
    trains={"qat": QAT_TRAINING, "shared": SHARED_TRAINING},
)
AnyQuantConfig = Dynamic | Static | WeightOnly | QAT | Shared | Auto
MODES = tuple(QuantConfig.names())
