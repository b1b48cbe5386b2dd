"""Structured pruning: real channel removal, reload from bundles, ONNX parity, clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.errors import ConfigError, ModelError, UnsupportedLayerError
from slimfuse.measuring import count_macs, count_params
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.pruning.config import Channels
from slimfuse.pruning.structured import prune_structured
from slimfuse.training import TrainConfig
from tests.helpers import ROOT
from tests.pruning.nets import tiny_data


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def _resnet(data):
    return slimfuse.build_model("resnet1d", data=data, widths=[16, 32], blocks_per_stage=1)


def _concat(data):
    return slimfuse.build_model("tests.pruning.nets:concat_net", data=data, trust_code=True)


def test_residual_bn_net_gets_smaller_and_runs(data) -> None:
    model = _resnet(data)
    x = data.example_input(4)
    small = prune_structured(model, x[:1], ratio=0.5)
    assert small is not model and model.stem[0].out_channels == 16  # input left unchanged
    assert small.stem[0].out_channels == 8 and small.layers[1].conv1.out_channels == 16
    assert small.fc.out_features == data.num_classes  # the output layer keeps its size
    assert small(x).shape == (4, data.num_classes)
    assert count_params(small)[0] < 0.35 * count_params(model)[0]
    assert count_macs(small, x[:1]) < 0.35 * count_macs(model, x[:1])


def test_concat_depthwise_bn_net_prunes_and_runs(data) -> None:
    model = _concat(data)
    x = data.example_input(4)
    small = prune_structured(model, x[:1], ratio=0.5)
    assert small.dw.groups == small.dw.out_channels == small.bn.num_features
    assert small.dw.in_channels == small.a.out_channels + small.b.out_channels
    assert small.fc.in_features == small.res.out_channels == 16  # the concat group lost half
    assert small(x).shape == (4, 3)


def test_zero_ratio_is_lossless(data) -> None:
    model = _resnet(data)
    x = data.example_input(8)
    same = prune_structured(model, x[:1], ratio=0.0)
    assert torch.equal(same(x), model.eval()(x))


@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "taylor"])
def test_importance_criteria(data, importance) -> None:
    small = prune_structured(
        _resnet(data), data.example_input(1), ratio=0.25, importance=importance, data=data
    )
    assert small.stem[0].out_channels == 12


def test_global_and_targeted(data) -> None:
    model = _resnet(data)
    x = data.example_input(1)
    only = prune_structured(model, x, ratio=0.5, targets=["layers.0.conv1"])
    assert only.layers[0].conv1.out_channels == 8 and only.stem[0].out_channels == 16
    glob = prune_structured(model, x, ratio=0.5, global_pruning=True)
    assert count_params(glob)[0] < count_params(model)[0]


def test_iterative_prune_recover_and_recovery(data) -> None:
    steps = []
    model = _resnet(data)
    small = prune_structured(
        model,
        data.example_input(1),
        ratio=0.5,
        iterative_steps=2,
        recover=lambda m, s: steps.append(s),
    )
    assert steps == [0, 1] and small.stem[0].out_channels == 8
    one_epoch = TrainConfig(epochs=1, lr=1e-2, quiet=True)
    tuned = slimfuse.prune(model, Channels(channels=0.5), data, train=one_epoch)
    assert tuned.stem[0].out_channels == 8
    distil = Channels(channels=0.5, recovery="distill")
    distilled = slimfuse.prune(model, distil, data, train=one_epoch.replace(lr=1e-3))
    assert distilled.stem[0].out_channels == 8 and model.stem[0].out_channels == 16


def test_pruned_bundle_reloads_in_a_fresh_process_and_exports(data, tmp_path) -> None:
    model = _concat(data)
    slimfuse.train(model, data, config=TrainConfig(epochs=1, quiet=True))
    small = prune_structured(model, data.example_input(1), ratio=0.5)
    slimfuse.save(small, tmp_path / "b")
    back = slimfuse.load(tmp_path / "b", trust_code=True)  # a module source: code
    x = data.example_input(16)
    assert torch.equal(back(x), small(x))
    slimfuse.export(back, data.example_input(1), tmp_path / "m.onnx", atol=1e-4)
    torch.save(x, tmp_path / "x.pt")
    torch.save(small(x).detach(), tmp_path / "y.pt")
    script = textwrap.dedent(
        f"""
        import torch, slimfuse
        from slimfuse.exporting import check_parity
        m = slimfuse.load({str(tmp_path / "b")!r}, trust_code=True)
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        y = torch.load({str(tmp_path / "y.pt")!r}, weights_only=True)
        assert torch.equal(m(x), y), "outputs differ"
        print("parity", check_parity(m, {str(tmp_path / "m.onnx")!r}, x[:1]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) <= 1e-4


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, -0.5, 2, "half"])
def test_ratio_out_of_range(data, ratio) -> None:
    with pytest.raises(ConfigError, match=r"channel ratio .*: expected a number in \[0, 1\)"):
        prune_structured(_resnet(data), data.example_input(1), ratio=ratio)


