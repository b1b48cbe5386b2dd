"""Saves that a kill, a full disk or a stale folder cannot corrupt.

The kill tests fork a child (the parent has already imported torch, so a child costs
milliseconds) that saves two different models in turn over one bundle, SIGKILL it at random
moments and inside the swap, and check that the bundle is always one whole save: the weights of
model A or B, and the metrics, ``slimfuse.json`` and ``model.onnx`` of that same save.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import slimfuse
from slimfuse import atomic
from slimfuse.errors import ConfigError
from slimfuse.training import _save_checkpoint
from tests.security.disks import small_disk

FILES = {"model.safetensors", "slimfuse.json", "metrics.json", "model.onnx"}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and modes")


def _model(seed: int, hidden=(100, 100)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return slimfuse.build_model("mlp", in_features=64, num_classes=10, hidden=hidden)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Models A and B, each with its own ONNX file (contents differ, so a stale one is seen)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for tag, seed in (("A", 1), ("B", 2)):
        onnx = folder / f"{tag}.onnx"
        onnx.write_bytes(f"graph of model {tag}\n".encode() * 400)
        out[tag] = (_model(seed), onnx)
    return out


def _save(two, tag: str, folder: Path) -> Path:
    model, onnx = two[tag]
    return slimfuse.save(model, folder, metrics={"model": tag}, onnx=onnx, extra={"saved": tag})


def _which(two, folder: Path) -> str:
    """The save the bundle holds; fails unless every file in it comes from that one save."""
    assert folder.is_dir()
    state = slimfuse.load(folder).state_dict()
    tags = [
        tag
        for tag, (model, _) in two.items()
        if state.keys() == model.state_dict().keys()
        and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    ]
    assert len(tags) == 1, "the weights are neither model A nor model B"
    tag = tags[0]
    assert {p.name for p in folder.iterdir()} == FILES
    assert json.loads((folder / "metrics.json").read_text()) == {"model": tag}
    assert json.loads((folder / "slimfuse.json").read_text())["saved"] == tag
    assert (folder / "model.onnx").read_bytes() == two[tag][1].read_bytes()
    return tag


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- kills -----------------------------------------------------------------------------------


def _saver(two, folder: Path, first: str, announce: int | None, fallback: bool) -> None:
    """Child: save A and B in turn over ``folder`` until killed; with ``announce``, write a byte
    to that pipe right before each swap and sleep around it, so the parent can kill there."""
    if fallback:
        atomic._exchange = lambda a, b: False
    if announce is not None:
        if fallback:  # the window: after old -> .old-, before new -> target
            real_rename = os.rename

            def rename(src, dst, *args, **kwargs):
                real_rename(src, dst, *args, **kwargs)
                if ".old-" in os.fspath(dst):
                    os.write(announce, b"x")
                    time.sleep(0.3)

            atomic.os.rename = rename
        else:
            real_exchange = atomic._exchange

            def exchange(a, b):
                os.write(announce, b"x")
                time.sleep(0.1)
                done = real_exchange(a, b)
                time.sleep(0.1)
                return done

            atomic._exchange = exchange
    tags = ["A", "B"] if first == "A" else ["B", "A"]
    i = 0
    while True:
        _save(two, tags[i % 2], folder)
        i += 1


def _kill_one(two, folder: Path, *, swap_delay: float | None, random_delay: float, fallback=False):
    """Start a saver, kill it (``swap_delay`` seconds after it announces the swap, or
    ``random_delay`` after it starts); return (the tag the folder held before, the child's pid)."""
    before = _which(two, folder) if folder.is_dir() else None
    first = "B" if before == "A" else "A"
    r, w = os.pipe()
    try:
        ctx = multiprocessing.get_context("fork")
        announce = w if swap_delay is not None else None
        child = ctx.Process(target=_saver, args=(two, folder, first, announce, fallback))
        child.start()
        if swap_delay is None:
            time.sleep(random_delay)
        else:
            ready, _, _ = select.select([r], [], [], 30)
            assert ready, "the child never reached the swap"
            time.sleep(swap_delay)
        os.kill(child.pid, signal.SIGKILL)
        child.join()  # reaped: its pid no longer counts as alive
        assert child.exitcode == -signal.SIGKILL, "the child died before it was killed"
    finally:
        os.close(r)
        os.close(w)
    return before, child.pid


@pytest.mark.slow
def test_forty_kills_never_leave_a_broken_or_mixed_bundle(two, tmp_path):
    folder = tmp_path / "bundle"
    t0 = time.perf_counter()
    _save(two, "A", folder)
    save_s = time.perf_counter() - t0
    rng = random.Random(0)
    inside = {"old kept": 0, "new in place": 0}
    swap_delays = [0.02, 0.18, 0.06, 0.14, 0.09, 0.11]
    start = time.perf_counter()
    for i in range(40):
        in_swap = i % 3 == 0
        before, pid = _kill_one(
            two,
            folder,
            swap_delay=swap_delays[i // 3 % len(swap_delays)] if in_swap else None,
            random_delay=rng.uniform(0.0, 0.01 + 6 * save_s),
        )
        after = _which(two, folder)  # exists, loads, one whole save
        if in_swap:
            inside["old kept" if after == before else "new in place"] += 1
        assert all(f"-{pid}-" in name for name in _leftovers(folder))  # only the dead child's
        nxt = "B" if after == "A" else "A"
        _save(two, nxt, folder)
        assert _which(two, folder) == nxt
        assert _leftovers(folder) == []
    took = time.perf_counter() - start
    print(f"40/40 kills, 14 inside the swap {inside}, save {save_s * 1e3:.1f} ms, {took:.1f} s")


def test_a_kill_between_the_fallback_renames_is_recovered(two, tmp_path):
    folder = tmp_path / "bundle"
    _save(two, "A", folder)
    for _ in range(4):
        before, pid = _kill_one(two, folder, swap_delay=0.05, random_delay=0, fallback=True)
        assert not folder.exists()  # the fallback's window: the old bundle is at .old-
        assert any(name.startswith(f".bundle.old-{pid}-") for name in _leftovers(folder))
        assert atomic.recover(folder) == folder
        assert _which(two, folder) == before
        assert _leftovers(folder) == []
    # the next save does the same without being asked
    before, pid = _kill_one(two, folder, swap_delay=0.05, random_delay=0, fallback=True)
    _save(two, "B", folder)
    assert _which(two, folder) == "B" and _leftovers(folder) == []


# --- what a save writes ----------------------------------------------------------------------


def test_a_save_over_a_bundle_holds_only_what_it_wrote(two, tmp_path):
    folder = _save(two, "A", tmp_path / "b")
    (folder / "report.html").write_text("<html>old report</html>")
    assert {p.name for p in folder.iterdir()} == FILES | {"report.html"}
    slimfuse.save(two["B"][0], folder)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "slimfuse.json"}
    loaded, model = slimfuse.load(folder).state_dict(), two["B"][0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.items())
    assert _leftovers(folder) == []


@pytest.mark.parametrize(
    "mask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]
)
def test_modes_honour_the_umask(two, tmp_path, mask, folder_mode, file_mode):
    old = os.umask(mask)
    try:
        folder = _save(two, "A", tmp_path / "b")
        _save(two, "B", folder)  # over an existing bundle too
        _save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.ones(3)})
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == folder_mode
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == file_mode, path.name
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == file_mode


