"""Sparsity is a property of the pruned model: later training keeps it, bundles record it, the
state dict stays plain, and global pruning leaves every layer some weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import slimfuse
from slimfuse.models.source import spec_of
from slimfuse.pruning.config import Magnitude
from slimfuse.pruning.unstructured import magnitude_masks, select_weights
from slimfuse.training import TrainConfig
from tests.pruning.nets import tiny_data

ONE = TrainConfig(epochs=1, lr=1e-2, batch_size=32, quiet=True)
ONESHOT = Magnitude(sparsity=0.9, sparsity_schedule="oneshot")
HALF = Magnitude(sparsity=0.5, sparsity_schedule="oneshot")


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def _pruned(data):
    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", data=data, hidden=[64, 64])
    return slimfuse.prune(model, HALF, data)  # (at 90% this tiny net would not train at all)


def _zeros(model) -> dict[str, torch.Tensor]:
    return {n: (p == 0) for n, p in model.named_parameters() if n.endswith("weight")}


def test_state_dict_is_plain_tensors(data, tmp_path) -> None:
    pruned = _pruned(data)
    keys = list(pruned.state_dict())
    assert keys == [n for n, _ in pruned.named_parameters()]  # no __values / __bitmask
    fresh = slimfuse.build_model("mlp", data=data, hidden=[64, 64])
    fresh.load_state_dict(pruned.state_dict(), strict=True)  # a plain model takes it as is
    # the compact encoding is the bundle's, on disk only
    slimfuse.save(pruned, tmp_path / "b")
    stored = load_file(tmp_path / "b" / "model.safetensors")
    assert "net.0.weight.__values" in stored and "net.0.weight" not in stored
    assert list(slimfuse.load(tmp_path / "b").state_dict()) == keys


def test_later_training_keeps_the_zeros(data) -> None:
    """No callback: the mask is the model's, and the one loop re-applies it after every step."""
    pruned = _pruned(data)
    zero = _zeros(pruned)
    before = pruned.net[0].weight.detach().clone()
    slimfuse.train(pruned, data, config=ONE)
    assert not torch.equal(before, pruned.net[0].weight)  # it trained
    for name, p in pruned.named_parameters():
        if name in zero:
            assert bool((p[zero[name]] == 0).all()), name


def test_the_zeros_are_recorded_and_survive_save_and_load(data, tmp_path) -> None:
    pruned = _pruned(data)
    edit = [e for e in spec_of(pruned).edits if e["kind"] == "sparse"][-1]
    assert edit["zeros"] == {k: int((v).sum()) for k, v in _zeros(pruned).items()}
    slimfuse.save(pruned, tmp_path / "b")
    back = slimfuse.load(tmp_path / "b")
    zero = _zeros(back)
    slimfuse.train(back, data, config=ONE)  # the reloaded model keeps them too
    for name, p in back.named_parameters():
        if name in zero:
            assert bool((p[zero[name]] == 0).all()), name
    assert [e for e in spec_of(back).edits if e["kind"] == "sparse"][-1]["zeros"] == edit["zeros"]


def test_distillation_and_qat_keep_the_zeros(data) -> None:
    pruned = _pruned(data)
    zero = _zeros(pruned)
    teacher = slimfuse.build_model("mlp", data=data, hidden=[64])
    student = slimfuse.distill(pruned, teacher, None, data, train=ONE)
    for name, p in student.named_parameters():
        if name in zero:
            assert bool((p[zero[name]] == 0).all()), name
    from slimfuse.quantization import QAT

    q = slimfuse.quantize(pruned, QAT(bits=4), data, train=ONE)  # int4: packed, dequantized
    for name in ("net.0", "net.2", "net.4"):
        w = q.get_submodule(name).dequantized()
        assert bool((w[zero[f"{name}.weight"]] == 0).all()), name


def test_global_pruning_leaves_every_layer_its_floor() -> None:
    """An untrained CNN pruned globally to 90% at once: without a floor its linear layer (the
    smallest weights) loses every weight; the default floor keeps 1% of each layer."""
    data = slimfuse.load_data("mnist1d")
    torch.manual_seed(0)
    model = slimfuse.build_model("mnist1d_cnn", data=data)
    pruned = slimfuse.prune(model, ONESHOT, data)
    total = kept = 0
    for name in ("conv1", "conv2", "conv3", "linear"):
        w = pruned.get_submodule(name).weight
        assert int((w != 0).sum()) >= 0.01 * w.numel(), name
        total, kept = total + w.numel(), kept + int((w != 0).sum())
    assert 1 - kept / total == pytest.approx(0.9, abs=0.001)  # the others give up the rest
    no_floor = Magnitude(sparsity=0.9, sparsity_schedule="oneshot", min_density=0.0)
    bare = slimfuse.prune(model, no_floor, data)
    assert int((bare.linear.weight != 0).sum()) == 0  # the collapse the floor prevents


