"""User code as a model or data source: it runs only when trusted, and travels with the bundle.

A source written ``file.py:fn`` or ``module:fn`` is code: building the model runs it. slimfuse
runs such code only under an explicit opt-in, ``trust_code=True`` in the library or
``--trust-code`` on the command line (one name everywhere, as Hugging Face's
``trust_remote_code``). Without it, loading a bundle or a recipe builds only registered zoo
models, Hugging Face folders and fused specs made of those, and a code source is refused with
one line before anything runs.

A ``file.py`` source is read once, hashed (sha256) and executed from those bytes. The model's
spec records the resolved path and the hash; :func:`slimfuse.save` copies the exact bytes that
ran into the bundle (``code/<name>-<hash>.py``) and :func:`slimfuse.load` runs that copy, from
any working directory, after checking its hash: a file changed since it was saved is refused.
A file's own imports of sibling files are not copied (keep a model's code in one file, or make
it an installed package and use ``module:fn``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sys
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from slimfuse.errors import ModelError, SlimfuseError, UntrustedCodeError

TRUST_FLAG = "--trust-code"
CODE_DIR = "code"

_trusted: ContextVar[bool] = ContextVar("slimfuse_trust_code", default=False)
_ran: dict[str, bytes] = {}  # sha256 -> the bytes of every code file that ran in this process
_modules: dict[str, types.ModuleType] = {}  # sha256 -> its module (the same code runs once)


@contextlib.contextmanager
def trusting(trust_code: bool | None) -> Iterator[None]:
    """Within this block code sources run if ``trust_code`` (``None``: as the caller decided)."""
    if trust_code is None:
        yield
        return
    token = _trusted.set(bool(trust_code))
    try:
        yield
    finally:
        _trusted.reset(token)


def code_trusted() -> bool:
    return _trusted.get()


def is_code(source: str) -> bool:
    """``file.py:fn`` or ``module:fn`` (zoo names and folders have no colon)."""
    return ":" in source


def require_trust(source: str, what: str = "model source") -> None:
    """Refuse a code source unless code is trusted here."""
    if not code_trusted():
        raise UntrustedCodeError(
            f"{what} {source!r} is code (file.py:fn or module:fn) and would run; pass "
            f"{TRUST_FLAG} (trust_code=True) only if you trust where it came from"
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _split(source: str, what: str, error: type[SlimfuseError]) -> tuple[str, str]:
    target, sep, attr = source.rpartition(":")
    if not sep or not target or not attr or not attr.isidentifier():
        raise error(f"{what} {source!r}: expected file.py:fn or module:fn")
    return target, attr


def import_callable(
    source: str,
    *,
    what: str = "factory",
    error: type[SlimfuseError] = ModelError,
    expected_sha256: str | None = None,
) -> tuple[Callable[..., Any], str, str | None]:
    """Resolve ``file.py:fn`` or ``package.module:fn`` (trusted callers only).

    Returns ``(fn, resolved source, sha256)``: a file's source is its absolute path and the hash
    of the bytes that ran (``None`` for a module). ``expected_sha256`` refuses a file whose
    bytes differ (a bundle's copy changed since it was saved). Bytes that already ran in this
    process (trusted then) run again without asking: it is the same code.
    """
    target, attr = _split(source, what, error)
    digest: str | None = None
    if target.endswith(".py"):
        path = Path(target).resolve()
        if path.is_file():
            data = path.read_bytes()
            digest = sha256(data)
        elif expected_sha256 in _modules:  # gone from disk since it ran here: the same code
            data, digest = _ran[expected_sha256], expected_sha256
        else:
            require_trust(source, what)
            raise error(f"{what} {source!r}: file {target!r} not found")
        if expected_sha256 is not None and digest != expected_sha256:
            raise error(
                f"{what} {source!r}: the file changed since it was saved (sha256 "
                f"{digest[:12]}..., recorded {expected_sha256[:12]}...); refusing to run it"
            )
        module = _modules.get(digest)
        if module is None:  # new code: it runs only if trusted
            require_trust(source, what)
            module = types.ModuleType(f"slimfuse_user_{digest[:16]}")
            module.__file__ = str(path)
            sys.modules[module.__name__] = module  # dataclasses and pickling look modules up
            try:
                exec(compile(data, str(path), "exec"), module.__dict__)  # trusted: checked above
            except Exception:
                del sys.modules[module.__name__]
                raise
            _modules[digest] = module
            _ran[digest] = data
        source = f"{path}:{attr}"
    else:
        require_trust(source, what)
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise error(f"{what} {source!r}: cannot import module {target!r} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise error(f"{what} {source!r}: {target!r} has no callable {attr!r}")
    return fn, source, digest


# -- bundles -----------------------------------------------------------------------------------


def file_of(source: str) -> Path | None:
    """The file of a ``file.py:fn`` source (``None`` for zoo names and modules)."""
    target, sep, _ = source.rpartition(":")
    return Path(target) if sep and target.endswith(".py") else None


def copy_into(spec: dict[str, Any], folder: Path) -> None:
    """Write the code a ``file.py`` spec ran into ``folder/code/`` and point its source there.

    The bytes are the ones that ran (kept when they were imported); a spec made elsewhere is
    read from disk and must still match its recorded hash.
    """
    path = file_of(spec["source"])
    if path is None:
        return
    attr = spec["source"].rpartition(":")[2]
    digest = spec.get("code_sha256")
    data = _ran.get(digest) if digest else None
    if data is None:
        if not path.is_file():
            raise ModelError(f"model source {spec['source']!r}: file not found; cannot save it")
        data = path.read_bytes()
        if digest is not None and sha256(data) != digest:
            raise ModelError(
                f"model source {spec['source']!r} changed since the model was built; "
                "rebuild the model from the current file, or restore the file"
            )
        digest = sha256(data)
    name = f"{path.stem}-{digest[:12]}.py"
    (folder / CODE_DIR).mkdir(exist_ok=True)
    (folder / CODE_DIR / name).write_bytes(data)
    spec["source"] = f"{CODE_DIR}/{name}:{attr}"
    spec["code_sha256"] = digest


def locate_in(spec: dict[str, Any], folder: Path) -> None:
    """Point a bundle's ``code/...py:fn`` source at the copy inside ``folder``.

    The path must stay inside the bundle's ``code/`` folder (no ``..``, no absolute path, no
    link out of it) and carry the hash it was saved with.
    """
    path = file_of(spec["source"])
    if path is None:
        return
    if path.parts[:1] != (CODE_DIR,) and not spec.get("code_sha256"):
        return  # an older bundle's source (before code was copied in): run where it names
    attr = spec["source"].rpartition(":")[2]
    root = (folder / CODE_DIR).resolve()
    resolved = (folder / path).resolve()
    if path.is_absolute() or path.parts[:1] != (CODE_DIR,) or not resolved.is_relative_to(root):
        raise ModelError(
            f"model source {spec['source']!r}: a bundle's code must be a file in its "
            f"{CODE_DIR}/ folder"
        )
    if not spec.get("code_sha256"):
        raise ModelError(f"model source {spec['source']!r}: no code_sha256 recorded for it")
    spec["source"] = f"{resolved}:{attr}"
