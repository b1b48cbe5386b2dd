"""The search space: chains of recipe stages, each stage one technique's typed config.

A chain is a list of recipe stage entries (``{"stage": "quantize", "mode": "static", ...}``),
so the chain a search picks is a recipe that ``slimfuse run`` reproduces. Chains start from the
reference (the recipe's ``model``):

- ``ptq``: int8 of the reference itself: dynamic, static with minmax / percentile / entropy
  calibration, or static with sensitive layers kept fp32 (mixed precision, a share of the
  budget).
- ``student``: a smaller student distilled from the reference (KD): the reference's own
  architecture narrowed (its width arguments scaled), or, for an ensemble, one member's
  architecture at full width; then optionally structured channel pruning with distillation
  recovery; each trained chain is measured as it is and with an int8 ending (static; dynamic
  too for ``size``).
- ``prune``: the reference's channels pruned (not for an ensemble), recovery by distillation
  from it, and the int8 endings.
- for the ``download`` objective (deflated bytes), a trained chain may end with unstructured
  sparsity (50 / 80 / 90% of the weights, recovered by distillation): the zeros deflate.

For a text encoder (the ``embedding`` task: the budget is the mean cosine to the reference's
embeddings) the moves are the encoder's own:

- ``ptq``: dynamic int8 (the encoders' default), dynamic after outlier smoothing (the inputs'
  outlier channels scaled down into the weights: closer to fp32 at the same speed), static int8.
- ``depth``: a shallower student built from the reference (``student_from_teacher: {depth}``,
  its blocks initialised from the reference's, DistilBERT-style), distilled with the cosine
  loss.
- ``prune``: FFN neurons and attention heads (``transformer``), recovery by distillation.
- ``factorize``: low rank to a FLOPs budget, ranks by sensitivity, recovery by distillation.

Each trained encoder chain is measured as it is and with a dynamic int8 ending.

On ExecuTorch (``engine: executorch``) int8 is PT2E at export, not a stage: the post-training
chain is empty and every chain is measured as an fp32 and an int8 ``.pte`` (:func:`forms`).

Trained stages end with their last epoch's weights (``restore_best: False``): the budget is
kept on the validation split, and a student whose best epoch was picked on that split would
look better there than it is.

Every stage's keys are validated by the stage registry before a trial runs them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from slimfuse.autocompress.config import CompressConfig

PTQ = ("dynamic", "static-minmax", "static-percentile", "static-entropy", "static-mixed")
ENDING_CHOICES = ("none", "static", "dynamic")
PTE_PTQ = ("pt2e",)  # ExecuTorch's int8: PT2E with the XNNPACK quantizer, at export
PTE_ENDINGS = ("fp32", "int8")
SPARSITY = (0.0, 0.5, 0.8, 0.9)  # unstructured, for the download objective
# dynamic-smooth: outlier smoothing first (benchmarks/results/quantize_minilm.md: MiniLM 0.9978
# mean cosine at plain dynamic's speed, 0.9930 without)
ENCODER_PTQ = ("dynamic", "dynamic-smooth", "static-minmax")
ENCODER_FFN = (0.25, 0.5)  # shares of FFN neurons pruned
ENCODER_HEADS = (0.0, 0.25)  # shares of attention heads pruned
ENCODER_BUDGETS = (0.5, 0.75)  # FLOPs kept by low rank
ENCODER_DEPTHS = (1 / 2, 2 / 3)  # share of the blocks a shallower student keeps
WIDTH_KEYS = ("widths", "channels", "hidden", "width")


@dataclass(frozen=True)
class Student:
    """A student the space may distil into: a zoo source and its builder's arguments."""

    label: str
    source: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Space:
    """What the search may draw from for one reference: the students of its architecture
    (:func:`students`), whether it is an ensemble, for a text encoder its number of blocks
    (``encoder_blocks``; ``0``: not an encoder), and the runtime it is measured on."""

    pool: tuple[Student, ...] = ()
    ensemble: bool = False
    encoder_blocks: int = 0
    engine: str = "onnxruntime"

    @property
    def encoder(self) -> bool:
        return self.encoder_blocks > 0


def _defaults(source: str) -> dict[str, Any]:
    from slimfuse.models.zoo import MODELS

    try:
        fn = MODELS.get(source)
    except Exception:  # not a zoo name: no defaults to scale
        return {}
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, round(value * factor))
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return [max(1, round(v * factor)) for v in value]
    return value


def students(arch: tuple[str, dict[str, Any]] | None, ensemble: bool) -> list[Student]:
    """Students from the reference's architecture (``(zoo source, kwargs)``; ``None``: not a
    zoo model, no narrowed students): widths x1/4, x1/2, x3/4, and x1 for an ensemble (one
    member's size). Builder arguments the data fills (``num_classes``...) are left out."""
    if arch is None:
        return []
    source, kwargs = arch
    full = {**_defaults(source), **kwargs}
    keys = [k for k in WIDTH_KEYS if k in full]
    if not keys:
        return []
    given = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_features")}
    out = []
    for factor in (0.25, 0.5, 0.75, 1.0):
        if factor == 1.0 and not ensemble:
            continue
        scaled = {**given, **{k: _scaled(full[k], factor) for k in keys}}
        out.append(Student(f"{source}-x{factor:g}", source, scaled))
    return out