def test_the_floor_is_exact_and_binds_only_where_needed(data) -> None:
    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", data=data, hidden=[64, 64])
    with torch.no_grad():
        model.net[4].weight.mul_(1e-3)  # the smallest weights all sit in one layer
    modules = select_weights(model)
    plain = magnitude_masks(modules, sparsity=0.5, global_pruning=True)
    floored = magnitude_masks(modules, sparsity=0.5, global_pruning=True, min_density=0.25)
    assert plain.per_layer()["net.4"] == 1.0
    assert floored.per_layer()["net.4"] == pytest.approx(0.75, abs=1 / 192)
    assert floored.sparsity() == pytest.approx(plain.sparsity(), abs=1e-3)
    w = modules["net.4"].weight.detach().abs()
    assert float(w[floored.masks["net.4"].bool()].min()) >= float(w.median())  # its largest
    torch.manual_seed(0)
    fresh = select_weights(slimfuse.build_model("mlp", data=data, hidden=[64, 64]))
    a = magnitude_masks(fresh, sparsity=0.5, global_pruning=True)
    b = magnitude_masks(fresh, sparsity=0.5, global_pruning=True, min_density=0.01)
    assert max(a.per_layer().values()) < 0.99  # a floor that does not bind changes nothing
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"sparsity": 0.9, "min_density": 0.2},
            "min_density 0.2 keeps more of each layer than sparsity 0.9 leaves",
        ),
        (
            {"sparsity": 0.5, "min_density": 0.1, "global_pruning": False},
            "min_density applies to global pruning",
        ),
        ({"sparsity": 0.5, "min_density": 1.0}, "min_density"),
    ],
)
def test_bad_floors_are_refused(values, message) -> None:
    from slimfuse.errors import ConfigError
    from slimfuse.pruning.config import PruneConfig

    with pytest.raises(ConfigError, match=message):
        PruneConfig.parse(values)


def test_a_fused_model_of_pruned_members_stores_and_keeps_their_zeros(data, tmp_path) -> None:
    from slimfuse.fusion import Mean
    from slimfuse.pruning.sparse import masked_modules

    pruned = _pruned(data)
    dense = slimfuse.build_model("mlp", data=data, hidden=[64, 64])
    fused = slimfuse.fuse([("a", pruned), ("b", dense)], Mean())
    slimfuse.save(fused, tmp_path / "f")
    stored = load_file(tmp_path / "f" / "model.safetensors")
    assert "members.a.net.0.weight.__values" in stored and "members.b.net.0.weight" in stored
    back = slimfuse.load(tmp_path / "f")
    x = data.example_input(8)
    assert torch.equal(back(x), fused(x))
    assert sorted(masked_modules(back)) == ["members.a.net.0", "members.a.net.2", "members.a.net.4"]
    assert list(back.state_dict()) == list(fused.state_dict())


def test_an_old_sparse_bundle_gets_its_masks_and_counts_on_load(data) -> None:
    """A bundle written before the counts were recorded: its zeros become the constraint."""
    from pathlib import Path

    from slimfuse.pipeline.checks import check_sparsity

    old = slimfuse.load(Path(__file__).parents[1] / "fixtures" / "bundles_0_1" / "sparse")
    edit = spec_of(old).edits[0]
    assert edit["zeros"] == {k: int((old.get_parameter(k) == 0).sum()) for k in edit["tensors"]}
    assert check_sparsity(old, "old", "load")["checked"] == 4
    zero = {k: old.get_parameter(k) == 0 for k in edit["tensors"]}
    mnist = slimfuse.load_data("mnist1d")
    slimfuse.train(old, mnist, config=TrainConfig(epochs=1, quiet=True, batch_size=200))
    for k, z in zero.items():
        assert bool((old.get_parameter(k)[z] == 0).all()), k


def test_removing_channels_of_a_sparse_model_keeps_its_zeros_and_renews_the_record(data) -> None:
    from slimfuse.pipeline.checks import check_sparsity
    from slimfuse.pruning.config import Channels

    pruned = _pruned(data)
    small = slimfuse.prune(pruned, Channels(channels=0.5), data, train=ONE)
    assert small.net[0].weight.shape[0] == 32
    kinds = [e["kind"] for e in spec_of(small).edits]
    assert kinds == ["sparse", "resize", "sparse"]
    kept = check_sparsity(small, "small", "prune")
    assert kept["checked"] == 3 and min(kept["sparsity"].values()) > 0  # (l1 took the sparsest)
    zero = _zeros(small)
    slimfuse.train(small, data, config=ONE)
    for name, p in small.named_parameters():
        if name in zero:
            assert bool((p[zero[name]] == 0).all()), name
