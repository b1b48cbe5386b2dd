from __future__ import annotations

import signal
import time

import pytest
import torch
from safetensors.torch import load_file

import slimfuse
from slimfuse.errors import ConfigError, TrainingError
from slimfuse.tasks import forward
from slimfuse.training import Callback, TrainConfig, load_checkpoint, train
from tests.helpers import TRAIN_MLP, run_cli


def _fresh(data, seed=0):
    torch.manual_seed(seed)
    return slimfuse.build_model("mnist1d_cnn", data=data)


def test_training_learns(trained_cnn, mnist1d):
    assert slimfuse.evaluate(trained_cnn, mnist1d.loader("test")) > 0.6  # chance is 0.1


def test_same_seed_same_weights(digits):
    cfg = TrainConfig(epochs=2, quiet=True, seed=3)
    a, b = (slimfuse.build_model("mlp", data=digits) for _ in range(2))
    b.load_state_dict(a.state_dict())
    train(a, digits, config=cfg)
    train(b, digits, config=cfg)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_checkpoint_every_epoch_and_resume_matches(digits, tmp_path):
    cfg = TrainConfig(epochs=4, quiet=True, restore_best=False)
    ref = slimfuse.build_model("mlp", data=digits)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    train(ref, digits, config=cfg)

    part = slimfuse.build_model("mlp", data=digits)
    part.load_state_dict(init)

    class Stop(Exception):
        pass

    class StopAtEpoch(Callback):
        def on_epoch_end(self, model, epoch, metric):
            if epoch == 1:
                raise Stop

    with pytest.raises(Stop):
        train(part, digits, config=cfg, checkpoint_dir=tmp_path, callbacks=[StopAtEpoch()])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1  # written after epoch 1 only
    resumed = slimfuse.build_model("mlp", data=digits)
    train(resumed, digits, config=cfg, checkpoint_dir=tmp_path, resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path):
    model = slimfuse.build_model("mlp", data=digits)
    calls = {"n": 0}

    def objective(m, batch):
        calls["n"] += 1
        out = forward(m, batch[0])
        loss = torch.nn.functional.cross_entropy(out, batch[1])
        return loss * float("nan") if calls["n"] > 15 else loss  # 13 steps an epoch

    with pytest.raises(
        TrainingError, match=r"loss became nan at epoch 2, step 3 .*last good checkpoint"
    ):
        train(
            model,
            digits,
            config=TrainConfig(epochs=3, quiet=True),
            objective=objective,
            checkpoint_dir=tmp_path,
        )
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    assert good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values())


def test_early_stopping_and_restore_best(digits):
    model = slimfuse.build_model("mlp", data=digits)
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])
    seen = {}

    def fake_metric(m):
        s = next(scores)
        seen[s] = {k: v.clone() for k, v in m.state_dict().items()}
        return s

    res = train(
        model, digits, config=TrainConfig(epochs=6, patience=2, quiet=True), evaluate_fn=fake_metric
    )
    assert res.epochs_run == 4 and res.best_epoch == 2 and res.best_metric == 0.9
    assert all(torch.equal(v, seen[0.9][k]) for k, v in model.state_dict().items())


def test_config_validation():
    with pytest.raises(ConfigError, match=r"^lr -1\.0: Input should be greater than 0$"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="optimizer 'adam': Input should be 'adamw' or 'sgd'"):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epoks 3: unknown setting; expected some of epochs"):
        TrainConfig(epoks=3)


def test_sgd_and_frozen_parameters(digits):
    model = slimfuse.build_model("mlp", data=digits)
    first = model.net[0].weight.detach().clone()
    model.net[0].weight.requires_grad_(False)
    train(model, digits, config=TrainConfig(epochs=1, optimizer="sgd", lr=0.05, quiet=True))
    assert torch.equal(model.net[0].weight, first)


def test_sigterm_checkpoints_and_resume_equals_uninterrupted(tmp_path):
    import subprocess
    import sys

    args = [
        "train",
        "--model",
        "mnist1d_cnn",
        "--data",
        "mnist1d",
        "--epochs",
        "25",
        "--quiet",
        "--seed",
        "1",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    ref = run_cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "run"
    ckpt = tmp_path / "run.ckpt" / "checkpoint.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimfuse", *args, "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, **env},
    )
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "checkpoint" in err
    state = load_checkpoint(ckpt)
    assert 1 <= state["epoch"] < 25
    assert not (out / "model.safetensors").exists()

    resumed = run_cli(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_group_by_length_batches_similar_lengths_and_covers_every_sample():
    from slimfuse.distillation.text import TokenDataset
    from slimfuse.training import _epoch_loader

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 129, (1000,), generator=gen)
    mask = (torch.arange(128)[None, :] < lengths[:, None]).long()
    ds = TokenDataset(torch.ones(1000, 128, dtype=torch.long), mask, torch.zeros(1000, 0))
    seen, spread, plain_spread = [], [], []
    for grouped, out in ((True, spread), (False, plain_spread)):
        for inputs, _target in _epoch_loader(ds, 32, seed=3, world=1, rank=0, by_length=grouped):
            n = inputs["attention_mask"].sum(1)
            out.append(int(n.max() - n.min()))
            if grouped:
                seen += n.tolist()
    assert sorted(seen) == sorted(lengths.tolist())  # every sample once per epoch
    assert sum(spread) / len(spread) < 0.2 * sum(plain_spread) / len(plain_spread)
    with pytest.raises(ConfigError, match="group_by_length needs a data set with lengths"):
        _epoch_loader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), 2, 0, 1, 0, True)


def test_progress_is_epoch_lines_in_a_log(tmp_path):
    log = run_cli(*TRAIN_MLP, "--out", str(tmp_path / "log"))
    assert log.returncode == 0, log.stderr
    assert "train epoch 1/2: loss" in log.stderr and "train epoch 2/2: loss" in log.stderr
    assert "epoch 1/2" not in log.stdout  # results on stdout, progress on stderr


@pytest.mark.parametrize("size", [(0, 0), (24, 100)])  # (0, 0): a terminal with no size
def test_progress_is_a_bar_on_a_terminal(tmp_path, size):
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    leader, follower = pty.openpty()  # a real terminal on stderr: the tqdm bar
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimfuse", *TRAIN_MLP, "--out", str(tmp_path / "tty")],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    os.close(follower)
    screen = b""
    while True:  # read while it runs: a terminal's output is gone once its last writer exits
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    text = screen.decode(errors="replace")
    assert "train: 100%|" in text and "epoch 2/2, loss" in text
    assert "epoch 1/2: loss" not in stdout  # the bar replaces the per-epoch lines
    assert "test accuracy" in stdout