def test_ratio_that_removes_every_channel(data) -> None:
    model = nn.Sequential(nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(
        ConfigError, match=r"ratio 0.7 would remove every channel of '0' \(Linear, 3 channels\)"
    ):
        prune_structured(model, data.example_input(1), ratio=0.7)


def test_no_example_input(data) -> None:
    with pytest.raises(ConfigError, match="traces the model and needs example inputs; got None"):
        prune_structured(_resnet(data), None, ratio=0.5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.from_numpy(self.fc1(x).detach().numpy())  # leaves the autograd graph
        return self.fc2(h)


def test_untraceable_model(data) -> None:
    with pytest.raises(
        ModelError,
        match=r"cannot trace _Untraceable for structured pruning: the output of 'fc1' \(Linear\) leaves the autograd graph",
    ):
        prune_structured(_Untraceable(), data.example_input(1), ratio=0.5)


def test_model_that_does_not_run_on_the_input(data) -> None:
    with pytest.raises(ModelError, match="does not run on the example inputs"):
        prune_structured(_resnet(data), torch.randn(1, 2, 3, 4), ratio=0.5)


class _Scale(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class _WithScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.scale = nn.Linear(12, 16), _Scale(16)
        self.l2, self.l3 = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(self.l2(self.scale(self.l1(x).relu())).relu())


def test_unsupported_layer_error_or_skip(data) -> None:
    model = _WithScale()
    with pytest.raises(
        UnsupportedLayerError, match=r"cannot prune channels around 'scale' \(_Scale\)"
    ):
        prune_structured(model, data.example_input(1), ratio=0.5)
    with pytest.warns(UserWarning, match=r"leaves 'scale' \(_Scale\) .* alone"):
        small = prune_structured(model, data.example_input(1), ratio=0.5, unsupported="skip")
    assert small.l1.out_features == 16 and small.l2.out_features == 8
    assert small(data.example_input(2)).shape == (2, 3)


def test_unknown_importance_and_bn_without_batchnorm(data) -> None:
    mlp = set_spec(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)), ModelSpec("x"))
    with pytest.raises(ConfigError, match="unknown importance criterion 'l3'"):
        prune_structured(mlp, data.example_input(1), ratio=0.5, importance="l3")
    with pytest.raises(
        ConfigError, match="importance 'bn' scores BatchNorm scales; Sequential has no BatchNorm"
    ):
        prune_structured(mlp, data.example_input(1), ratio=0.5, importance="bn")
    with pytest.raises(ConfigError, match="importance 'taylor' needs data"):
        prune_structured(mlp, data.example_input(1), ratio=0.5, importance="taylor")


class _SoftmaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.l1(x).relu()).softmax(-1) * 2.0


def test_output_layer_behind_ops_is_found_and_kept(data) -> None:
    model = _SoftmaxHead()
    small = prune_structured(model, data.example_input(1), ratio=0.5)
    assert small(data.example_input(2)).shape == (2, 4) and small.l1.out_features == 8
    assert small.l2.out_features == 4


def test_an_ensemble_keeps_every_members_output_layer(data, tmp_path) -> None:
    from slimfuse.fusion.ensemble import MeanFusion

    members = [(f"m{i}", _resnet(data)) for i in range(2)]
    fused = MeanFusion(members, space="logits")
    x = data.example_input(4)
    small = prune_structured(fused, x[:1], ratio=0.5)
    for name in ("m0", "m1"):
        member = small.members[name]
        assert member.stem[0].out_channels == 8 and member.fc.out_features == data.num_classes
    assert small(x).shape == (4, data.num_classes)
    assert count_params(small)[0] < 0.35 * count_params(fused)[0]
    slimfuse.save(small, tmp_path / "b")
    assert torch.equal(slimfuse.load(tmp_path / "b")(x), small(x))
