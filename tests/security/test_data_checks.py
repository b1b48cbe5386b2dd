"""Data that cannot train is refused (or warned about) before any compute.

Each refusal is one :class:`DataError` line from the library and, from the CLI, one
``slimfuse train: error:`` line with exit code 2 and no traceback.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import slimfuse
from slimfuse.data import Data, load_data
from slimfuse.errors import DataError, SlimfuseWarning
from slimfuse.training import TrainConfig, _epoch_loader, _last_batch_dropped, train


def _csv(path, rows, header="a,b,label"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def _blobs(n, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, 2)) + y[:, None], y


def _rows(x, y):
    return [f"{u:.3f},{v:.3f},{k}" for (u, v), k in zip(x, y, strict=True)]


# -- refusals: (what is written, the line expected) ----------------------------------------


def _too_few(p):
    x, y = _blobs(3)
    np.savez(p / "few.npz", X=x, y=y)
    return p / "few.npz"


def _one_class(p):
    x, _ = _blobs(150)
    return _csv(p / "one.csv", _rows(x, np.full(150, 3)))


def _empty_label(p):
    x, y = _blobs(40)
    rows = _rows(x, y)
    rows[12] = f"{x[12, 0]:.3f},{x[12, 1]:.3f},"  # line 14: the header is line 1
    return _csv(p / "nolabel.csv", rows)


def _empty_cell(p):
    x, y = _blobs(40)
    rows = _rows(x, y)
    rows[4] = f"{x[4, 0]:.3f},,{y[4]}"  # line 6, column b
    return _csv(p / "nocell.csv", rows)


def _empty_cell_after_blank_line(p):
    x, y = _blobs(40)
    rows = _rows(x, y)
    rows[4] = ""  # a blank line 6 is skipped, yet counted
    rows[9] = f"  ,{x[9, 1]:.3f},{y[9]}"  # line 11, column a: blanks only
    return _csv(p / "blank.csv", rows)


REFUSALS = [
    (_too_few, r"few\.npz: 2 samples are too few to split off validation: the train split "
     r"would have 1; expected at least 2"),
    (_one_class, r"one\.csv: labels hold one class \(3\) in 108 training samples; "
     r"expected at least two"),
    (_empty_label, r"nolabel\.csv: line 14: empty label in column 'label'"),
    (_empty_cell, r"nocell\.csv: line 6, column 'b': empty cell; expected a number"),
    (_empty_cell_after_blank_line, r"blank\.csv: line 11, column 'a': empty cell"),
]  # fmt: skip
IDS = ["too-few", "one-class", "empty-label", "empty-cell", "blank-line"]


@pytest.mark.parametrize(("write", "message"), REFUSALS, ids=IDS)
def test_data_that_cannot_train_is_one_line(tmp_path, write, message):
    with pytest.raises(DataError, match=message) as err:
        load_data(str(write(tmp_path)))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("write", "message"), REFUSALS[:4], ids=IDS[:4])
def test_the_cli_refuses_with_exit_code_2(tmp_path, write, message):
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "slimfuse", "train", "--model", "mlp", "--data",
         str(write(tmp_path)), "--epochs", "1", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("slimfuse train: error:"), lines
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_one_class_of_string_labels_is_refused(tmp_path):
    x, _ = _blobs(60)
    path = _csv(tmp_path / "cats.csv", [f"{u:.3f},{v:.3f},cat" for u, v in x])
    with pytest.raises(DataError, match=r"cats\.csv: labels hold one class \('cat'\) in 60 rows"):
        load_data(str(path))


def test_a_regression_target_of_one_value_is_not_a_class_question(tmp_path):
    x, _ = _blobs(60)
    path = _csv(tmp_path / "r.csv", [f"{u:.3f},{v:.3f},0.5" for u, v in x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its validation split is small
        data = load_data(str(path))
    assert data.num_classes is None


# -- warnings ---------------------------------------------------------------------------------


def test_a_small_validation_split_is_warned_about_when_training_chooses_on_it(tmp_path):
    x, y = _blobs(60)
    np.savez(tmp_path / "small.npz", X=x, y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_data(str(tmp_path / "small.npz"))  # loading is fine: nothing is chosen yet
    assert len(data.val) == 5
    model = slimfuse.build_model("mlp", data=data, hidden=[8])
    with pytest.warns(SlimfuseWarning, match=r"small\.npz: the validation split has 5 samples; "
                      r"too few to choose the best epoch reliably \(expected at least 20"):  # fmt: skip
        slimfuse.train(model, data, config=TrainConfig(epochs=2, quiet=True))
    with warnings.catch_warnings():  # the last epoch is kept: nothing chosen, nothing said
        warnings.simplefilter("error")
        slimfuse.train(model, data, config=TrainConfig(epochs=2, quiet=True, restore_best=False))


def test_a_validation_split_smaller_than_the_classes_is_warned_about(tmp_path):
    x, y = _blobs(300, classes=50)
    np.savez(tmp_path / "many.npz", X=x, y=y)
    data = load_data(str(tmp_path / "many.npz"))
    model = slimfuse.build_model("mlp", data=data, hidden=[8])
    with pytest.warns(SlimfuseWarning, match=r"validation split has 24 samples.*at least 50"):
        slimfuse.train(model, data, config=TrainConfig(epochs=2, quiet=True))


def test_the_builtin_sets_load_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_data("digits")


# -- BatchNorm and a last batch of one sample -------------------------------------------------


def _bn_data(n_train=101):
    x, y = _blobs(n_train + 40)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return Data(
        name="blobs",
        train=TensorDataset(xt[:n_train], yt[:n_train]),
        val=TensorDataset(xt[n_train : n_train + 20], yt[n_train : n_train + 20]),
        test=TensorDataset(xt[n_train + 20 :], yt[n_train + 20 :]),
        num_classes=3,
        input_shape=(2,),
    )


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_batchnorm_leaves_out_a_last_batch_of_one_sample():
    net = _bn_net()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        net.train()(torch.zeros(1, 2))  # what one sample in train mode does
    logger = logging.getLogger("slimfuse.training")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = train(net, _bn_data(), config=TrainConfig(epochs=3, batch_size=100, quiet=True))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert result.steps == 3  # one batch of 100 an epoch; the 101st sample left out
    said = [line for line in handler.lines if "left out" in line]
    assert len(said) == 1 and "101 samples in batches of 100" in said[0], handler.lines


def test_without_batchnorm_every_sample_trains():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    result = train(net, _bn_data(), config=TrainConfig(epochs=3, batch_size=100, quiet=True))
    assert result.steps == 6


def test_resnet1d_with_a_last_batch_of_one_trains():
    x = torch.randn(141, 16)
    y = torch.arange(141) % 3
    data = Data("seq", TensorDataset(x[:101], y[:101]), TensorDataset(x[101:121], y[101:121]),
                TensorDataset(x[121:], y[121:]), num_classes=3, input_shape=(16,))  # fmt: skip
    model = slimfuse.build_model("resnet1d", num_classes=3, widths=[8, 8], blocks_per_stage=1)
    result = train(model, data, config=TrainConfig(epochs=1, batch_size=100, quiet=True))
    assert result.steps == 1


@pytest.mark.parametrize("world", [1, 2])
def test_the_other_batches_do_not_move(world):
    per_rank = 50 if world == 2 else 100
    n = 201 if world == 1 else 203  # last global batch: 1 sample, or 3 shared as 2 + 1
    ds = TensorDataset(torch.arange(n))
    for rank in range(world):
        kept = [b[0].tolist() for b in _epoch_loader(ds, per_rank, 7, world, rank)]
        bn = [b[0].tolist() for b in _epoch_loader(ds, per_rank, 7, world, rank, min_batch=2)]
        assert bn == kept[:-1] and min(map(len, bn)) == per_rank
    assert _last_batch_dropped(n, per_rank, world)
    assert not _last_batch_dropped(n + 1, per_rank, world)  # a last batch of 2 (a share each)


def test_batchnorm_and_a_single_training_sample_is_one_line():
    with pytest.raises(DataError, match=r"blobs: the train split has 1 samples, too few"):
        train(_bn_net(), _bn_data(1), config=TrainConfig(epochs=1, quiet=True))


def test_an_empty_train_split_is_one_line():
    data = _bn_data()
    data.train = TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match=r"blobs: the train split is empty"):
        train(_bn_net(), data, config=TrainConfig(epochs=1, quiet=True))
