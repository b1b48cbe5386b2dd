"""The CPU graph passes: the same numbers as the plain export, 1-D convolutions run as 2-D."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.exporting import OrtRunner, export_onnx
from slimfuse.graph_passes import optimize_for_cpu
from slimfuse.models.source import ModelSpec, set_spec
from tests.pruning.nets import concat_net


class Dilated(nn.Module):
    """Dilation, groups, a conv with no bias, a conv at the output and a weight-shared conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 8, 5, padding=4, dilation=2, bias=False)
        self.bn = nn.BatchNorm1d(8)
        self.g = nn.Conv1d(8, 8, 3, padding=1, groups=4)
        self.out = nn.Conv1d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.bn(self.a(x.unsqueeze(1))))
        h = self.g(h) * self.g(2 * h).relu()  # the same weight read by two Conv nodes
        return self.out(h).mean(2)


def _nets(mnist1d):
    torch.manual_seed(0)
    dilated = set_spec(Dilated(), ModelSpec(source="test"))
    with torch.no_grad():  # non-trivial BatchNorm statistics to fold
        dilated.bn.running_mean.uniform_(-1, 1)
        dilated.bn.running_var.uniform_(0.5, 2)
        dilated.bn.weight.uniform_(0.5, 2)
    return {
        "resnet1d": slimfuse.build_model("resnet1d", data=mnist1d, widths=[8, 16, 16]),
        "mnist1d_cnn": slimfuse.build_model("mnist1d_cnn", data=mnist1d),
        "concat": concat_net(num_classes=10, width=8),
        "dilated": dilated,
    }


@pytest.mark.parametrize("name", ["resnet1d", "mnist1d_cnn", "concat", "dilated"])
def test_passes_keep_the_numbers_and_run_convs_in_2d(name, mnist1d, tmp_path):
    model = _nets(mnist1d)[name].eval()
    x = mnist1d.example_input(16)
    plain = export_onnx(model, x[:1], tmp_path / "plain.onnx", cpu_passes=False)
    fast = export_onnx(model, x[:1], tmp_path / "fast.onnx")  # checker + parity <= 1e-4
    a, b = OrtRunner(plain)(x), OrtRunner(fast)(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    graph = onnx.load(str(fast)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["BatchNormalization"] == 0
    dims = {i.name: len(i.dims) for i in graph.initializer}
    readers = collections.Counter(name for n in graph.node for name in n.input)
    convs = [n for n in graph.node if n.op_type == "Conv" and readers[n.input[1]] == 1]
    assert convs and all(dims.get(n.input[1], 4) == 4 for n in convs)
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:  # no Squeeze straight back into an Unsqueeze
        if n.op_type == "Unsqueeze":
            assert producer.get(n.input[0]) is None or producer[n.input[0]].op_type != "Squeeze"


def test_consecutive_convs_stay_2d_end_to_end(mnist1d, tmp_path):
    model = _nets(mnist1d)["resnet1d"].eval()
    path = export_onnx(model, mnist1d.example_input(1), tmp_path / "r.onnx")
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["Conv"] == 15 and ops["Squeeze"] == 1  # one way in, one way out


def test_a_shared_weight_is_left_alone(mnist1d, tmp_path):
    model = _nets(mnist1d)["dilated"].eval()
    x = mnist1d.example_input(1)
    path = export_onnx(model, x, tmp_path / "d.onnx")
    graph = onnx.load(str(path))
    counts = optimize_for_cpu(graph)  # a second run finds nothing left to do
    assert counts == {"batchnorm_folded": 0, "conv1d_as_2d": 0, "squeezes_sunk": 0}
    dims = [len(i.dims) for i in graph.graph.initializer if i.name.startswith("g.")]
    assert 3 in dims  # g.weight: read by two Conv nodes, so kept 1-D
    assert np.isfinite(OrtRunner(path)(x).numpy()).all()
