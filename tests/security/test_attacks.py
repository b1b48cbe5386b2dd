"""Hostile bundles, recipes and weights: refused with one line, exit 2, fast, payload never run."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.errors import ModelError, UntrustedCodeError
from tests.helpers import run_cli
from tests.security.attacks import ATTACKS, make_good, os_system


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_good(tmp_path_factory.mktemp("good"))


def _run(args, capsys):
    t0 = time.perf_counter()
    code = main(args)
    seconds = time.perf_counter() - t0
    return code, capsys.readouterr().err, seconds


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack_is_one_line_exit_2_and_never_runs(attack, good, tmp_path, capsys):
    args = attack.make(tmp_path, good)
    main(["eval", "--model", str(good), "--data", "digits", "--engine", "torch"])  # warm caches
    capsys.readouterr()
    code, err, seconds = _run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"slimfuse {args[0]}: error: "), err
    assert re.search(attack.match, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()
    assert seconds < 1.0, f"{attack.name} took {seconds:.2f}s"


def test_the_process_exits_2_and_the_command_never_runs(good, tmp_path):
    args = os_system(tmp_path, good)
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--trust-code" in proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_debug_keeps_the_cause(good, tmp_path):
    b = tmp_path / "b"
    import shutil

    shutil.copytree(good, b)
    (b / "model.safetensors").write_bytes(b"garbage!" * 4)
    proc = run_cli("eval", "--model", str(b), "--data", "digits", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ModelError" in proc.stderr


# -- code sources, trusted: copied into the bundle with their hash --------------------------------


NET = (
    "import torch\n"
    "def build(width=8, num_classes=10):\n"
    "    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(),\n"
    "                               torch.nn.Linear(width, num_classes))\n"
)


def test_code_travels_with_the_bundle_and_loads_from_anywhere(tmp_path, monkeypatch):
    src = tmp_path / "src" / "mynet.py"
    src.parent.mkdir()
    src.write_text(NET)
    model = slimfuse.build_model(f"{src}:build", width=5, trust_code=True)
    bundle = slimfuse.save(model, tmp_path / "b")
    meta = json.loads((bundle / "slimfuse.json").read_text())["model"]
    assert re.fullmatch(r"code/mynet-[0-9a-f]{12}\.py:build", meta["source"])
    assert (bundle / meta["source"].rpartition(":")[0]).read_text() == NET
    src.unlink()  # the original is gone: the bundle's copy is what runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    proc = run_cli("eval", "--model", str(bundle), "--data", "digits", "--engine", "torch")
    assert proc.returncode == 2 and "--trust-code" in proc.stderr
    proc = run_cli(
        "eval", "--model", str(bundle), "--data", "digits", "--engine", "torch", "--trust-code"
    )
    assert proc.returncode == 0, proc.stderr
    x = torch.randn(3, 64)
    back = slimfuse.load(bundle, trust_code=True)
    assert torch.equal(back(x), model(x))


def test_changed_code_in_a_bundle_is_refused(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text(NET)
    bundle = slimfuse.save(slimfuse.build_model(f"{src}:build", trust_code=True), tmp_path / "b")
    meta = json.loads((bundle / "slimfuse.json").read_text())["model"]
    copy = bundle / meta["source"].rpartition(":")[0]
    copy.write_text(NET + f"open({str(tmp_path / 'PWNED')!r}, 'w')\n")
    with pytest.raises(ModelError, match="changed since it was saved"):
        slimfuse.load(bundle, trust_code=True)
    assert not (tmp_path / "PWNED").exists()


def test_the_code_saved_is_the_code_that_ran(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text(NET)
    model = slimfuse.build_model(f"{src}:build", trust_code=True)
    src.write_text(NET.replace("width=8", "width=9"))  # edited after the model was built
    bundle = slimfuse.save(model, tmp_path / "b")
    meta = json.loads((bundle / "slimfuse.json").read_text())["model"]
    assert (bundle / meta["source"].rpartition(":")[0]).read_text() == NET


def test_bundle_code_must_stay_in_its_code_folder(tmp_path, good):
    import shutil

    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w')\ndef build(): pass\n")
    from slimfuse.trust import sha256

    b = tmp_path / "b"
    shutil.copytree(good, b)
    meta = json.loads((b / "slimfuse.json").read_text())
    meta["model"]["source"] = "code/../../evil.py:build"
    meta["model"]["code_sha256"] = sha256(evil.read_bytes())
    (b / "slimfuse.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="a bundle's code must be a file in its code/ folder"):
        slimfuse.load(b, trust_code=True)
    assert not (tmp_path / "PWNED").exists()


def test_a_fused_model_of_code_members_saves_all_their_code(tmp_path):
    from slimfuse.fusion.ensemble import MeanFusion

    src = tmp_path / "mynet.py"
    src.write_text(NET)
    a = slimfuse.build_model(f"{src}:build", trust_code=True)
    b = slimfuse.build_model("mlp", in_features=64, num_classes=10, hidden=[16])
    fused = MeanFusion([("a", a), ("b", b)])
    bundle = slimfuse.save(fused, tmp_path / "f")
    assert len(list((bundle / "code").iterdir())) == 1
    with pytest.raises(UntrustedCodeError):
        slimfuse.load(bundle)
    x = torch.randn(2, 64)
    torch.testing.assert_close(slimfuse.load(bundle, trust_code=True)(x), fused(x))


def test_a_module_source_needs_trust_in_a_recipe_too(tmp_path):
    recipe = "model: 'collections:OrderedDict'\ndata: digits\nstages:\n  - stage: eval\n"
    with pytest.raises(UntrustedCodeError):
        slimfuse.run(recipe, tmp_path / "r", quiet=True)
