"""Train the members of an ensemble: N seeds of one model, or one model per K-fold split.

``train_members("mnist1d_cnn", data, n=5)`` trains 5 copies from seeds ``seed .. seed+4``;
``kfold=K`` trains K members, member ``k`` on the training data without fold ``k`` (fold ``k``
is then its out-of-fold data: ``fold_indices`` says which samples). Every member is trained by
the one loop and carries its spec, so the ensemble saves as a bundle. ``jobs=N`` trains N
members at a time in separate processes, with the members sequential training gives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.folds import kfold as make_folds
from slimfuse.fusion.folds import labels, with_train_subset
from slimfuse.models.source import build_model, record
from slimfuse.tasks import Task
from slimfuse.training import SignalGuard, TrainConfig, TrainingInterrupted, train

log = logging.getLogger("slimfuse.fusion")


@dataclass
class Members:
    """The trained ``(name, model)`` pairs and, for K-fold, each member's held-out indices."""

    pairs: list[tuple[str, nn.Module]]
    fold_indices: list[np.ndarray] = field(default_factory=list)
    val_scores: dict[str, float] = field(default_factory=dict)


def train_members(
    source: str,
    data: Data,
    *,
    n: int = 5,
    kfold: int | None = None,
    config: TrainConfig | None = None,
    task: str | Task = "classification",
    model_kwargs: dict[str, Any] | None = None,
    checkpoint_dir: Any = None,
    jobs: int = 1,
) -> Members:
    """Train ``n`` seeds (or ``kfold`` fold-members) of ``source`` with the one loop.

    ``jobs > 1`` trains that many members at a time, each in its own process: on the CPU every
    process runs ``max(1, cores // jobs)`` torch threads; on CUDA member ``k`` trains on GPU
    ``k % device_count``. Every member is seeded on its own (initialisation ``seed + k``, then
    the loop's seeds), so the members are the ones sequential training gives at the same thread
    count, bit for bit. Processes are spawned: a script that calls this with ``jobs > 1`` needs
    the ``if __name__ == "__main__":`` guard.
    """
    cfg = config or TrainConfig(quiet=True)
    kw = dict(model_kwargs or {})
    if kfold is None and n < 1:
        raise FusionError(f"n={n}: expected at least 1 member")
    if jobs < 1:
        raise FusionError(f"jobs={jobs}: expected at least 1")
    from slimfuse.hardware import check_precision, resolve_device

    check_precision(resolve_device(cfg.device), cfg.precision)  # before any process starts
    folds = make_folds(labels(data), kfold, cfg.seed) if kfold is not None else None
    count = len(folds) if folds is not None else n
    names = [f"fold{k}" if folds is not None else f"seed{cfg.seed + k}" for k in range(count)]
    job = _Job(source, data, cfg, task, kw, checkpoint_dir, folds, jobs)
    if jobs == 1 or count == 1:
        done = [_train_one(job, k, names[k]) for k in range(count)]
    else:
        done = _train_parallel(job, names)
    out = Members(pairs=[])
    for k, (name, (model, lineage)) in enumerate(zip(names, done, strict=True)):
        record(model, lineage=lineage)
        out.pairs.append((name, model))
        out.val_scores[name] = float(lineage["best_val"] or 0.0)
        if folds is not None:
            out.fold_indices.append(folds[k][1])
    return out


@dataclass
class _Job:
    """What every member's training shares (sent once to each worker process)."""

    source: str
    data: Data
    config: TrainConfig
    task: str | Task
    model_kwargs: dict[str, Any]
    checkpoint_dir: Any
    folds: list[Any] | None
    jobs: int
    trust: bool = False


def _build(job: _Job, k: int) -> nn.Module:
    torch.manual_seed(job.config.seed + k)  # the initialisation follows the seed too
    return build_model(job.source, data=job.data, **job.model_kwargs)


