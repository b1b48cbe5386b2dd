"""The command line on a wrong flag, an abbreviation, a corrupt checkpoint, and work that did
nothing (nothing quantized, nothing pruned): said, never silent."""

from __future__ import annotations

import pytest

import slimfuse
from slimfuse.cli import main
from slimfuse.errors import SlimfuseWarning, UnsupportedLayerError
from tests.helpers import TRAIN_MLP, run_cli


def test_a_wrong_flag_shows_the_commands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--model", "mlp", "--channels", "0.5", "--sparsty", "0.5", "--out", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("usage: slimfuse prune ") and "unrecognized arguments: --sparsty" in err


@pytest.mark.parametrize("flag", ["--epoch", "--e", "--out-"])
def test_abbreviations_are_not_accepted(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*TRAIN_MLP[:-2], flag, "3", "--out", "x"])
    assert exit_.value.code == 2
    assert "usage: slimfuse train" in capsys.readouterr().err


def test_a_corrupt_checkpoint_on_resume_is_one_line(tmp_path):
    out = tmp_path / "b"
    (tmp_path / "b.ckpt").mkdir()
    (tmp_path / "b.ckpt" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a zip")
    proc = run_cli(*TRAIN_MLP, "--out", str(out), "--resume", "--quiet")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "checkpoint" in lines[0] and "Traceback" not in proc.stderr


def test_static_int8_with_every_layer_ignored_is_an_error(digits):
    model = slimfuse.build_model("mlp", data=digits, hidden=[16])
    cfg = slimfuse.QuantConfig(mode="static", ignore=["type:Linear"])
    with pytest.raises(UnsupportedLayerError, match="static int8 found no layer to quantize"):
        slimfuse.quantize(model, cfg, calibration=digits.loader("train", batch_size=64))


def test_pruning_that_removes_nothing_warns_and_strict_fails(digits, tmp_path, capsys):
    model = slimfuse.build_model("mlp", data=digits, hidden=[16])
    with pytest.warns(SlimfuseWarning, match="pruning removed nothing"):
        slimfuse.prune(model, {"channels": 0.5, "ignore": ["net.0"]}, digits)  # its only layer
    bundle = slimfuse.save(model, tmp_path / "m")
    args = ["prune", "--model", str(bundle), "--data", "digits", "--channels", "0.5"]
    args += ["--ignore", "net.0", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "p")]) == 0
    assert "slimfuse prune: warning: pruning removed nothing" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "q"), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slimfuse prune: error: pruning removed nothing")
    assert not (tmp_path / "q").exists()
