"""Embedding distillation on token inputs: depth student, token-level hints, cached features."""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.distillation import Cosine, distill_run, objective
from slimfuse.distillation.students import depth_student
from slimfuse.distillation.text import embed, embedding_data
from slimfuse.training import TrainConfig

pytest.importorskip("transformers")

TEXTS = [
    f"The function number {i} returns a list of {i % 7} items sorted by key." for i in range(40)
]


@pytest.fixture(scope="module")
def tiny():
    from slimfuse.models.hf import tokenizer

    torch.manual_seed(0)
    config = {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 16,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    teacher = slimfuse.build_model("hf_encoder", config=config).eval()
    texts = {"train": TEXTS[:24], "val": TEXTS[24:32], "test": TEXTS[32:]}
    data = embedding_data(teacher, texts, tokenizer=tokenizer(), max_length=32, train_targets=False)
    return teacher, data


def test_embedding_data_targets_are_teacher_embeddings(tiny) -> None:
    teacher, data = tiny
    x, target = data.test[0]
    assert x["input_ids"].shape == (32,) and target.shape == (16,)
    assert data.train[0][1].shape == (0,)  # no teacher pass over the training texts
    again = embed(teacher, {k: v[None] for k, v in x.items()})[0]
    torch.testing.assert_close(again, target, atol=1e-5, rtol=1e-5)


def test_token_hints_with_cache_match_uncached(tiny) -> None:
    teacher, data = tiny
    layers = "encoder.encoder.layer"
    hints = {f"{layers}.0": f"{layers}.1", f"{layers}.1": f"{layers}.3"}
    student = depth_student(teacher, keep=[0, 2]).eval()  # no dropout: comparable losses
    batch = next(iter(data.loader("train", batch_size=8)))
    kwargs = dict(student=student, example_inputs=batch[0])
    cached = objective(teacher, "embedding", Cosine(hints=hints), **kwargs)
    plain = objective(teacher, "embedding", Cosine(hints=hints, cache=False), **kwargs)
    first = cached(student, batch)
    served = cached(student, batch)  # every sample from the cache, features zero-padded
    reference = plain(student, batch)
    assert cached.cache.hits == 8
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(served, reference)
    cached.close()
    plain.close()


@pytest.mark.filterwarnings(
    "ignore:.*the validation split has:slimfuse.errors.SlimfuseWarning"
)  # tiny data
def test_distill_embedding_student_gets_closer(tiny) -> None:
    teacher, data = tiny
    layers = "encoder.encoder.layer"
    torch.manual_seed(1)  # a fresh 2-layer student (a copy of a random teacher is too close)
    config = {**teacher.encoder.config.to_dict(), "num_hidden_layers": 2}
    student = slimfuse.build_model("hf_encoder", config=config)
    before = slimfuse.evaluate(student, data.loader("val"), "embedding")
    cfg = Cosine(hints={f"{layers}.1": f"{layers}.3"})
    tc = TrainConfig(epochs=4, batch_size=8, lr=1e-2, quiet=True)
    run = distill_run(student, teacher, cfg, data, train=tc, task="embedding")
    assert run.train.best_metric > before + 0.05
    assert run.cache_hits == 3 * len(data.train)