def _train_one(
    job: _Job, k: int, name: str, device: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Member ``k``: built from seed ``seed + k``, trained by the one loop; ``(model, lineage)``."""
    data = with_train_subset(job.data, job.folds[k][0]) if job.folds is not None else job.data
    model = _build(job, k)
    member_cfg = job.config.replace(seed=job.config.seed + k)
    result = train(
        model,
        data,
        job.task,
        member_cfg if device is None else member_cfg.replace(device=device),
        description=f"member {name}",
        checkpoint_dir=None if job.checkpoint_dir is None else f"{job.checkpoint_dir}/{name}",
    )
    lineage = {
        "stage": "train-members",
        "member": name,
        "config": member_cfg.to_dict(),  # what retrains it per fold (stack, weighted)
        "best_val": result.best_metric,
        "best_epoch": result.best_epoch,
    }
    return model, lineage


_WORKER: dict[str, Any] = {}


STOP_GRACE_S = 30.0  # after a signal: how long running members get to stop at their next step


def _interrupt(signum: int, _frame: Any) -> None:
    if _WORKER.get("busy"):  # the parent gets it as the member's result
        raise TrainingInterrupted(signum, None)
    raise SystemExit(128 + signum)  # between members: the worker ends quietly


def _init_worker(job: _Job, threads: int) -> None:
    import signal

    # SIGINT (Ctrl-C reaches the whole process group) or SIGTERM (the parent forwards it):
    # in training the loop's guard stops the member at its next step (checkpointed); before
    # or after, this stops it at once. Either way the parent gets a TrainingInterrupted.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _interrupt)
    torch.set_num_threads(threads)
    _WORKER["job"] = job


def _worker(k: int, name: str, device: str | None) -> tuple[dict[str, torch.Tensor], dict]:
    """One member in a worker process: its weights (CPU tensors) and its lineage."""
    from slimfuse.trust import trusting

    job: _Job = _WORKER["job"]
    _WORKER["busy"] = True
    try:
        with trusting(job.trust):
            model, lineage = _train_one(job, k, name, device)
    finally:
        _WORKER["busy"] = False
    return {key: v.detach().cpu() for key, v in model.state_dict().items()}, lineage


def _stop(futures: list[Any], signum: int) -> None:
    """Stop the members: those not started are cancelled, those in training get ``signum``
    (the loop stops them at their next step) and are killed after :data:`STOP_GRACE_S`."""
    import multiprocessing
    import os
    from concurrent.futures import wait

    for f in futures:
        f.cancel()
    workers = multiprocessing.active_children()  # the pool's processes
    running = {f for f in futures if not f.cancelled()}
    deadline = time.monotonic() + STOP_GRACE_S
    while running and time.monotonic() < deadline:
        for w in workers:  # again and again: a worker still starting up ignores it
            if w.is_alive():
                os.kill(w.pid, signum)
        _, running = wait(running, timeout=0.5)
    for w in workers:
        if w.is_alive():
            w.kill()


def _train_parallel(job: _Job, names: list[str]) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Members in ``job.jobs`` spawned processes; each rebuilt here from its weights."""
    import multiprocessing
    import os
    import signal
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from slimfuse.hardware import resolve_device
    from slimfuse.trust import code_trusted

    device = resolve_device(job.config.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    jobs = min(job.jobs, len(names))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // jobs)
    job = _Job(**{**job.__dict__, "trust": code_trusted()})
    log.info("training %d members in %d processes (%d threads each)", len(names), jobs, threads)
    with (
        ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(job, threads),
        ) as pool,
        SignalGuard() as guard,
    ):
        # the workers start with Ctrl-C ignored (inherited): until _init_worker runs, it would
        # print a KeyboardInterrupt traceback per worker; the parent forwards it afterwards
        unguarded = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            futures = [
                pool.submit(_worker, k, name, f"cuda:{k % gpus}" if gpus else None)
                for k, name in enumerate(names)
            ]
        finally:
            signal.signal(signal.SIGINT, unguarded)
        pending, failed = set(futures), None
        while pending and guard.signum is None and failed is None:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            failed = next((f for f in finished if f.exception() is not None), None)
        if guard.signum is not None or failed is not None:  # the others stop too, then it says
            _stop(futures, guard.signum or signal.SIGINT)
            if failed is not None:
                failed.result()  # the member's own error
            raise TrainingInterrupted(guard.signum or signal.SIGINT, None)
        done = [f.result() for f in futures]
    out = []
    for k, (state, lineage) in enumerate(done):
        model = _build(job, k)
        model.load_state_dict(state)
        out.append((model.eval(), lineage))
    return out
