"""Pruning and low-rank factorization share one set-up and one recovery
(:mod:`slimfuse.training.recovery`): the same refusals, each in its family's words, and
distillation from a frozen copy of the caller's model, which stays as it was."""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.config import TrainConfig
from slimfuse.errors import ConfigError
from slimfuse.lowrank.api import factorize as factorize_alone
from slimfuse.lowrank.config import Ratio
from slimfuse.pruning.api import prune as prune_alone
from slimfuse.pruning.config import Channels
from tests.pruning.nets import tiny_data

ONE_EPOCH = TrainConfig(epochs=1, lr=1e-3, batch_size=32, restore_best=False, quiet=True)
VERBS = {
    "prune": (prune_alone, lambda **kw: Channels(channels=0.5, **kw), "pruning"),
    "factorize": (factorize_alone, lambda **kw: Ratio(ratio=0.3, **kw), "factorization"),
}


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def _mlp(data):
    torch.manual_seed(0)
    return slimfuse.build_model("mlp", data=data, hidden=[32, 32])


@pytest.mark.parametrize("verb", VERBS)
def test_the_same_refusals_in_each_familys_words(data, verb) -> None:
    fn, config, after = VERBS[verb]
    model = _mlp(data)
    with pytest.raises(ConfigError, match=rf"use slimfuse\.{verb}, which passes"):
        fn(model, config(recovery="distill"), data, train=ONE_EPOCH)
    with pytest.raises(ConfigError, match=f"fine-tuning after {after} needs data"):
        fn(model, config(), None, train=ONE_EPOCH)
    with pytest.raises(ConfigError, match="train= expects a TrainConfig; got dict"):
        fn(model, config(), data, train={"epochs": 1})
    with pytest.raises(TypeError, match="unexpected keyword"):
        fn(model, config(), data, epochs=1)


@pytest.mark.parametrize("verb", VERBS)
def test_distill_recovery_learns_from_a_frozen_copy(data, verb) -> None:
    fn, config, _ = VERBS[verb]
    model = _mlp(data).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def objective(teacher, task):
        seen.append(teacher)
        return None  # the task loss: distillation in name only

    small = fn(
        model, config(recovery="distill"), data, train=ONE_EPOCH, teacher_objective=objective
    )
    (teacher,) = seen
    assert teacher is not model and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert small is not model and not small.training


@pytest.mark.parametrize("verb", VERBS)
def test_the_callers_callbacks_watch_recovery(data, verb) -> None:
    """``callbacks=`` reach the recovery loop (a search's watch stops a trial there: a deadline
    or a hopeless epoch), and what they raise stops the verb."""
    from slimfuse.training import Callback

    fn, config, _ = VERBS[verb]

    class Count(Callback):
        steps = 0

        def on_step_end(self, model, step) -> None:
            self.steps += 1

    class Stop(Callback):
        def on_step_end(self, model, step) -> None:
            raise RuntimeError("time is up")

    count = Count()
    fn(_mlp(data), config(), data, train=ONE_EPOCH, callbacks=[count])
    assert count.steps == -(-len(data.train) // ONE_EPOCH.batch_size)  # every step of the epoch
    with pytest.raises(RuntimeError, match="time is up"):
        fn(_mlp(data), config(), data, train=ONE_EPOCH, callbacks=[Stop()])
