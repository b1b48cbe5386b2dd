"""``slimfuse factorize`` (also ``slimfuse lowrank``): the flags are
:data:`~slimfuse.lowrank.config.LowRankConfig`'s fields and recovery's training flags; the
amount given (``--energy``, ``--ratio``, ``--budget``) picks the method. The command is an
:class:`~slimfuse.cli.edit.EditCommand`."""

from __future__ import annotations

import argparse
from typing import Any

from slimfuse.cli.edit import EditCommand
from slimfuse.lowrank.config import AMOUNTS, LowRankConfig, check_recovery


def _ranks(small: Any) -> str:
    """Prints each targeted layer's rank (or why it was left alone); the params / MACs line."""
    info = small.lowrank_info
    for row in info["layers"]:
        if row["status"] == "factorized":
            why = f" ({row['reason']})" if row["reason"] else ""
            print(f"rank {row['rank']:>5} of {row['full_rank']}: {row['layer']}{why}")
        else:
            print(f"left alone: {row['layer']} ({row['type']}): {row['reason']}")
    (p0, p1), (m0, m1) = info["params"], info["macs"]
    macs = f"; MACs {m0:,} -> {m1:,} ({m1 / m0:.3f}x)" if m0 and m1 else ""
    return f"params {p0:,} -> {p1:,} ({p1 / p0:.3f}x){macs}"


FACTORIZE = EditCommand(
    "factorize",
    LowRankConfig,
    check_recovery,
    AMOUNTS,
    aliases=("lowrank",),
    summary="low-rank factorization: Linear / conv layers as two smaller ones (truncated SVD)",
    description="Replace Linear, Conv1d and Conv2d layers by two smaller layers from their "
    "truncated SVD, then recover (--epochs). The amount given picks how ranks are chosen: "
    "--energy (per layer, share of squared singular values kept), --ratio (per layer, "
    "share of weights kept), --budget (the model's FLOPs or parameters, ranks by "
    "sensitivity on --data). A layer that would not get smaller is left alone and listed.",
    choose="how ranks are chosen",
    method_help="the method",
    data_for=("budget",),
    no_data="factorize needs --data for --budget (calibration) and for recovery epochs",
    report=_ranks,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    FACTORIZE.add(sub)
