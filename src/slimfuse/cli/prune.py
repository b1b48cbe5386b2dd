"""``slimfuse prune``: the flags are :data:`~slimfuse.pruning.config.PruneConfig`'s fields and
recovery's training flags; the amount given (``--sparsity``, ``--threshold``, ``--channels``,
``--ffn`` / ``--heads``) picks the method. The command is an
:class:`~slimfuse.cli.edit.EditCommand`."""

from __future__ import annotations

import argparse
from typing import Any

from slimfuse.cli.edit import EditCommand
from slimfuse.pruning.config import AMOUNTS, PruneConfig, check_recovery


def _storage(pruned: Any) -> str:
    from slimfuse.pruning.sparse import storage_report

    rep = storage_report(pruned)
    return (
        f"params {rep['params']:,} ({rep['nonzero_params']:,} non-zero); weights "
        f"{rep['dense_bytes'] / 1024:.1f} KiB dense, {rep['encoded_bytes'] / 1024:.1f} KiB stored"
    )


PRUNE = EditCommand(
    "prune",
    PruneConfig,
    check_recovery,
    AMOUNTS,
    summary="prune a model (unstructured sparsity, channels, or transformer FFN/heads) and recover",
    description="Prune a model, then recover (--epochs). The amount given picks the method: "
    "--sparsity (magnitude), --threshold, --channels, --ffn/--heads (transformer). Each flag "
    "says which methods read it; a flag the method does not read is an error.",
    choose="what to prune",
    method_help="the pruning method",
    data_for=("magnitude", "threshold", "channels"),
    no_data="prune needs --data (example inputs and fine-tuning data)",
    report=_storage,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    PRUNE.add(sub)
