"""The one training loop, used by every stage that trains.

Training members, fine-tuning after pruning, distillation, quantization-aware training, mutual
learning and fusion heads all come through :func:`train`. It owns, once: seeding, the optimizer
and cosine schedule, early stopping on the validation metric, progress, checkpoints every epoch
and ``resume``, SIGINT/SIGTERM (finish the step, checkpoint, exit 130/143), the NaN/Inf guard
and DDP under ``torchrun`` (gloo on CPU).

The loop owns its random streams: it seeds torch, numpy and Python's ``random`` from the config's
seed, the epoch loaders draw from their own generators (seeded from the seed and the epoch), and a
checkpoint holds the torch (CPU and, once used, CUDA), numpy and ``random`` states, restored last
thing before the first step. So a run interrupted and resumed ends with the very weights of the
run that was never interrupted, Dropout and augmentation in the data set included.

What differs between stages is pluggable: ``objective(model, batch) -> loss`` replaces the task
loss (distillation, mutual learning), ``callbacks`` run after each optimizer step and epoch
(sparsity schedules), ``evaluate_fn(model) -> float`` (or ``(metric, loss)``) replaces the
validation metric.

Which epoch is the best (``restore_best``, ``patience``) is decided by ``best_by``. With
``"metric"`` (the default) the validation metric decides, ties broken by the lower validation
loss, then by the later epoch: on a small validation split the metric saturates (46 samples all
right from the first epoch), and the first epoch to reach it is rarely the best one; the loss
still tells the epochs apart. With ``"loss"`` the validation loss alone decides (ties: the later
epoch). A custom ``evaluate_fn`` that returns only a metric breaks ties by the later epoch.
Patience counts the epochs since the last one strictly better (a tie in metric and loss is
taken as the best epoch but does not reset it).

Devices and precision: ``config.device`` (``auto``: CUDA, else MPS, else the CPU) is where the
model, each batch and the objective's own modules (a distillation teacher, its cache) live while
training; ``config.precision`` runs the forward pass and loss under ``torch.autocast`` (bf16, or
fp16 with a ``GradScaler``; fp16 on the CPU is refused). Validation runs in fp32 on the same
device; a custom ``evaluate_fn`` gets the model on the CPU (its own loaders need no device).
Checkpoints hold CPU tensors, so they resume on any device, and the trained model is returned
on the CPU, in float32. An objective that holds modules moves them with a ``to(device)`` method.

A model may carry constraints on its own weights (:func:`apply_constraints`: a submodule with a
``slimfuse_constraint``, such as the zero mask of a pruned layer); the loop re-imposes them before
the first step and after every optimizer step, so no training, whoever runs it, undoes them.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from slimfuse.config import TrainConfig
from slimfuse.data import Data, check_val_size
from slimfuse.errors import ConfigError, DataError, SlimfuseError, TrainingError
from slimfuse.hardware import autocast, check_precision, resolve_device, to_cpu, to_device
from slimfuse.models.source import check_float_model
from slimfuse.tasks import Task, forward, get_task, scores
from slimfuse.training.batches import _epoch_loader, _last_batch_dropped, _Progress
from slimfuse.training.checkpoint import (
    CHECKPOINT,
    _check_same_settings,
    _not_ours,
    _rng_restorer,
    _rng_state,
    _save_checkpoint,
    _summary,
    load_checkpoint,
    seed_all,
)

# a module's own callable ``constraint(module)``, re-imposed by the loop (apply_constraints)
CONSTRAINT = "slimfuse_constraint"
Objective = Callable[[nn.Module, Any], torch.Tensor]
log = logging.getLogger("slimfuse.training")


class TrainingInterrupted(SlimfuseError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``exit_code`` is 130/143."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint
        where = f"; checkpoint at {checkpoint}, continue with resume" if checkpoint else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name}{where}")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (train-members --jobs)
        return type(self), (self.exit_code - 128, self.checkpoint)


class Callback:
    """Hooks into the loop; override what you need."""

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None: ...

    def on_step_end(self, model: nn.Module, step: int) -> None: ...

    def on_epoch_end(self, model: nn.Module, epoch: int, metric: float) -> None: ...


@dataclass
class TrainResult:
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float | None = None  # the best epoch's validation loss, when known


Evaluation = tuple[float, float | None]


def _as_evaluation(value: Any) -> Evaluation:
    """``evaluate_fn``'s answer as ``(metric, loss or None)``."""
    if isinstance(value, (tuple, list)):
        metric, loss = value
        return float(metric), None if loss is None else float(loss)
    return float(value), None


