"""Text that ships with Python, split into paragraphs."""

from __future__ import annotations

import importlib
import math
import random


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
