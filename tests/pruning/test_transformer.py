"""Transformer pruning on a small random BERT: heads and FFN neurons, reload, ONNX."""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.errors import ConfigError, UnsupportedLayerError
from slimfuse.measuring import count_params
from slimfuse.pruning.transformer import heads_per_layer, prune_transformer
from tests.helpers import TINY_BERT, bert_tokens


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()


@pytest.mark.parametrize("importance", ["l1", "l2", "activation"])
def test_heads_and_ffn_are_removed(bert, importance) -> None:
    x = bert_tokens()
    small = prune_transformer(
        bert, ffn_ratio=0.5, head_ratio=0.25, importance=importance, inputs=[x]
    )
    assert heads_per_layer(small) == [3, 3] and heads_per_layer(bert) == [4, 4]
    layer = small.encoder.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 32 == layer.output.dense.in_features
    assert layer.attention.self.query.out_features == 24 == layer.attention.output.dense.in_features
    assert small.encoder.config.intermediate_size == 32
    assert len(small.encoder.config.pruned_heads["0"]) == 1
    assert count_params(small)[0] < count_params(bert)[0]
    assert small(**x).shape == (3, 32)


def test_zero_ratio_is_lossless(bert) -> None:
    x = bert_tokens()
    same = prune_transformer(bert, ffn_ratio=0.0, head_ratio=0.0)
    assert torch.equal(same(**x), bert(**x))


def test_reload_and_onnx(bert, tmp_path) -> None:
    x = bert_tokens()
    small = prune_transformer(bert, ffn_ratio=0.5, head_ratio=0.5)
    slimfuse.save(small, tmp_path / "b")
    back = slimfuse.load(tmp_path / "b")
    assert torch.equal(back(**x), small(**x))
    assert back.encoder.config.intermediate_size == 32 and heads_per_layer(back) == [2, 2]
    slimfuse.export(back, bert_tokens(1), tmp_path / "m.onnx", atol=1e-4)


def test_bad_input(bert) -> None:
    with pytest.raises(ConfigError, match=r"head ratio 1.0: expected a number in \[0, 1\)"):
        prune_transformer(bert, head_ratio=1.0)
    with pytest.raises(
        ConfigError, match=r"would remove every head of layer 0 \(64 neurons, 4 heads\)"
    ):
        prune_transformer(bert, head_ratio=0.8)
    with pytest.raises(ConfigError, match="importance 'activation' needs inputs"):
        prune_transformer(bert, importance="activation")
    with pytest.raises(UnsupportedLayerError, match="Linear is not a BERT-style encoder"):
        prune_transformer(torch.nn.Linear(3, 3))
