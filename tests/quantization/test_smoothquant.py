"""SmoothQuant as published (s = max|X|^a / max|W|^(1-a)), 1/s folded into a LayerNorm where it can go."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.quantization import QuantConfig, quantize
from slimfuse.quantization.smoothquant import SmoothedLinear, layernorm_readers, smooth


class PreLN(nn.Module):
    """A pre-LN block (GPT, OPT): the LayerNorm output goes to query, key and value only."""

    def __init__(
        self, d: int = 16, dropout: bool = False, extra_reader: bool = False, shift: bool = False
    ) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.1) if dropout else nn.Identity()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, 4)
        self.extra_reader, self.shift = extra_reader, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.ln(x))  # dropout in eval passes the tensor through
        if self.shift:  # changed in place: 1/s in the LayerNorm would not commute with it
            h.add_(0.5)
        mixed = torch.sigmoid(self.q(h) * self.k(h)) * self.v(h)
        if self.extra_reader:  # something besides the linears reads the LayerNorm output
            mixed = mixed + h.mean(-1, keepdim=True)
        return self.out(x + mixed)  # the residual reads x, the LayerNorm's input


class PostLN(nn.Module):
    """A post-LN block (BERT): the residual reads the LayerNorm output too."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.ln, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return self.ln2(h + self.q(h) * self.k(h))


def _model(cls: type[nn.Module], **kwargs) -> nn.Module:
    torch.manual_seed(0)
    module = cls(**kwargs)
    for m in module.modules():  # LayerNorms with weights and biases of their own
        if isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return set_spec(module, ModelSpec("t")).eval()


def _outlier_inputs(n: int = 128, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g)


def _with_outlier_ln(model: nn.Module) -> nn.Module:
    """Give the LayerNorm an outlier output channel (as trained transformers have)."""
    with torch.no_grad():
        model.ln.weight[3] = 40.0
    return model


def test_the_scale_is_the_published_one_from_activations_and_weights() -> None:
    torch.manual_seed(0)
    model = set_spec(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), ModelSpec("t"))
    x = torch.randn(64, 16)
    x[:, 3] *= 40  # an outlier channel
    smoothed = smooth(model, [x], alpha=0.5, method="smoothquant")
    assert smoothed.smoothed_layers == ["0"]
    a = x.abs().amax(0)
    w = model[0].weight.abs().amax(0)
    expected = a.pow(0.5) / w.pow(0.5)  # s_j = max|X_j|^a / max|W_:,j|^(1-a)
    torch.testing.assert_close(smoothed[0].inv_scale, 1 / expected)
    torch.testing.assert_close(smoothed[0].linear.weight, model[0].weight * expected)
    torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)


def test_layers_sharing_an_input_share_the_scale_of_their_largest_weights() -> None:
    model = _model(PostLN)
    x = _outlier_inputs()
    model = _with_outlier_ln(model)
    smoothed = smooth(model, [x], alpha=0.8, min_ratio=1.0, method="smoothquant")
    assert smoothed.smoothing_groups[0] == ["q", "k"]
    h = model.ln(x).detach()
    w = torch.maximum(model.q.weight.abs().amax(0), model.k.weight.abs().amax(0))
    s = h.abs().amax(0).pow(0.8) / w.pow(0.2)
    torch.testing.assert_close(smoothed.q.inv_scale, 1 / s)
    assert torch.equal(smoothed.q.inv_scale, smoothed.k.inv_scale)


@pytest.mark.parametrize("dropout", [False, True])
def test_one_over_s_folds_into_a_layernorm_read_only_by_the_smoothed_layers(dropout) -> None:
    model = _with_outlier_ln(_model(PreLN, dropout=dropout))
    x = _outlier_inputs()
    smoothed = smooth(model, [x], alpha=0.5, method="smoothquant")
    assert smoothed.smoothing_folded == {"ln": ["q", "k", "v"]}
    assert all(type(smoothed.get_submodule(n)) is nn.Linear for n in "qkv")  # no multiply
    assert not torch.equal(smoothed.ln.weight, model.ln.weight)
    assert not torch.equal(smoothed.ln.bias, model.ln.bias)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)
    kept = smooth(
        model, [x], alpha=0.5, method="smoothquant", fold=False
    )  # the run-time multiply instead
    assert kept.smoothing_folded == {} and isinstance(kept.q, SmoothedLinear)
    with torch.no_grad():
        torch.testing.assert_close(kept(x), smoothed(x), rtol=1e-4, atol=1e-4)


