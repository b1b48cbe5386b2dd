"""QAT trains the int8 graph that deploys: folded BatchNorm, every quantized tensor, LSQ's scale.

The fake-quant model (``q.fake_quant_model``, PyTorch) and its int8 QDQ graph (``q``, ONNX
Runtime) must compute the same thing: the same weight grid (BatchNorm folded into the
convolution before rounding, as the export folds it), the same activation tensors rounded (the
outputs of convolutions feeding residual adds and concatenations, the adds' and concatenations'
outputs, the graph output: whatever ONNX Runtime puts a ``QuantizeLinear`` on) with the same
learned ranges.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.quantization import QuantConfig, quantize

ONE_EPOCH = slimfuse.TrainConfig(epochs=1, lr=1e-3, quiet=True)


def _graph(q):
    import onnx

    return onnx.load_from_string(q.graph_bytes()).graph


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _dequantized_weights(graph) -> list[np.ndarray]:
    """Every constant the int8 graph dequantizes (its int8 weights), as floats."""
    inits = _initializers(graph)
    out = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        q = inits[node.input[0]]
        if q.dtype not in (np.int8, np.uint8) or q.ndim < 2:
            continue
        scale = inits[node.input[1]].astype(np.float64)
        zp = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = np.reshape(zp, shape) if np.ndim(zp) else zp
        out.append((q.astype(np.float64) - zp) * scale)
    return out


def _activation_grids(graph) -> set[tuple[float, int]]:
    """(scale, zero point) of every QuantizeLinear of the int8 graph (activations)."""
    inits = _initializers(graph)
    grids = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            scale = float(inits[node.input[1]])
            zp = int(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0
            grids.add((scale, zp))
    return grids


@torch.no_grad()
def _logits(model, x) -> torch.Tensor:
    model.eval()
    return torch.as_tensor(model(x))


# -- 1. Conv-BatchNorm folding -----------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet(mnist1d):
    torch.manual_seed(0)
    model = slimfuse.build_model("resnet1d", data=mnist1d, widths=[16, 32, 32], blocks_per_stage=1)
    slimfuse.train(model, mnist1d, config=slimfuse.TrainConfig(epochs=3, lr=3e-3, quiet=True))
    return model


@pytest.fixture(scope="module")
def resnet_qat(resnet, mnist1d):
    train = slimfuse.TrainConfig(epochs=2, lr=3e-3, quiet=True)
    return quantize(resnet, QuantConfig(mode="qat"), mnist1d, train=train)


def test_qat_rounds_the_folded_conv_weights_that_deploy(resnet_qat, mnist1d, monkeypatch) -> None:
    """Every convolution of the fake-quant model runs with exactly a weight of the int8 graph:
    the BatchNorm folded in, then rounded (today's raw-weight grid is not the deployed one)."""
    used: list[torch.Tensor] = []
    conv1d = torch.nn.functional.conv1d

    def spy(x, weight, *args, **kwargs):
        used.append(weight.detach().clone())
        return conv1d(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv1d", spy)
    _logits(resnet_qat.fake_quant_model, mnist1d.example_input(8))
    monkeypatch.undo()
    deployed = [
        w.reshape(w.shape[0], w.shape[1], -1) for w in _dequantized_weights(_graph(resnet_qat))
    ]
    assert len(used) == 9  # stem, 2 convs per block, 2 shortcut convs
    for w in used:
        same = [d for d in deployed if d.shape == tuple(w.shape)]
        step = float(w.abs().max()) / 127
        err = min(float(np.abs(d - w.double().numpy()).max()) for d in same)
        assert err < 1e-3 * step, (
            f"conv weight {tuple(w.shape)} is off the deployed grid by {err / step:.3f} steps"
        )


def test_qat_batchnorm_statistics_end_frozen(resnet_qat, mnist1d) -> None:
    """The last part of QAT runs with frozen BatchNorm statistics: in training mode the
    fake-quant model no longer moves them, and computes what it computes in eval mode."""
    fq = resnet_qat.fake_quant_model
    bns = [m for m in fq.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 9
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    x = mnist1d.example_input(64)
    ref = _logits(fq, x)
    fq.train()
    try:
        with torch.no_grad():
            got = fq(x)
    finally:
        fq.eval()
    for m, (mean, var) in zip(bns, before, strict=True):
        torch.testing.assert_close(m.running_mean, mean, rtol=0, atol=0)
        torch.testing.assert_close(m.running_var, var, rtol=0, atol=0)
    torch.testing.assert_close(got, ref)


def test_qat_resnet1d_agrees_in_pytorch_and_onnx_runtime(resnet_qat, mnist1d) -> None:
    """The acceptance check: on the 1000 test samples the fake-quant model and the int8 graph
    are within 0.1 point of accuracy, and their logits within 0.5% (relative L2)."""
    test = mnist1d.loader("test", batch_size=500)
    fq = resnet_qat.fake_quant_model
    acc_torch, acc_ort = slimfuse.evaluate(fq, test), slimfuse.evaluate(resnet_qat, test)
    assert abs(acc_torch - acc_ort) <= 0.001 + 1e-9, (acc_torch, acc_ort)
    x = mnist1d.example_input(1000)
    a, b = _logits(fq, x), _logits(resnet_qat, x)
    assert float((a - b).norm() / b.norm()) < 0.005


# -- 2. LSQ step-size gradient -----------------------------------------------------------------


def test_lsq_step_size_gradient_is_scaled(trained_cnn, mnist1d, monkeypatch) -> None:
    """Esser et al.: the step size's gradient is scaled by g = 1 / sqrt(N * Qp)."""
    calls: list[tuple[int, int, float]] = []
    learnable = torch._fake_quantize_learnable_per_tensor_affine

    def spy(x, scale, zero_point, quant_min, quant_max, grad_factor=1.0):
        if torch.is_grad_enabled() and scale.requires_grad:
            calls.append((x.numel(), quant_max, grad_factor))
        return learnable(x, scale, zero_point, quant_min, quant_max, grad_factor)

    monkeypatch.setattr(torch, "_fake_quantize_learnable_per_tensor_affine", spy)
    train = slimfuse.TrainConfig(epochs=1, lr=1e-3, quiet=True, batch_size=512)
    quantize(trained_cnn, QuantConfig(mode="qat"), mnist1d, train=train)
    assert calls
    for numel, qp, g in calls:
        assert g == pytest.approx(1 / math.sqrt(numel * qp), rel=1e-6), (numel, qp, g)


# -- 3. every tensor the int8 graph quantizes --------------------------------------------------


class Branches(nn.Module):
    """No BatchNorm: two convolutions read the input, are concatenated, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 8, 3, padding=1)
        self.b = nn.Conv1d(1, 8, 5, padding=2)
        self.c = nn.Conv1d(16, 16, 3, padding=1)
        self.d = nn.Conv1d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        h = torch.cat([self.a(x), self.b(x)], dim=1).relu()
        h = (self.d(self.c(h).relu()) + h).relu()
        return self.fc(h.mean(2))


@pytest.fixture(scope="module")
def branches_qat(mnist1d):
    torch.manual_seed(0)
    model = set_spec(Branches(), ModelSpec("branches"))
    slimfuse.train(model, mnist1d, config=slimfuse.TrainConfig(epochs=3, lr=3e-3, quiet=True))
    train = slimfuse.TrainConfig(epochs=2, lr=3e-3, quiet=True)
    return quantize(model, QuantConfig(mode="qat"), mnist1d, train=train)


def test_qat_quantizes_every_tensor_the_int8_graph_quantizes(
    branches_qat, mnist1d, monkeypatch
) -> None:
    """Each QuantizeLinear of the int8 graph (conv outputs into the concatenation and the add,
    their outputs, the graph output...) is one the fake-quant model rounds to, on the same
    learned grid: the ranges learned in training are the ones exported."""
    trained: set[tuple[float, int]] = set()
    learnable = torch._fake_quantize_learnable_per_tensor_affine

    def spy(x, scale, zero_point, quant_min, quant_max, grad_factor=1.0):
        s = float(scale.detach().abs().clamp_min(1e-8))
        trained.add((s, int(torch.round(zero_point.detach().clamp(quant_min, quant_max)))))
        return learnable(x, scale, zero_point, quant_min, quant_max, grad_factor)

    monkeypatch.setattr(torch, "_fake_quantize_learnable_per_tensor_affine", spy)
    _logits(branches_qat.fake_quant_model, mnist1d.example_input(8))
    monkeypatch.undo()
    deployed = _activation_grids(_graph(branches_qat))
    assert len(deployed) >= 8
    missing = [
        (s, zp)
        for s, zp in deployed
        if not any(z == zp and abs(t - s) <= 1e-5 * s for t, z in trained)
    ]
    assert not missing, f"int8 graph grids the fake-quant model never rounds to: {missing}"


def test_qat_branches_agree_in_pytorch_and_onnx_runtime(branches_qat, mnist1d) -> None:
    x = mnist1d.example_input(1000)
    a, b = _logits(branches_qat.fake_quant_model, x), _logits(branches_qat, x)
    assert float((a - b).norm() / b.norm()) < 0.005
    assert float((a.argmax(1) != b.argmax(1)).float().mean()) <= 0.002