def test_the_wrong_kind_of_target_is_refused_in_one_line(two, tmp_path):
    file = tmp_path / "model"
    file.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file: expected a folder") as info:
        _save(two, "A", file)
    assert "\n" not in str(info.value)
    assert file.read_text() == "not a folder"
    with pytest.raises(ConfigError, match="is a folder") as info:
        _save_checkpoint(tmp_path, {"w": torch.ones(3)})
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --- leftovers -------------------------------------------------------------------------------


def test_leftovers_of_dead_processes_go_those_of_live_ones_stay(two, tmp_path):
    folder = _save(two, "A", tmp_path / "b")
    dead, me = _dead_pid(), os.getpid()
    for name in (f".b.tmp-{dead}-0123abcd", f".b.old-{dead}-4567cdef"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".b.tmp-{dead}-89abcdef").write_bytes(b"a file, from atomic_file")
    live = tmp_path / f".b.tmp-{me}-deadbeef"
    live.mkdir()
    other = tmp_path / f".c.tmp-{dead}-0123abcd"  # another target's: not ours to judge here
    other.mkdir()
    _save(two, "B", folder)
    assert _which(two, folder) == "B"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", live.name, other.name])

    ckpt = tmp_path / "ckpt.pt"
    (tmp_path / f".ckpt.pt.tmp-{dead}-0123abcd").write_bytes(b"half a checkpoint")
    (tmp_path / f".ckpt.pt.tmp-{me}-0123abcd").write_bytes(b"being written")
    _save_checkpoint(ckpt, {"w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt")) == [
        f".ckpt.pt.tmp-{me}-0123abcd"
    ]