def test_no_fold_where_anything_else_reads_the_layernorm_output() -> None:
    x = _outlier_inputs()
    for model in (_model(PostLN), _model(PreLN, extra_reader=True), _model(PreLN, shift=True)):
        model = _with_outlier_ln(model)
        smoothed = smooth(model, [x], alpha=0.5)
        assert smoothed.smoothing_folded == {}
        assert isinstance(smoothed.q, SmoothedLinear) and torch.equal(
            smoothed.ln.weight, model.ln.weight
        )
        with torch.no_grad():
            torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_fold_that_would_change_the_model_is_undone(monkeypatch) -> None:
    from slimfuse.quantization import smoothquant

    model = _with_outlier_ln(_model(PostLN))
    x = _outlier_inputs()
    monkeypatch.setattr(smoothquant, "layernorm_readers", lambda *a: {"ln": ["k", "q"]})  # wrong
    smoothed = smooth(model, [x], alpha=0.5, method="smoothquant")
    assert smoothed.smoothing_folded == {} and isinstance(smoothed.q, SmoothedLinear)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)


def test_bert_layernorms_feed_residuals_and_are_not_folded() -> None:
    from tests.helpers import TINY_BERT, bert_tokens

    torch.manual_seed(0)
    model = slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()
    batch = bert_tokens(8, 12, seed=1, pad_from=9)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert layernorm_readers(model, batch, linears) == {}  # every one also feeds a residual add
    smoothed = smooth(model, [batch], alpha=0.5, min_ratio=1.0)
    assert smoothed.smoothed_layers and smoothed.smoothing_folded == {}
    with torch.no_grad():
        torch.testing.assert_close(smoothed(**batch), model(**batch), rtol=1e-4, atol=1e-4)


def test_folded_int8_graph_has_no_multiply_and_stays_close() -> None:
    model = _with_outlier_ln(_model(PreLN))
    x = _outlier_inputs(256)
    cfg = QuantConfig(mode="dynamic", smoothquant=0.5, smooth_method="smoothquant")
    q = quantize(model, cfg, calibration=[x])
    assert q.info["smoothing_folded"] == {"ln": ["q", "k", "v"]}
    graph = onnx.load_from_string(q.graph_bytes()).graph
    (ln,) = [n for n in graph.node if n.op_type == "LayerNormalization"]
    readers = [n.op_type for n in graph.node if ln.output[0] in n.input]
    assert readers and "Mul" not in readers  # int8 reads the LayerNorm output: no multiply
    plain = quantize(model, QuantConfig(mode="dynamic"), calibration=[x])
    with torch.no_grad():
        ref = model(x)
    err = float((q(x) - ref).norm() / ref.norm())
    assert err < float((plain(x) - ref).norm() / ref.norm())  # smoothing helps here


def test_the_outlier_variant_is_the_default_and_folds_too() -> None:
    torch.manual_seed(0)
    model = set_spec(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), ModelSpec("t"))
    x = torch.randn(64, 16)
    x[:, 3] *= 40
    smoothed = smooth(model, [x], alpha=1.0)
    a = x.abs().amax(0)
    expected = (a / torch.quantile(a, 0.9)).clamp_min(1.0)  # weights ignored
    torch.testing.assert_close(smoothed[0].inv_scale, 1 / expected)
    assert QuantConfig(mode="dynamic", smoothquant=1.0).smooth_method == "outlier"
    pre = _with_outlier_ln(_model(PreLN))
    assert smooth(pre, [_outlier_inputs()], alpha=1.0).smoothing_folded == {"ln": ["q", "k", "v"]}