def is_better(
    task: Task, best_by: str, new: Evaluation, best: Evaluation | None
) -> tuple[bool, bool]:
    """``(take, improved)`` for an epoch scoring ``new`` against the best so far.

    ``take``: it becomes the best epoch (better, or tied: the later epoch wins a tie);
    ``improved``: strictly better (what resets patience). ``best_by="metric"``: the metric
    decides, ties broken by the lower loss (when both are known); ``"loss"``: the loss decides
    (the metric where no loss is known).
    """
    if best is None:
        return True, True
    (m, loss), (bm, bloss) = new, best
    has_loss = loss is not None and bloss is not None
    if best_by == "loss" and has_loss:
        return loss <= bloss, loss < bloss  # type: ignore[operator]
    if task.better(m, bm):
        return True, True
    if m != bm:
        return False, False
    if has_loss:
        return loss <= bloss, loss < bloss  # type: ignore[operator]
    return True, False


@torch.no_grad()
def apply_constraints(model: nn.Module) -> int:
    """Re-impose the constraints that ``model``'s modules carry; returns how many ran.

    A module constrains its own weights with a callable attribute ``slimfuse_constraint``
    (:data:`CONSTRAINT`, set with ``object.__setattr__``): ``constraint(module)`` is called with
    the module, in place, without gradients (a pruned layer's zero mask: ``weight *= mask``). The
    constraint travels with the module (copies, members of a fused model, a layer wrapped by
    another), and the loop knows nothing of what it does.
    """
    n = 0
    for m in model.modules():
        constraint = m.__dict__.get(CONSTRAINT)
        if constraint is not None:
            constraint(m)
            n += 1
    return n


# -- distributed ------------------------------------------------------------------------------


def trainable_copy(model: nn.Module) -> nn.Module:
    """A deep copy that trains: every parameter ``requires_grad``, no forward hooks.

    What a stage that changes a model works on, so that a model frozen elsewhere (a distillation
    teacher, a fusion member) can still be fine-tuned, pruned or quantization-aware trained, and
    hooks that belong to the original (feature taps) do not follow it.
    """
    new = copy.deepcopy(model)
    for m in new.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return new.requires_grad_(True)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients, in place (a teacher, a fusion member): BatchNorm statistics
    and dropout stay fixed and no optimizer can change the weights. Returns ``model``; give it
    a copy (``freeze(copy.deepcopy(m))``) to leave the caller's model as it is."""
    model.requires_grad_(False)
    model.eval()
    return model


