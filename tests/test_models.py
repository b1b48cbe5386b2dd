from __future__ import annotations

import pickle
import sys

import pytest
import torch
from safetensors.torch import save_file

import slimfuse
from slimfuse.errors import ConfigError, ModelError, UnsafeFileError, UntrustedCodeError
from slimfuse.models.resolve import load_model
from slimfuse.models.weights import load_weights
from slimfuse.models.zoo import MODELS
from tests.helpers import run_cli


@pytest.mark.parametrize("name", ["mnist1d_cnn", "mlp", "lenet300", "resnet1d", "gru"])
def test_zoo_models_build_from_data_and_run(name, mnist1d):
    model = slimfuse.build_model(name, data=mnist1d)
    out = model(mnist1d.example_input(3))
    assert out.shape == (3, 10)


@pytest.mark.parametrize(("hidden", "widths"), [(16, [16]), ([32, 8], [32, 8])])
def test_mlp_hidden_is_one_width_or_a_list(hidden, widths, mnist1d):
    model = slimfuse.build_model("mlp", data=mnist1d, hidden=hidden)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [*widths, 10]


def test_resnet_is_wide_enough_to_time():
    model = MODELS.get("resnet1d")(num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert min(c.out_channels for c in convs) >= 64
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())


def test_unknown_zoo_name_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown model 'mnist1d_cn'.*did you mean mnist1d_cnn"):
        slimfuse.build_model("mnist1d_cn")


def test_user_model_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch\n"
        "def build(width=8, num_classes=3):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, num_classes))\n"
    )
    with pytest.raises(UntrustedCodeError, match=r"is code .* pass --trust-code"):
        slimfuse.build_model(f"{tmp_path / 'mynet.py'}:build")
    m = slimfuse.build_model(f"{tmp_path / 'mynet.py'}:build", width=5, trust_code=True)
    assert m[0].out_features == 5
    monkeypatch.syspath_prepend(str(tmp_path))
    m2 = load_model("mynet:build", num_classes=2, trust_code=True)
    assert m2[2].out_features == 2
    with pytest.raises(ModelError, match="has no callable 'nope'"):
        slimfuse.build_model(f"{tmp_path / 'mynet.py'}:nope", trust_code=True)
    sys.modules.pop("mynet", None)


def test_weights_from_safetensors_and_state_dict_pt(tmp_path, mnist1d):
    src = slimfuse.build_model("mnist1d_cnn", data=mnist1d)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(src.state_dict(), tmp_path / "w.pt")
    x = mnist1d.example_input(4)
    for f in ("w.safetensors", "w.pt"):
        m = load_model("mnist1d_cnn", data=mnist1d, weights=tmp_path / f)
        assert torch.equal(m(x), src(x))


class Payload:
    """A pickle whose unpickling writes a file: what a malicious checkpoint does."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _evil(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump({"model": Payload(str(target))}, fh)
    return path, target


def test_malicious_pickle_never_runs_without_the_flag(tmp_path):
    path, target = _evil(tmp_path)
    with pytest.raises(UnsafeFileError, match=r"full pickle.*Pass --unsafe-pickle"):
        load_weights(path)
    assert not target.exists()


def test_cli_refuses_malicious_pickle(tmp_path):
    path, target = _evil(tmp_path)
    proc = run_cli("eval", "--model", str(path), "--data", "digits")
    assert proc.returncode == 2
    assert not target.exists()
    assert "--unsafe-pickle" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_full_pickle_module_loads_with_the_flag(tmp_path, mnist1d):
    model = MODELS.get("mnist1d_cnn")()
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(UnsafeFileError):
        load_model(tmp_path / "full.pt")
    loaded = load_model(tmp_path / "full.pt", unsafe_pickle=True)
    x = mnist1d.example_input(2)
    assert torch.equal(loaded(x), model(x))
