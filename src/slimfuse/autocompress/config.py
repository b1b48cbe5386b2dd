"""The search's settings: the accuracy budget, what to minimise, how long to look."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from slimfuse.config import Config


class CompressConfig(Config):
    """What ``slimfuse compress`` looks for and how long it may look."""

    max_drop: float = Field(
        0.01,
        description="largest accepted drop of the validation metric below the reference's, "
        "in [0, 1): accuracy (0.01: one point), or a text encoder's mean cosine to the "
        "reference's embeddings (0.03: at least 0.97)",
    )
    objective: Literal["latency", "size", "download"] = Field(
        "latency",
        description="what the chosen model minimises: latency on this CPU, the shipped file's "
        "bytes (size), or its bytes deflated as an app store or zip ships them (download: "
        "unstructured sparsity counts there, and the search tries it)",
    )
    batch: Literal[1, 64] = Field(64, description="batch size the latency is measured at")
    engine: Literal["onnxruntime", "executorch"] = Field(
        "onnxruntime",
        description="the runtime the model ships on, where latency and file bytes are "
        "measured: onnxruntime (.onnx; int8 by ONNX Runtime's quantizer) or executorch (.pte "
        "lowered to XNNPACK, the phone format; int8 through PT2E)",
    )
    budget_minutes: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="wall-clock minutes the search may take, runs continued with --resume included",
    )
    trials: int = Field(
        40, ge=1, description="trials in all (a resumed search counts earlier ones)"
    )
    epochs: int = Field(
        80, ge=1, description="distillation epochs of a student trained from scratch (the most)"
    )
    seed: int = Field(0, description="seed of the sampler and of every trial's training")
    threads: int = Field(1, ge=1, description="threads for latency measurement")
    fusion: Literal["weighted", "mean"] = Field(
        "weighted", description="how several models are fused into the reference"
    )

    @field_validator("max_drop")
    @classmethod
    def _budget(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(
                "expected a drop in [0, 1) (0.01 is one point of accuracy, or 0.01 of cosine)"
            )
        return value
