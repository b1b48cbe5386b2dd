"""Checkpoints of the training loop: written atomically, read back with ``weights_only`` and
checked (one line for anything that is not one), with the random states that make a resumed run
the run that was never interrupted."""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimfuse.atomic import atomic_file
from slimfuse.config import TrainConfig
from slimfuse.errors import ConfigError, TrainingError

CHECKPOINT = "checkpoint.pt"

# what every checkpoint holds; ``rng_numpy``, ``rng_python`` and ``rng_cuda`` are newer and optional
_CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "rng",
    "epoch",
    "batch",
    "step",
    "best",
    "best_epoch",
    "stale",
    "best_state",
    "history",
)  # "best_loss" is newer and optional too


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()  # torch.save's own writer hides why a write failed (a full disk)
    torch.save(state, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train` (tensors and plain values only: ``weights_only``).

    Anything else (random bytes, a truncated file, a foreign zip or pickle, a dict without the
    loop's keys) is a one-line :class:`TrainingError`.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: what torch raises depends on the bytes
        empty = path.is_file() and path.stat().st_size == 0
        raise _not_ours(path, "empty file" if empty else f"torch.load: {_summary(exc)}") from exc
    if not isinstance(state, dict):
        raise _not_ours(path, f"it holds a {type(state).__name__}, expected a dict")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise _not_ours(path, f"no {', '.join(missing)}")
    return state


def _not_ours(path: Path, why: str) -> TrainingError:
    return TrainingError(
        f"checkpoint {path} is not a slimfuse checkpoint ({why}); delete it to start over"
    )


def _summary(exc: BaseException, limit: int = 160) -> str:
    """One short line of an exception's message (torch's are long, multi-line, with ANSI codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:  # the reason, not torch's advice to drop weights_only
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if line.endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for MLP:"
        line = f"{line} {lines[1]}"
    line = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", line)
    line = re.split(r"(?<=\.)\s+(?=[A-Z])", line)[0]  # the first sentence
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def _rng_state() -> dict[str, Any]:
    """The global random states, as tensors and plain values (``weights_only`` loads them)."""
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, words, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "rng": torch.get_rng_state(),
        "rng_numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "rng_python": {
            "version": int(version),
            "state": torch.tensor(words, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    # CUDA draws happen only once CUDA is in use; asking earlier would start it for nothing
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_restorer(state: dict[str, Any]) -> Callable[[], None]:
    """Checks a checkpoint's random states now; the returned call sets them (what there is:
    a checkpoint from before numpy and ``random`` states were kept restores torch's only)."""
    cpu = state["rng"]
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8:
        raise TypeError("its 'rng' is not a torch random state")
    torch.Generator().set_state(cpu)  # each state is tried on a throwaway generator first
    np_state = py_state = None
    if "rng_numpy" in state:
        n = state["rng_numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np_state = (
            "MT19937",
            keys,
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
        np.random.RandomState().set_state(np_state)
    if "rng_python" in state:
        p = state["rng_python"]
        py_state = (int(p["version"]), tuple(int(w) for w in p["state"].tolist()), p["gauss_next"])
        random.Random().setstate(py_state)
    cuda = state.get("rng_cuda")
    if cuda is not None and not all(isinstance(c, torch.Tensor) for c in cuda):
        raise TypeError("its 'rng_cuda' is not a list of CUDA random states")

    def restore() -> None:
        torch.set_rng_state(cpu)
        if np_state is not None:
            np.random.set_state(np_state)
        if py_state is not None:
            random.setstate(py_state)
        if (
            cuda is not None
            and torch.cuda.is_available()
            and torch.cuda.device_count() >= len(cuda)
        ):
            torch.cuda.set_rng_state_all(cuda)

    return restore


def _check_same_settings(path: Path, saved: Any, batch: int, cfg: TrainConfig) -> None:
    """Refuse to resume under settings the checkpoint cannot continue: another optimizer (its
    state does not fit), or, in the middle of an epoch, other batches (``batch_size``, ``seed``,
    ``group_by_length``: the batches already taken would not be the ones left out). Other
    settings (more epochs, another learning rate) may change on purpose, as before."""
    if not isinstance(saved, dict):
        return  # no record of them: use what is there
    keys = ["optimizer"] + (["batch_size", "seed", "group_by_length"] if batch else [])
    now = cfg.to_dict()
    changed = [f"{k} {saved[k]!r}, now {now[k]!r}" for k in keys if saved.get(k, now[k]) != now[k]]
    if changed:
        raise ConfigError(
            f"checkpoint {path} was written with other training settings ({'; '.join(changed)}); "
            "resume with the same settings or delete it to start over"
        )


def seed_all(seed: int) -> None:
    """Seed torch, numpy and Python's ``random`` (what a run's randomness draws from)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