def _quantize(kind: str, max_drop: float) -> dict[str, Any]:
    if kind == "dynamic":
        return {"stage": "quantize", "name": "int8", "mode": "dynamic"}
    if kind == "dynamic-smooth":  # outlier channels of the inputs scaled down, weights up
        return {"stage": "quantize", "name": "int8", "mode": "dynamic", "smoothquant": 1.0}
    calibration = kind.partition("-")[2] or "minmax"
    entry: dict[str, Any] = {"stage": "quantize", "name": "int8", "mode": "static"}
    if calibration == "mixed":  # sensitive layers kept fp32 within half the budget
        entry["max_drop"] = round(max_drop / 2, 6)
    elif calibration != "minmax":
        entry["calibration"] = calibration
    return entry


def endings(cfg: CompressConfig, encoder: bool = False) -> list[str | None]:
    """The forms a trained chain is measured in: as it is (``None``), static int8, and for
    ``size`` / ``download`` dynamic int8 too (its files are the smallest; at batch 64 it is
    the slowest). An encoder's: as it is and dynamic int8 (static int8 loses far more of its
    fidelity)."""
    if encoder:
        return [None, "dynamic"]
    return [None, "static", *(["dynamic"] if cfg.objective != "latency" else [])]


@dataclass(frozen=True)
class Form:
    """One deployed form of a chain's model: ``label`` (ONNX Runtime: ``none``, ``static``,
    ``dynamic``; ExecuTorch: ``fp32``, ``int8``), the quantize stage it adds (ONNX Runtime's
    int8) or the export entry it ends with (ExecuTorch's ``.pte``, int8 through PT2E)."""

    label: str
    stage: dict[str, Any] | None = None
    export: dict[str, Any] | None = None

    @property
    def int8_export(self) -> bool:
        return bool(self.export and self.export.get("int8"))


def forms(chain: list[dict[str, Any]], cfg: CompressConfig, space: Space) -> list[Form]:
    """The forms a chain is measured in (the first lives in the trial's folder, the others
    in sub-folders named by their label). ONNX Runtime: a post-training chain as it is, a
    trained one as it is and with its int8 :func:`endings`. ExecuTorch: every chain as an
    fp32 and an int8 ``.pte``; the post-training chain (empty) as int8 only."""
    if space.engine == "executorch":
        kinds = [True] if not chain else [False, True]
        return [
            Form("int8" if q else "fp32", export={"stage": "export", "format": "pte", "int8": q})
            for q in kinds
        ]
    if chain and chain[-1]["stage"] == "quantize":
        return [Form("none")]
    return [
        Form(e or "none", None if e is None else ending_stage(e, cfg))
        for e in endings(cfg, space.encoder)
    ]


def ending_param(space: Space) -> tuple[str, tuple[str, ...]]:
    """The study parameter a form's label is recorded under, and its choices."""
    return ("pte", PTE_ENDINGS) if space.engine == "executorch" else ("ending", ENDING_CHOICES)


def ending_stage(kind: str, cfg: CompressConfig) -> dict[str, Any]:
    """The quantize stage of an ending (``static``, ``dynamic``)."""
    return _quantize(kind, cfg.max_drop)


def enqueued(cfg: CompressConfig, space: Space) -> list[dict[str, Any]]:
    """The trials run first, cheapest first: every post-training int8 of the reference, then
    each student of the pool once (full epochs, no pruning), widest first: the sampler then
    starts from one measured point per width instead of drawing widths it may never reach in
    a small trial budget. An encoder's: its post-training int8, then the mildest of each
    trained move."""
    ptq = PTE_PTQ if space.engine == "executorch" else ENCODER_PTQ if space.encoder else PTQ
    if space.encoder:
        return [
            *({"move": "ptq", "quant": q} for q in ptq),
            {"move": "prune", "ffn": ENCODER_FFN[0], "heads": 0.0},
            {"move": "factorize", "budget": ENCODER_BUDGETS[-1]},
            *(
                [{"move": "depth", "depth": _depths(space.encoder_blocks)[-1]}]
                * (space.encoder_blocks > 1)
            ),
        ]
    first: list[dict[str, Any]] = [{"move": "ptq", "quant": q} for q in ptq]
    sparse = {"sparsity": 0.0} if cfg.objective == "download" else {}
    for student in reversed(space.pool):  # students() lists them narrowest first
        first.append(
            {
                "move": "student",
                "student": student.label,
                "epochs_frac": 1.0,
                "temperature": 2.0,
                "channels": 0.0,
                **sparse,
            }
        )
    if sparse and space.pool:  # and the widest student 80% sparse
        first.append({**first[len(first) - len(space.pool)], "sparsity": 0.8})
    return first


