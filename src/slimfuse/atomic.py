"""Writes that a crash cannot leave half done: a temporary beside the target, then a swap.

:func:`atomic_file` yields a temporary path ``.{name}.tmp-{pid}-{random}`` beside the target;
once the caller has written it, it is flushed to disk (``fsync``) and renamed over the target
in one step. :func:`atomic_dir` does the same for a folder (a bundle): the new folder is written
complete in ``.{name}.tmp-{pid}-{random}`` (nothing of the old folder is carried over), every
file in it is flushed, and it takes the target's place:

* on Linux with a filesystem that supports it, the two folders are exchanged in one step
  (``renameat2(RENAME_EXCHANGE)``), so the path always holds either the whole old bundle or the
  whole new one; the old one, now at the temporary name, is then removed;
* elsewhere (macOS, Windows, old kernels, filesystems without the exchange) the old folder is
  renamed to ``.{name}.old-{pid}-{random}``, the new one to the target, and the backup removed.
  A process killed between those two renames leaves no folder at the target and the old bundle
  at the ``.old-`` name; the next save to that target (or :func:`recover`) puts it back.

Temporaries and backups of processes that died (killed, power cut) are removed by the next write
to the same target (:func:`clean_leftovers`); those of live processes (a save in progress) are
never touched. New files and folders get the usual modes (``0o666`` / ``0o777`` less the umask).
On failure the temporary is removed and the target left as it was; what the operating system
refuses (a full disk, a read-only folder) is raised as the :class:`OSError` it is (writers whose
libraries hide it, such as ``torch.save``, write their bytes with Python's own file calls).

Leftovers are told apart by process id, so two machines writing into one network folder at once
are not supported.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

from slimfuse.errors import ConfigError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# renameat2 answers these where the kernel or the filesystem cannot exchange: use the fallback.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


# --- names -----------------------------------------------------------------------------------


def _temp_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _leftover_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)(?:-[0-9a-f]+)?")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if os.name == "nt":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:  # e.g. a pid out of range: no such process
        return False
    return True


def _alive_windows(pid: int) -> bool:  # os.kill(pid, 0) would terminate the process there
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() != 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


# --- modes ---------------------------------------------------------------------------------

_umask_lock = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # set and put back: a thread creating a file meanwhile could see 0o077
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _set_mode(path: str | Path, mask: int) -> None:
    """Give a file we wrote the mode a plain ``open`` would (writers such as safetensors
    create theirs 0o600): ``0o666`` less the umask, ``0o777`` less it if it was executable."""
    st = os.lstat(path)
    full = 0o777 if st.st_mode & 0o111 else 0o666
    if st.st_mode & 0o7777 != full & ~mask:
        os.chmod(path, full & ~mask)


# --- removing, flushing ----------------------------------------------------------------------


def _remove(path: Path) -> None:
    """Remove a file, a link or a folder tree; what cannot be removed is left."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (the names in it); a no-op where folders cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _finish_tree(root: Path) -> None:
    """Set the modes of everything written under ``root`` and flush it all to disk."""
    mask = umask()
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                _set_mode(path, mask)
                _fsync_file(path)
        os.chmod(folder, 0o777 & ~mask)
        _fsync_dir(folder)


# --- leftovers -------------------------------------------------------------------------------


def clean_leftovers(target: str | Path) -> None:
    """Remove temporaries and backups of ``target`` left by processes that are gone.

    Entries ``.{name}.tmp-PID-*`` / ``.{name}.old-PID-*`` beside ``target`` whose process is not
    alive are removed. If ``target`` itself is missing and such a dead process left an ``.old-``
    backup (it was killed between the two renames of the fallback swap), the backup is renamed
    back to ``target`` first. Entries of live processes are left alone.
    """
    target = Path(target)
    pattern = _leftover_pattern(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    dead: list[tuple[str, Path]] = []
    for name in names:
        m = pattern.fullmatch(name)
        if m and not _alive(int(m.group(2))):
            dead.append((m.group(1), target.parent / name))
    if not os.path.lexists(target):
        backups = [p for kind, p in dead if kind == "old"]
        backups.sort(key=_mtime, reverse=True)
        for backup in backups:
            try:
                os.rename(backup, target)
            except OSError:
                continue
            _fsync_dir(target.parent)
            dead = [(kind, p) for kind, p in dead if p != backup]
            break
    for _kind, path in dead:
        _remove(path)


def recover(target: str | Path) -> Path:
    """Put back a bundle left at a ``.old-`` name by a save killed mid-swap; return ``target``.

    Only needed where the swap cannot be done in one step (see the module docstring), and
    done anyway by the next write to ``target``.
    """
    clean_leftovers(target)
    return Path(target)


# --- swapping --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's ``renameat2``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the system or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _swap_in(tmp: Path, target: Path) -> Path | None:
    """Put the folder ``tmp`` at ``target``; return where the old target now is (to remove)."""
    if not os.path.lexists(target):
        try:
            os.rename(tmp, target)
            return None
        except OSError as exc:  # created meanwhile: swap with it
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not os.path.lexists(target):
                raise
    if _exchange(tmp, target):
        return tmp
    backup = _temp_name(target, "old")
    os.rename(target, backup)
    try:
        os.rename(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.rename(backup, target)
        raise
    return backup


# --- the context managers --------------------------------------------------------------------


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write; on success it replaces ``target`` in
    one rename, on failure (an error, a kill) it is removed and ``target`` is left as it was."""
    target = Path(target)
    if target.is_dir():
        raise ConfigError(f"{target} is a folder: expected a file path to write to")
    clean_leftovers(target)
    tmp = _temp_name(target, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode: less the umask
    try:
        yield tmp
        if tmp.is_file():
            _set_mode(tmp, umask())
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(target.parent)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside ``target``; once the caller has filled it, it
    replaces ``target`` whole (see the module docstring). On failure it is removed and ``target``
    is left as it was."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} is a file: expected a folder to write the bundle into")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    while True:
        tmp = _temp_name(target, "tmp")
        try:
            os.mkdir(tmp, 0o777)  # mode: less the umask
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        _finish_tree(tmp)
        old = _swap_in(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    if old is not None:
        _remove(old)
    _fsync_dir(target.parent)
