"""Resume is bit-exact, and a checkpoint that is not ours is one line, never a traceback.

The model has Dropout (the global torch RNG) and the data set augments with ``numpy.random``
and ``random``: an interrupted and resumed run must end with the very weights of the run that
was never interrupted.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import threading
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import slimfuse
from slimfuse.data import Data
from slimfuse.errors import ConfigError, TrainingError
from slimfuse.training import (
    Callback,
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    train,
)

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers need the main thread",
)

CFG = TrainConfig(epochs=3, batch_size=100, lr=3e-3, quiet=True, restore_best=False, seed=5)


class Augmented(Dataset):
    """A training split with augmentation: numpy noise and a random scale per sample."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        noise = torch.from_numpy(np.random.normal(0.0, 0.1, x.shape).astype(np.float32))
        return x * (0.9 + 0.2 * random.random()) + noise, y


@pytest.fixture(scope="module")
def augmented():
    d = slimfuse.load_data("digits")
    return Data(
        name="digits-aug",
        train=Augmented(d.train),
        val=d.val,
        test=d.test,
        num_classes=d.num_classes,
        input_shape=d.input_shape,
    )


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))


class SigtermAt(Callback):
    """Sends SIGTERM to this very process after global step ``at`` (the loop's guard catches it)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, model, step):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def _consume_randomness() -> None:
    torch.rand(5)
    np.random.rand()
    random.random()


@pytest.mark.parametrize(
    ("epoch", "batch"), [(1, 5), (0, 13), (2, 1)], ids=["mid-epoch-2", "end-of-epoch-1", "epoch-3"]
)
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    augmented, tmp_path, epoch, batch
):
    steps = -(-len(augmented.train) // CFG.batch_size)  # 13 an epoch
    ref = _mlp(0)
    ref_result = train(ref, augmented, config=CFG)

    part = _mlp(0)
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGTERM") as stop:
        train(
            part,
            augmented,
            config=CFG,
            checkpoint_dir=tmp_path,
            callbacks=[SigtermAt(epoch * steps + batch)],
        )
    assert stop.value.exit_code == 143
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (epoch, batch, epoch * steps + batch)

    _consume_randomness()
    resumed = _mlp(1)  # a fresh object with other weights: everything comes from the checkpoint
    _consume_randomness()
    result = train(resumed, augmented, config=CFG, checkpoint_dir=tmp_path, resume=True)
    assert result.steps == 3 * steps
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["accuracy"] for h in result.history] == [h["accuracy"] for h in ref_result.history]


def test_a_checkpoint_without_the_new_rng_keys_still_resumes(digits, tmp_path):
    model = slimfuse.build_model("mlp", data=digits)
    cfg = TrainConfig(epochs=2, quiet=True)
    train(model, digits, config=TrainConfig(epochs=1, quiet=True), checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    old = {k: v for k, v in state.items() if k in _OLD_KEYS}
    torch.save(old, path)
    result = train(model, digits, config=cfg, checkpoint_dir=tmp_path, resume=True)
    assert result.epochs_run == 2


_OLD_KEYS = {
    "model", "optimizer", "rng", "epoch", "batch", "step", "best", "best_epoch", "stale",
    "best_state", "history", "config",
}  # fmt: skip


def _zip_not_ours() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    return buf.getvalue()


def _truncated(tmp_path) -> bytes:
    path = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.ones(1000)}, "epoch": 1}, path)
    return path.read_bytes()[:700]


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Foreign:
    pass


@pytest.mark.parametrize(
    "content",
    [
        lambda p: os.urandom(4096),
        lambda p: b"",
        _truncated,
        lambda p: _zip_not_ours(),
        lambda p: _saved({"model": {}, "epoch": 1}),  # a dict missing keys
        lambda p: _saved(torch.ones(3)),  # not a dict
        lambda p: _saved({"obj": Foreign()}),  # needs pickle beyond weights
    ],
    ids=["random-bytes", "empty", "truncated", "foreign-zip", "missing-keys", "tensor", "pickle"],
)
def test_a_checkpoint_that_is_not_ours_is_one_line(digits, tmp_path, content):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "checkpoint.pt").write_bytes(content(tmp_path))
    model = slimfuse.build_model("mlp", data=digits)
    with pytest.raises((TrainingError, ConfigError)) as err:
        train(
            model,
            digits,
            config=TrainConfig(epochs=1, quiet=True),
            checkpoint_dir=ckpt,
            resume=True,
        )
    line = str(err.value)
    assert "\n" not in line
    assert re.match(
        r"checkpoint .*checkpoint\.pt is not a slimfuse checkpoint \(.+\); delete it", line
    ), line


def test_a_checkpoint_of_another_model_is_one_line(digits, tmp_path):
    train(
        slimfuse.build_model("mlp", data=digits),
        digits,
        config=TrainConfig(epochs=1, quiet=True),
        checkpoint_dir=tmp_path,
    )
    other = slimfuse.build_model("mlp", data=digits, hidden=[16])
    with pytest.raises(TrainingError) as err:
        train(
            other,
            digits,
            config=TrainConfig(epochs=2, quiet=True),
            checkpoint_dir=tmp_path,
            resume=True,
        )
    line = str(err.value)
    assert "\n" not in line and "does not fit this model" in line and "delete it" in line, line


def test_cli_resume_from_a_corrupt_checkpoint_exits_2(tmp_path):
    from tests.helpers import run_cli

    out = tmp_path / "o"
    ckpt = tmp_path / "o.ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.pt").write_bytes(os.urandom(2048))
    proc = run_cli(
        "train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--out", str(out),
        "--quiet", "--resume",
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("slimfuse train: error: checkpoint"), lines
    assert "Traceback" not in proc.stderr


def test_resuming_under_another_optimizer_or_other_batches_is_one_line(digits, tmp_path):
    steps = -(-len(digits.train) // 100)
    cfg = TrainConfig(epochs=2, quiet=True)
    with pytest.raises(TrainingInterrupted):
        train(
            slimfuse.build_model("mlp", data=digits),
            digits,
            config=cfg,
            checkpoint_dir=tmp_path,
            callbacks=[SigtermAt(steps + 3)],
        )
    for changed, said in [
        ({"optimizer": "sgd"}, "optimizer 'adamw', now 'sgd'"),
        ({"batch_size": 50}, "batch_size 100, now 50"),  # mid epoch: the batches taken differ
    ]:
        model = slimfuse.build_model("mlp", data=digits)
        with pytest.raises(ConfigError) as err:
            other = TrainConfig(**{**cfg.to_dict(), **changed})
            train(model, digits, config=other, checkpoint_dir=tmp_path, resume=True)
        line = str(err.value)
        assert "\n" not in line and said in line and "delete it to start over" in line, line
    # more epochs is a choice, as before: it resumes
    more = TrainConfig(epochs=3, quiet=True)
    model = slimfuse.build_model("mlp", data=digits)
    assert train(model, digits, config=more, checkpoint_dir=tmp_path, resume=True).epochs_run == 3


@pytest.mark.parametrize("world", [1, 2])
def test_an_epoch_loader_draws_nothing_from_the_global_rng_and_skips_without_loading(world):
    from slimfuse.training import _epoch_loader

    loaded = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return 95

        def __getitem__(self, i):
            loaded.append(i)
            return torch.tensor([float(i)])

    before = torch.get_rng_state()
    full = [b.flatten().tolist() for b in _epoch_loader(Counting(), 10, 3, world, 0)]
    assert torch.equal(before, torch.get_rng_state())
    loaded.clear()
    rest = [b.flatten().tolist() for b in _epoch_loader(Counting(), 10, 3, world, 0, skip=3)]
    assert rest == full[3:]
    assert sorted(loaded) == sorted(int(i) for b in full[3:] for i in b)  # skipped: not loaded