def suggest(trial: Any, cfg: CompressConfig, space: Space) -> list[dict[str, Any]]:
    """One chain, its choices drawn from ``trial`` (an Optuna trial). A chain that trains
    leaves its ending to the trial (:func:`endings`: each form is measured). Pruning the
    reference is left out for an ensemble: recovering several pruned members costs more than
    a student and, in a search's epochs, loses far more."""
    if space.encoder:
        return _suggest_encoder(trial, cfg, space)
    pool = space.pool
    moves = ["ptq"] + ([] if space.ensemble else ["prune"]) + (["student"] if pool else [])
    move = trial.suggest_categorical("move", moves)
    recovery = max(1, cfg.epochs // 4)
    if move == "ptq":
        return _ptq(trial, cfg, space, PTQ)
    chain: list[dict[str, Any]] = []
    if move == "student":
        labels = [s.label for s in pool]
        student = pool[labels.index(trial.suggest_categorical("student", labels))]
        epochs = max(1, round(cfg.epochs * trial.suggest_categorical("epochs_frac", [0.5, 1.0])))
        chain.append(
            {
                "stage": "distill",
                "name": "student",
                "student": student.source,
                "student_kwargs": student.kwargs,
                "loss": "kd",
                "temperature": trial.suggest_categorical("temperature", [2.0, 4.0]),
                "alpha": 0.9,
                "epochs": epochs,
                "lr": 1e-2,
                "restore_best": False,
            }
        )
        channels = trial.suggest_categorical("channels", [0.0, 0.25, 0.5])
    else:
        channels = trial.suggest_categorical("prune_channels", [0.25, 0.5, 0.75])
    if channels:
        chain.append(
            {
                "stage": "prune",
                "name": "pruned",
                "channels": channels,
                "importance": "l1",
                "epochs": recovery,
                "lr": 3e-3,
                "recovery": "distill",
                "restore_best": False,
            }
        )
    if cfg.objective == "download":  # zeros deflate: unstructured sparsity pays there
        sparsity = trial.suggest_categorical("sparsity", SPARSITY)
        if sparsity:
            chain.append(
                {
                    "stage": "prune",
                    "name": "sparse",
                    "sparsity": sparsity,
                    "epochs": recovery,
                    "lr": 3e-3,
                    "recovery": "distill",
                    "restore_best": False,
                }
            )
    return chain


def _depths(blocks: int) -> list[int]:
    """The shallower students' depths for an encoder of ``blocks`` blocks (6: 3 and 4)."""
    return sorted({max(1, min(blocks - 1, round(blocks * f))) for f in ENCODER_DEPTHS})


def _ptq(
    trial: Any, cfg: CompressConfig, space: Space, choices: tuple[str, ...]
) -> list[dict[str, Any]]:
    """A post-training chain: ONNX Runtime's int8 as a quantize stage; ExecuTorch's is its
    export (the chain is empty, :func:`forms` ends it in an int8 ``.pte``)."""
    if space.engine == "executorch":
        trial.suggest_categorical("quant", PTE_PTQ)
        return []
    return [_quantize(trial.suggest_categorical("quant", choices), cfg.max_drop)]


def _suggest_encoder(trial: Any, cfg: CompressConfig, space: Space) -> list[dict[str, Any]]:
    """An encoder's chain (see the module docstring). Its training is distillation from the
    reference with the cosine loss at a transformer's learning rate; ``cfg.epochs`` is the
    shallower student's, recoveries get half of them."""
    blocks = space.encoder_blocks
    moves = ["ptq", "prune", "factorize"] + (["depth"] if blocks > 1 else [])
    move = trial.suggest_categorical("move", moves)
    if move == "ptq":
        return _ptq(trial, cfg, space, ENCODER_PTQ)
    train = {"lr": 1e-4, "batch_size": 16, "restore_best": False}
    recovery = {**train, "epochs": max(1, cfg.epochs // 2), "recovery": "distill"}
    if move == "depth":
        depth = trial.suggest_categorical("depth", _depths(blocks))
        return [
            {
                "stage": "distill",
                "name": "student",
                "student_from_teacher": {"depth": depth},
                "loss": "cosine",
                "alpha": 1.0,
                "epochs": cfg.epochs,
                **train,
            }
        ]
    if move == "prune":
        ffn = trial.suggest_categorical("ffn", ENCODER_FFN)
        heads = trial.suggest_categorical("heads", ENCODER_HEADS)
        entry: dict[str, Any] = {"stage": "prune", "name": "pruned", "ffn": ffn}
        if heads:
            entry["heads"] = heads
        return [{**entry, "importance": "activation", **recovery}]
    budget = trial.suggest_categorical("budget", ENCODER_BUDGETS)
    return [{"stage": "factorize", "name": "factorized", "budget": budget, **recovery}]
