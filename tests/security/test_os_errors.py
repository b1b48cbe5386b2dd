"""What the machine refuses (a full disk, a read-only place, a path through a file) is one line
from the CLI, exit 1, and nothing is left behind that would load as valid."""

from __future__ import annotations

import pytest

import slimfuse
from tests.helpers import TRAIN_MLP, run_cli
from tests.security.disks import small_disk


def _one_line(proc, command: str, *phrases: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"slimfuse {command}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def _nothing_loads(folder) -> None:
    if folder.exists():
        with pytest.raises(slimfuse.errors.SlimfuseError):
            slimfuse.load(folder)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "mlp"
    proc = run_cli(*TRAIN_MLP, "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


def test_out_through_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli(*TRAIN_MLP, "--out", str(tmp_path / "file" / "b"), "--quiet")
    _one_line(proc, "train", "Not a directory")


def test_out_is_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli(*TRAIN_MLP, "--out", str(tmp_path / "file"), "--quiet")
    assert proc.returncode == 2 and "is a file" in proc.stderr, proc.stderr
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_place(tmp_path):
    with small_disk(tmp_path / "ro", "64k", "ro") as disk:
        proc = run_cli(*TRAIN_MLP, "--out", str(disk / "b"), "--quiet")
        _one_line(proc, "train", "Read-only file system")


def test_disk_full_during_checkpoint_save_and_export(tmp_path, bundle):
    with small_disk(tmp_path / "disk", "48k") as disk:
        # training checkpoints into OUT.ckpt/ every epoch: the first one does not fit
        proc = run_cli(*TRAIN_MLP, "--out", str(disk / "b"), "--quiet")
        _one_line(proc, "train", "No space left on device")
        _nothing_loads(disk / "b")
        # the bundle itself does not fit (a large model, no checkpoints)
        proc = run_cli(
            "prune", "--model", "mlp", "--kw", "hidden=[512,512]", "--data", "digits",
            "--channels", "0.1", "--out", str(disk / "p"), "--quiet",
        )  # fmt: skip
        _one_line(proc, "prune", "No space left on device")
        _nothing_loads(disk / "p")
        assert [p.name for p in disk.iterdir() if p.name.startswith(".")] == []
        # an ONNX export that does not fit
        big = slimfuse.save(
            slimfuse.build_model("mlp", in_features=64, num_classes=10, hidden=[512, 512]),
            tmp_path / "big",
        )
        proc = run_cli(
            "export", "--model", str(big), "--data", "digits", "--out", str(disk / "m.onnx")
        )
        _one_line(proc, "export", "No space left on device")
        assert not (disk / "m.onnx").exists()
