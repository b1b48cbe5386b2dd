"""Devices and precision in the one training loop, and members trained in parallel processes.

What a CPU can check: the device plumbing with ``device="cpu"`` (CPU checkpoints that load
anywhere, a trained model on the CPU), bf16 autocast against fp32, one-line refusals of devices
and precisions this machine lacks, and ``train-members --jobs 2`` against sequential training.
"""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.cli.main import main
from slimfuse.config import TrainConfig
from slimfuse.errors import ConfigError
from slimfuse.hardware import check_precision, resolve_device, to_cpu
from slimfuse.tasks import evaluate
from slimfuse.training import CHECKPOINT, load_checkpoint, train

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cpu_training_saves_cpu_checkpoints_and_reloads_elsewhere(mnist1d, tmp_path):
    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", data=mnist1d)
    cfg = TrainConfig(epochs=2, quiet=True, device="cpu")
    train(model, mnist1d, config=cfg, checkpoint_dir=tmp_path / "ckpt")
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    state = load_checkpoint(tmp_path / "ckpt" / CHECKPOINT)
    tensors = [t for t in _tensors(state)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert state["config"]["device"] == "cpu" and state["config"]["precision"] == "fp32"
    # the raw file loads with map_location onto another device (here: the CPU, by name)
    raw = torch.load(tmp_path / "ckpt" / CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(raw["model"]) == set(model.state_dict())
    slimfuse.save(model, tmp_path / "bundle")
    again = slimfuse.load(tmp_path / "bundle")
    x = mnist1d.example_input(8)
    assert torch.equal(model(x), again(x))
    # "auto" on a machine without a GPU is the CPU, and trains the very same weights
    torch.manual_seed(0)
    auto = slimfuse.build_model("mlp", data=mnist1d)
    train(auto, mnist1d, config=cfg.replace(device="auto"), checkpoint_dir=tmp_path / "ckpt2")
    if NO_CUDA and NO_MPS:
        assert _same_weights(auto, model)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def test_to_cpu_copies_nested_state():
    state = {"a": torch.ones(2), "b": [torch.zeros(1), {"c": torch.arange(3)}], "n": 3}
    out = to_cpu(state)
    assert out["n"] == 3 and torch.equal(out["b"][1]["c"], torch.arange(3))
    assert out["a"].data_ptr() != state["a"].data_ptr()  # a copy, not the live tensor


def test_bf16_autocast_trains_within_a_point_of_fp32(mnist1d):
    accs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = slimfuse.build_model("mnist1d_cnn", data=mnist1d)
        cfg = TrainConfig(epochs=10, quiet=True, device="cpu", precision=precision)
        train(model, mnist1d, config=cfg)
        assert next(model.parameters()).dtype == torch.float32  # autocast: weights stay fp32
        accs[precision] = evaluate(model, mnist1d.loader("test", batch_size=256))
    assert accs["fp32"] > 0.6  # it learned (chance: 10%)
    assert abs(accs["bf16"] - accs["fp32"]) <= 0.01, accs


@pytest.mark.parametrize(
    ("device", "precision", "message"),
    [
        pytest.param(
            "cuda",
            "fp32",
            "CUDA is not available",
            marks=pytest.mark.skipif(not NO_CUDA, reason=""),
        ),
        pytest.param(
            "cuda:0",
            "fp32",
            "CUDA is not available",
            marks=pytest.mark.skipif(not NO_CUDA, reason=""),
        ),
        pytest.param(
            "mps", "fp32", "no MPS", marks=pytest.mark.skipif(not NO_MPS, reason="has MPS")
        ),
        ("cpu", "fp16", "float16 autocast needs a GPU"),
    ],
)
def test_devices_and_precisions_this_machine_lacks_are_one_line(device, precision, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_precision(resolve_device(device), precision)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_refuses_bad_devices_in_one_line(capsys, tmp_path):
    base = ["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--quiet"]
    for extra, message in [
        (["--device", "cuda"], "device cuda: CUDA is not available here"),
        (["--device", "cuda:3"], "device cuda:3: CUDA is not available here"),
        (["--device", "gpu"], "--device gpu: String should match pattern"),
        (["--device", "cpu", "--precision", "fp16"], "precision fp16: float16 autocast"),
    ]:
        assert main([*base, *extra, "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "m").exists()


def test_out_of_range_cuda_index_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a fault: one GPU "present"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"there is 1 CUDA device \(cuda:0..cuda:0\)"):
        resolve_device("cuda:2")


def test_train_members_jobs_2_equals_sequential_bit_for_bit(tmp_path, capsys):
    args = ["train-members", "--model", "mlp", "--kw", "hidden=[32]", "--data", "digits"]
    args += ["--n", "3", "--epochs", "2", "--seed", "4", "--device", "cpu", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "seq")]) == 0
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "par")]) == 0
    seq, par = slimfuse.load(tmp_path / "seq"), slimfuse.load(tmp_path / "par")
    assert seq.names == par.names == ["seed4", "seed5", "seed6"]
    for name in seq.names:
        assert _same_weights(seq.members[name], par.members[name]), name
    assert not _same_weights(seq.members["seed4"], seq.members["seed5"])  # seeded per member
    out = capsys.readouterr().out
    assert out.count("seed5: best val") == 2
