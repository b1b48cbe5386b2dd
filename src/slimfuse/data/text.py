"""Text data: paragraphs from a text file, a folder of them, a JSONL file or Python's own docs.

:func:`load_text` reads what a file says into a text :class:`~slimfuse.data.core.Data` (splits
of paragraphs, ``meta["kind"] == "text"``) and checks it, before any model sees it; encoders
turn it into token data (:func:`slimfuse.distillation.text.encode_text`). Sources:

- ``notes.txt`` / ``notes.md``: one paragraph per line, blank lines ignored
- a folder: every ``.txt`` / ``.md`` file under it (sorted; hidden ones skipped), paragraphs
  split on blank lines, each joined into one line
- ``notes.jsonl``: one JSON object per line with a string field ``text`` (blank lines ignored)
- ``pydocs``: the Python documentation paragraphs of :func:`text_corpus`

Bounds: at most ``MAX_BYTES`` (64 MiB) of text and ``MAX_FILES`` (10,000) files are read, a
paragraph keeps its first ``MAX_CHARS`` (10,000) characters (far more than an encoder reads),
repeated paragraphs count once, and past ``MAX_PARAGRAPHS`` (20,000) the rest is left out
with a warning. Fewer than ``MIN_PARAGRAPHS`` (10) cannot give train, validation and test
splits and calibration batches: refused.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from slimfuse.data.core import Data, check_splits
from slimfuse.errors import DataError, SlimfuseWarning

PYDOCS = "pydocs"
TEXT_SUFFIXES = (".txt", ".md")
JSONL = ".jsonl"
MAX_BYTES = 64 << 20
MAX_FILES = 10_000
MAX_CHARS = 10_000
MAX_PARAGRAPHS = 20_000
MIN_PARAGRAPHS = 10
MAX_LENGTH = 128  # tokens per paragraph an encoder reads, unless max_length says otherwise
TEXT_FORMS = '--data notes.txt, a folder of .txt/.md, a .jsonl with "text", or pydocs'


class TextDataset(Dataset):
    """Paragraphs (``str``); an encoder's token data is made from them."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


def is_text(data: Any) -> bool:
    """``data`` holds paragraphs (a text source), not yet tokens."""
    return isinstance(data, Data) and data.meta.get("kind") == "text"


def is_tokens(data: Any) -> bool:
    """``data``'s inputs are token ids + attention masks (a dict with ``input_ids``)."""
    if not isinstance(data, Data) or is_text(data) or not len(data.train):  # type: ignore[arg-type]
        return False
    sample = data.train[0]
    x = sample[0] if isinstance(sample, (tuple, list)) else sample
    return isinstance(x, dict) and "input_ids" in x


def is_text_source(spec: str) -> bool:
    """``spec`` names text: ``pydocs``, a ``.txt`` / ``.md`` / ``.jsonl`` file or a folder."""
    path = Path(spec)
    return spec == PYDOCS or path.suffix in (*TEXT_SUFFIXES, JSONL) or path.is_dir()


def load_text(
    spec: str,
    *,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_length: int | None = None,
) -> Data:
    """Read a text source (see the module docstring) into seeded train / val / test paragraphs.

    A file or folder is split by paragraph (the test split first, then validation from the
    rest, like :func:`~slimfuse.data.core.from_arrays`); ``pydocs`` keeps :func:`text_corpus`'s
    split by document (its test paragraphs come from held-out topics) and takes validation
    from its train paragraphs. The split follows ``split_seed``. ``max_length`` (tokens per paragraph for an encoder, default
    128) travels in ``meta``."""
    length = MAX_LENGTH if max_length is None else max_length
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= 8192:
        raise DataError(f"max_length {length!r}: expected a whole number of tokens in [2, 8192]")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction {test_fraction}: expected a number in (0, 1)")
    if spec == PYDOCS:
        corpus = text_corpus(seed=split_seed)
        name, rest, test = PYDOCS, corpus["train"], corpus["test"]
        n_val = max(1, round(len(rest) * val_fraction))
        order = np.random.default_rng(split_seed + 1).permutation(len(rest))
        val, train = [rest[i] for i in order[:n_val]], [rest[i] for i in order[n_val:]]
    else:
        path = Path(spec)
        name = path.name or spec
        texts = _read_source(path)
        texts = _bounded(list(dict.fromkeys(texts)), name)
        if len(texts) < MIN_PARAGRAPHS:
            raise DataError(
                f"{name}: {len(texts)} distinct paragraph(s); expected at least {MIN_PARAGRAPHS} "
                "(train, validation and test splits and calibration batches come from them)"
            )
        n_test = max(1, round(len(texts) * test_fraction))
        order = np.random.default_rng(split_seed).permutation(len(texts))
        test = [texts[i] for i in order[:n_test]]
        rest = [texts[i] for i in order[n_test:]]
        n_val = max(1, round(len(rest) * val_fraction))
        order = np.random.default_rng(split_seed + 1).permutation(len(rest))
        val, train = [rest[i] for i in order[:n_val]], [rest[i] for i in order[n_val:]]
    check_splits(name, {"train": len(train), "val": len(val), "test": len(test)})
    return Data(
        name=name,
        train=TextDataset(train),
        val=TextDataset(val),
        test=TextDataset(test),
        meta={
            "kind": "text",
            "max_length": length,
            "split": {  # as split_record keeps it: fingerprints of the paragraphs, in order
                "data": name,
                "split_seed": split_seed,
                "sizes": {"train": len(train), "val": len(val), "test": len(test)},
                "val": _fingerprint(val),
                "test": _fingerprint(test),
                "by": "document" if spec == PYDOCS else "paragraph",
            },
        },
    )


