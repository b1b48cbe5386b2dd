from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.data import check_fits, from_arrays, load_data, text_corpus
from slimfuse.errors import DataError, UntrustedCodeError


def test_mnist1d_sizes_and_classes(mnist1d):
    assert (len(mnist1d.train), len(mnist1d.val), len(mnist1d.test)) == (3600, 400, 1000)
    assert mnist1d.input_shape == (40,)
    assert mnist1d.num_classes == 10
    x, y = mnist1d.train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_digits(digits):
    assert digits.input_shape == (64,)
    assert digits.num_classes == 10
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797


def test_split_is_deterministic_from_seed():
    a, b, c = (load_data("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


def test_npz_and_csv_sources(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    d = load_data(str(tmp_path / "d.npz"))
    assert d.input_shape == (3,) and d.num_classes == 3
    assert len(d.train) + len(d.val) + len(d.test) == 50
    rows = ["a,b,label"] + [f"{u:.3f},{v:.3f},{k}" for (u, v, _), k in zip(x, y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    c = load_data(str(tmp_path / "d.csv"))
    assert c.input_shape == (2,) and c.num_classes == 3


def test_csv_string_labels_become_classes(tmp_path):
    (tmp_path / "s.csv").write_text(
        "x,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20))
    )
    d = load_data(str(tmp_path / "s.csv"))
    assert d.num_classes == 2


def test_factory_source(tmp_path):
    (tmp_path / "fac.py").write_text(
        "import torch\n"
        "def make():\n"
        "    x = torch.randn(30, 4); y = torch.arange(30) % 2\n"
        "    return (x[:20], y[:20]), (x[20:25], y[20:25]), (x[25:], y[25:])\n"
    )
    with pytest.raises(UntrustedCodeError, match=r"is code .* pass --trust-code"):
        load_data(f"{tmp_path / 'fac.py'}:make")
    d = load_data(f"{tmp_path / 'fac.py'}:make", trust_code=True)
    assert (len(d.train), len(d.val), len(d.test)) == (20, 5, 5)
    assert d.num_classes == 2 and d.input_shape == (4,)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            lambda p: str(p / "missing.npz"),
            r"data file '.*missing\.npz' not found; expected an existing \.npz file",
        ),
        (
            lambda p: _csv(p, "a,b,target\n1,2,0\n"),
            r"no label column 'label'; columns are a, b, target",
        ),
        (lambda p: _csv(p, "a,label\n1,0\nx,1\n"), r"line 3, column 'a': 'x' is not numeric"),
        (
            lambda p: _csv(p, "a,label\n1,0\nnan,1\n"),
            r"inputs contain NaN or Inf \(first at sample 1\)",
        ),
        (lambda p: _csv(p, "a,label\n"), r"the data set is empty"),
        (
            lambda p: _npz(p, X=np.ones((5, 2)), y=np.ones(4)),
            r"X has 5 samples but y has 4; expected equal lengths",
        ),
        (lambda p: _npz(p, X=np.full((5, 2), np.inf), y=np.ones(5)), r"inputs contain NaN or Inf"),
        (lambda p: _npz(p, X=np.ones((5, 2))), r"has arrays \['X'\] but no y; expected X and y"),
        (lambda p: "nonsense", r"data source 'nonsense': expected mnist1d, digits"),
    ],
    ids=[
        "missing-file",
        "missing-label",
        "non-numeric",
        "nan",
        "empty",
        "length-mismatch",
        "inf",
        "no-y",
        "unknown",
    ],
)
def test_bad_data_gets_one_clear_line(tmp_path, setup, message, capsys):
    spec = setup(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        load_data(spec)
    assert "\n" not in str(err.value)
    # the CLI: that line on stderr, exit code 2, before any training
    out = tmp_path / "never"
    assert main(["train", "--model", "mlp", "--data", spec, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not out.exists()


def test_wrong_feature_count_for_the_model(digits, mnist1d):
    model = slimfuse.build_model("mnist1d_cnn", data=mnist1d)
    with pytest.raises(
        DataError,
        match=r"digits: inputs have shape \(64,\) per sample but the model expects \(40,\)",
    ):
        check_fits(model, digits, expected_shape=(40,))
    mlp = slimfuse.build_model("mlp", data=mnist1d)
    with pytest.raises(DataError, match=r"inputs of shape \(64,\) per sample do not fit the model"):
        check_fits(mlp, digits)


def test_from_arrays_refuses_too_few_samples():
    with pytest.raises(DataError, match="too few"):
        from_arrays(np.ones((1, 2)), np.zeros(1))


def test_text_corpus_is_real_and_held_out():
    corpus = text_corpus()
    assert len(corpus["train"]) > 1000 and len(corpus["test"]) > 200
    assert not set(corpus["train"]) & set(corpus["test"])
    assert all(len(p) >= 80 for p in corpus["test"])


def _csv(p, text):
    (p / "d.csv").write_text(text)
    return str(p / "d.csv")


def _npz(p, **arrays):
    np.savez(p / "d.npz", **arrays)
    return str(p / "d.npz")