def distributed() -> tuple[int, int]:
    """``(rank, world_size)``; initialises a gloo process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    return distributed()[0] == 0


# -- the loop ---------------------------------------------------------------------------------


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag (``signum``) that the loop checks after each step (and
    that a parent of training processes checks while it waits)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= cfg.warmup_steps:
        return cfg.lr
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if not params:
        raise ConfigError(
            "nothing to train: the model has no parameter with requires_grad=True (a model used "
            "as a distillation teacher or fusion member is frozen; train "
            "slimfuse.training.trainable_copy(model) instead)"
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(
    model: nn.Module,
    data: Data,
    task: str | Task = "classification",
    config: TrainConfig | None = None,
    *,
    objective: Objective | None = None,
    callbacks: Sequence[Callback] = (),
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``data``'s train split; returns the run's summary.

    A model with BatchNorm does not train on a last batch of one sample (BatchNorm in train mode
    cannot normalise one value per channel, and on one sample its statistics are noise): when
    an epoch's last batch (a process's share of it, under DDP) would hold exactly one sample, it
    is left out of every epoch, said once on the ``slimfuse.training`` logger at INFO. Every
    other batch is the one it would be without BatchNorm.
    """
    cfg = config or TrainConfig()
    task = get_task(task)
    rank, world = distributed()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    if resume and (ckpt is None or not ckpt.is_file()):
        raise ConfigError(f"resume asked but there is no checkpoint at {ckpt}")

    device = resolve_device(cfg.device)
    check_precision(device, cfg.precision)
    on_cpu = device.type == "cpu"
    seed_all(cfg.seed)
    model.to(device)
    if callable(getattr(objective, "to", None)):
        objective.to(device)  # type: ignore[union-attr]
    net: nn.Module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        check_float_model(model, "training", "train the float model (or quantize with mode 'qat')")
    opt = _optimizer(params, cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    if objective is None:
        task_loss = task.loss_for(model)  # standardized targets: the loss in their units
        objective = lambda m, batch: _task_objective(task, task_loss, m, batch)  # noqa: E731
    if evaluate_fn is None:
        if cfg.epochs > 1 and (cfg.restore_best or cfg.patience is not None):
            check_val_size(data)  # the best epoch is chosen on it
        evaluate_fn = lambda m: _val_scores(m, data, task, device)  # noqa: E731
    elif not on_cpu:
        evaluate_fn = _on_cpu(evaluate_fn, device)

    train_set = data.split("train")
    per_rank = cfg.batch_size // world
    n_train = len(train_set)
    if n_train == 0:
        raise DataError(f"{data.name}: the train split is empty; expected at least one sample")
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    min_batch = 2 if has_bn else 1
    if min_batch > 1 and _last_batch_dropped(n_train, per_rank, world):
        if n_train < cfg.batch_size:
            raise DataError(
                f"{data.name}: the train split has {n_train} samples, too few for batches of "
                f"at least 2 in each of {world} processes (the model has BatchNorm)"
            )
        steps_per_epoch -= 1
        if rank == 0:
            last = n_train % cfg.batch_size
            what = "1 sample" if world == 1 else f"{last} samples, 1 in some of {world} processes"
            log.info(
                "train split of %d samples in batches of %d: the last batch of each epoch "
                "(%s) is left out, as BatchNorm cannot train on one sample",
                n_train,
                cfg.batch_size,
                what,
            )
    total_steps = steps_per_epoch * cfg.epochs

    epoch, skip, step = 0, 0, 0
    best: float | None = None
    best_loss: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    stale = 0
    restore_rng: Callable[[], None] | None = None
    if resume and ckpt is not None:
        st = load_checkpoint(ckpt)
        try:
            restore_rng = _rng_restorer(st)
            epoch, skip, step = int(st["epoch"]), int(st["batch"]), int(st["step"])
            best, best_epoch, stale = st["best"], st["best_epoch"], int(st["stale"])
            best_loss = None if st.get("best_loss") is None else float(st["best_loss"])
            best_state, history = st["best_state"], list(st["history"])
            if min(epoch, skip, step) < 0:
                raise ValueError(f"position epoch {epoch}, batch {skip}, step {step}")
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise _not_ours(ckpt, _summary(exc)) from exc
        _check_same_settings(ckpt, st.get("config"), skip, cfg)
        try:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            if scaler is not None and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            if best_state is not None and set(best_state) != set(model.state_dict()):
                raise ValueError("its best weights have other names than the model's")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise TrainingError(
                f"checkpoint {ckpt} does not fit this model ({_summary(exc)}); "
                "delete it to start over"
            ) from exc

    def checkpoint(epoch_: int, batch_: int) -> None:
        if ckpt is None or rank != 0:
            return
        _save_checkpoint(
            ckpt,
            {
                "model": to_cpu(model.state_dict()),
                "optimizer": to_cpu(opt.state_dict()),
                "scaler": scaler.state_dict() if scaler is not None else None,
                **_rng_state(),
                "epoch": epoch_,
                "batch": batch_,
                "step": step,
                "best": best,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
                "stale": stale,
                "best_state": best_state,
                "history": history,
                "config": cfg.to_dict(),
            },
        )

    apply_constraints(model)
    for cb in callbacks:
        cb.on_train_begin(model, total_steps)
    if restore_rng is not None:  # last: whatever drew at start-up has drawn
        restore_rng()
    start = time.perf_counter()
    progress = _Progress(not cfg.quiet and rank == 0, description, total_steps, step, cfg.epochs)
    with SignalGuard() as guard, progress:
        while epoch < cfg.epochs:
            loader = _epoch_loader(
                train_set,
                per_rank,
                cfg.seed + epoch,
                world,
                rank,
                cfg.group_by_length,
                skip=skip,
                min_batch=min_batch,
            )
            net.train()
            running, count = 0.0, 0
            for i, batch in enumerate(loader, start=skip):
                for group in opt.param_groups:
                    group["lr"] = _lr_at(cfg, step, total_steps)
                if not on_cpu:
                    batch = to_device(batch, device)
                with autocast(device, cfg.precision):
                    loss = objective(net, batch)
                if not torch.isfinite(loss):
                    where = f"; last good checkpoint: {ckpt}" if ckpt and ckpt.is_file() else ""
                    raise TrainingError(
                        f"loss became {float(loss.detach())} at epoch {epoch + 1}, step {i + 1} "
                        f"(lr {opt.param_groups[0]['lr']:.3g}); lower the learning rate{where}"
                    )
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if cfg.max_grad_norm:
                        nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                else:  # fp16: scaled loss; a step with inf/NaN gradients is skipped
                    scaler.scale(loss).backward()
                    if cfg.max_grad_norm:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    scaler.step(opt)
                    scaler.update()
                step += 1
                apply_constraints(model)
                for cb in callbacks:
                    cb.on_step_end(model, step)
                running += float(loss.detach())
                count += 1
                progress.step(running / count)
                if guard.signum is not None:
                    checkpoint(epoch, i + 1)
                    raise TrainingInterrupted(guard.signum, ckpt if rank == 0 else None)
            skip = 0
            metric, val_loss = _as_evaluation(evaluate_fn(model))
            row = {"epoch": epoch + 1, "loss": running / max(count, 1), task.metric: metric}
            if val_loss is not None:
                row["val_loss"] = val_loss
            history.append(row)
            for cb in callbacks:
                cb.on_epoch_end(model, epoch, metric)
            take, improved = is_better(
                task,
                cfg.best_by,
                (metric, val_loss),
                None if best is None else (best, best_loss),
            )
            if take:
                best, best_loss, best_epoch = metric, val_loss, epoch + 1
                if cfg.restore_best:
                    state = model.state_dict()
                    best_state = copy.deepcopy(state) if on_cpu else to_cpu(state)
                else:
                    best_state = None
            stale = 0 if improved else stale + 1
            shown = f"val {task.metric} {metric:.4f}"
            if val_loss is not None:
                shown += f", val loss {val_loss:.4f}"
            progress.epoch(epoch + 1, running / max(count, 1), shown)
            epoch += 1
            checkpoint(epoch, 0)
            if cfg.patience is not None and stale >= cfg.patience:
                progress.say(f"  early stop: no better epoch for {cfg.patience} epochs")
                break
    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    if not on_cpu:
        model.to("cpu")
        if callable(getattr(objective, "to", None)):
            objective.to("cpu")  # type: ignore[union-attr]
    model.eval()
    return TrainResult(
        best, best_epoch, epoch, step, time.perf_counter() - start, history, best_loss
    )


def _task_objective(
    task: Task, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: Any, batch: Any
) -> torch.Tensor:
    inputs, target = task.unpack(batch)
    return loss(forward(model, inputs), target)


def _val_scores(model: nn.Module, data: Data, task: Task, device: torch.device) -> Evaluation:
    """The validation metric and loss, in one pass (the model on ``device``; scores on the CPU)."""
    loader = data.loader("val", batch_size=256)
    if device.type == "cpu":
        s = scores(model, loader, task)
    else:
        was = model.training
        model.eval()
        try:
            batches = ((to_device(inputs, device), y) for inputs, y in map(task.unpack, loader))
            s = scores(_OnDevice(model), batches, task)
        finally:
            model.train(was)
    return s[task.metric], s["loss"]


class _OnDevice:
    """Runs a model on its device and hands the output back to the CPU in float32."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs).float().cpu()


def _on_cpu(evaluate_fn: Callable[[nn.Module], Any], device: torch.device) -> Callable:
    """``evaluate_fn`` called with the model moved to the CPU (then back to ``device``)."""

    def run(model: nn.Module) -> Any:
        model.to("cpu")
        try:
            return evaluate_fn(model)
        finally:
            model.to(device)

    return run