def _fingerprint(texts: list[str]) -> str:
    """12 hex characters of the sha256 of paragraphs, in order."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:12]


def _read_source(path: Path) -> list[str]:
    if path.is_dir():
        return _read_folder(path, f"{path.name or path.resolve().name}/")
    if not path.is_file():
        raise DataError(
            f"data file {str(path)!r} not found; expected an existing {path.suffix} file"
        )
    text = _read_utf8(path, path.name, path.stat().st_size)
    if path.suffix == JSONL:
        texts = _jsonl(text, path.name)
    else:
        texts = [_one_line(line) for line in text.splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        what = 'a "text" field per line' if path.suffix == JSONL else "one paragraph per line"
        raise DataError(f"{path.name}: no text (the file is empty or blank); expected {what}")
    return texts


def _read_folder(folder: Path, label: str) -> list[str]:
    files = []
    for seen, f in enumerate(folder.rglob("*")):  # symlinked folders are not followed
        rel = f.relative_to(folder).parts
        if f.suffix in TEXT_SUFFIXES and f.is_file() and not any(p.startswith(".") for p in rel):
            files.append(f)
        if len(files) > MAX_FILES or seen >= 10 * MAX_FILES:
            many = len(files) > MAX_FILES
            what = f"{MAX_FILES:,} text files" if many else f"{10 * MAX_FILES:,} entries"
            raise DataError(
                f"{label}: more than {what}; expected at most {MAX_FILES:,} text "
                "files (take a sample)"
            )
    files.sort()
    if not files:
        raise DataError(
            f"{label}: no .txt or .md files; expected a folder of text files "
            "(paragraphs separated by blank lines)"
        )
    budget = MAX_BYTES
    texts: list[str] = []
    for f in files:
        where = f"{label}{f.relative_to(folder)}"
        size = f.stat().st_size
        text = _read_utf8(f, where, size, budget, folder=label)
        budget -= size
        texts += [_one_line(block) for block in _blocks(text)]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(
            f"{label}: its {len(files)} .txt/.md file(s) hold no text; expected "
            "paragraphs separated by blank lines"
        )
    return texts


def _read_utf8(
    path: Path, where: str, size: int, budget: int | None = None, folder: str | None = None
) -> str:
    if size > (MAX_BYTES if budget is None else budget):
        whole = f"{folder} holds" if folder else f"{where}:"
        raise DataError(
            f"{whole} more than {_size(MAX_BYTES)} of text; expected at most {_size(MAX_BYTES)} "
            "(take a sample)"
        )
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}: byte {exc.start} is not UTF-8 text; expected a UTF-8 text file"
        ) from None


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def _jsonl(text: str, name: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{name}: line {n} is not JSON ({exc.msg}); expected one object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{name}: line {n} is a JSON {_json_kind(obj)}; expected an object with a "
                '"text" field'
            )
        if "text" not in obj:
            keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
            raise DataError(f'{name}: line {n} has no "text" field (keys: {keys})')
        if not isinstance(obj["text"], str):
            raise DataError(
                f'{name}: line {n}: "text" is a JSON {_json_kind(obj["text"])}; expected a string'
            )
        out.append(_one_line(obj["text"]))
    return out


def _json_kind(obj: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(obj), "number")


def _blocks(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_CHARS]


def _bounded(texts: list[str], name: str) -> list[str]:
    if len(texts) > MAX_PARAGRAPHS:
        warnings.warn(
            f"{name}: {len(texts):,} paragraphs; reading the first {MAX_PARAGRAPHS:,} "
            "(take a sample to choose which)",
            SlimfuseWarning,
            stacklevel=4,
        )
        texts = texts[:MAX_PARAGRAPHS]
    return texts


def text_corpus(seed: int = 0, held_out: float = 0.2, min_chars: int = 80) -> dict[str, list[str]]:
    """Real English text that ships with Python, split into ``train`` and ``test`` paragraphs.

    Paragraphs come from the documentation topics in ``pydoc_data`` and the docstrings of
    standard-library modules. The split is by document, so no paragraph of a held-out topic
    leaks into training.
    """

    from pydoc_data.topics import topics  # 700 KB of text: read only when the corpus is asked for

    docs: list[list[str]] = []
    for key in sorted(topics):
        docs.append(_paragraphs(topics[key], min_chars))
    for mod_name in _STDLIB_DOC_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # pragma: no cover - platform-specific modules
            continue
        texts = [mod.__doc__ or ""]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            doc = getattr(obj, "__doc__", None)
            if (
                callable(obj)
                and getattr(obj, "__module__", None) == mod_name
                and isinstance(doc, str)
            ):
                texts.append(doc)
        docs.append([p for t in texts for p in _paragraphs(t, min_chars)])
    docs = [d for d in docs if d]
    rng = random.Random(seed)
    rng.shuffle(docs)
    n_test = max(1, math.floor(len(docs) * held_out))
    test = list(dict.fromkeys(p for d in docs[:n_test] for p in d))
    held = set(test)  # topics repeat paragraphs: none of the held-out text may appear in train
    train = list(dict.fromkeys(p for d in docs[n_test:] for p in d if p not in held))
    return {"train": train, "test": test}


def _paragraphs(text: str, min_chars: int) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        para = " ".join(block.split())
        if len(para) >= min_chars:
            out.append(para[:2000])
    return out


_STDLIB_DOC_MODULES = [
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "math",
    "mimetypes",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "shlex",
    "shutil",
    "socket",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
]