def test_a_backup_of_a_dead_process_is_put_back_when_the_bundle_is_missing(two, tmp_path):
    folder = _save(two, "A", tmp_path / "b")
    dead = _dead_pid()
    os.rename(folder, tmp_path / f".b.old-{dead}-0123abcd")
    (tmp_path / f".b.tmp-{dead}-4567cdef").mkdir()  # the new bundle, never swapped in
    (tmp_path / f".b.tmp-{dead}-4567cdef" / "slimfuse.json").write_text("{}")
    atomic.recover(folder)
    assert _which(two, folder) == "A" and _leftovers(folder) == []

    os.rename(folder, tmp_path / f".b.old-{dead}-0123abcd")
    _save(two, "B", folder)  # the next save recovers first, then replaces
    assert _which(two, folder) == "B" and _leftovers(folder) == []


def test_the_fallback_swap_leaves_a_whole_bundle(two, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)  # no exchange on this system
    folder = _save(two, "A", tmp_path / "b")
    _save(two, "B", folder)
    assert _which(two, folder) == "B" and _leftovers(folder) == []


def test_a_filesystem_without_the_exchange_falls_back(two, tmp_path, monkeypatch):
    import ctypes

    calls = []

    def renameat2(*args):  # what the kernel answers where the filesystem cannot exchange
        calls.append(args)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", lambda: renameat2)
    folder = _save(two, "A", tmp_path / "b")
    _save(two, "B", folder)
    assert calls and _which(two, folder) == "B" and _leftovers(folder) == []


def test_the_exchange_is_used_where_the_system_has_it(two, tmp_path):
    if atomic._renameat2() is None:
        pytest.skip("no renameat2 in this libc")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not atomic._exchange(a, b):
        pytest.skip(f"the filesystem of {tmp_path} cannot exchange")
    assert (b / "x").read_text() == "a" and not (a / "x").exists()


# --- a full disk -----------------------------------------------------------------------------


def _errno(call) -> str | None:
    """The errno name of the OSError ``call`` raises; the error (and the frames its traceback
    holds, with a writer's open file) is dropped before returning, so the disk can unmount."""
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return None


def test_a_full_disk_leaves_the_old_bundle_and_nothing_else(two, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        folder = _save(two, "A", disk / "b")  # about 75 KB
        big = _model(3, hidden=(1000,))  # about 300 KB: does not fit
        assert _errno(lambda: slimfuse.save(big, folder, metrics={"model": "big"})) == "ENOSPC"
        assert _which(two, folder) == "A"
        assert sorted(p.name for p in disk.iterdir()) == ["b"]

        ckpt = disk / "ckpt.pt"
        _save_checkpoint(ckpt, {"w": torch.arange(10.0)})
        assert _errno(lambda: _save_checkpoint(ckpt, {"w": torch.zeros(200_000)})) == "ENOSPC"
        assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.arange(10.0))
        assert sorted(p.name for p in disk.iterdir()) == ["b", "ckpt.pt"]
