"""The compression plan inside a checkpoint dict, and rebuilding the structure before weights load.

A compressed model's state dict has the factored shapes, so a fresh (uncompressed) instance
must be given the compressed structure first. Whoever writes the checkpoint stores the plan
under :data:`PLAN_CHECKPOINT_KEY`; whoever loads calls :func:`restore_compressed_structure`
before ``load_state_dict``. Plain dicts only: no Lightning needed.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from lightning_afm.compress.modules import LowRankEmbedding, LowRankLinear
from lightning_afm.compress.plan import CompressionPlan, PlanEntry
from lightning_afm.compress.surgery import get_submodule, replay_plan
from lightning_afm.compress.ttd import TTEmbedding

PLAN_CHECKPOINT_KEY = "afm_compression_plan"


def entry_is_applied(model: nn.Module, entry: PlanEntry) -> bool:
    """Whether ``model`` already has the structure ``entry`` describes."""
    if entry.kind == "fold":
        return bool(getattr(model, "mlp_reads_codes", False))
    try:
        module = get_submodule(model, entry.name)
    except (AttributeError, ValueError, KeyError):
        return False
    if entry.kind == "linear":
        return isinstance(module, LowRankLinear) and module.rank == entry.rank
    if entry.kind == "tt_embedding":
        return (
            isinstance(module, TTEmbedding)
            and module.tt_rank == entry.rank
            and module.row_factors == list(entry.flags.get("row_factors", module.row_factors))
            and module.dim_factors == list(entry.flags.get("dim_factors", module.dim_factors))
        )
    return isinstance(module, LowRankEmbedding) and module.code_dim == entry.rank


def restore_compressed_structure(model: nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Replay the checkpoint's plan on ``model`` (entries already in place are skipped).

    Returns True when the checkpoint holds a plan. Idempotent, so a model's own
    ``on_load_checkpoint`` and a callback may both call it.
    """
    data = checkpoint.get(PLAN_CHECKPOINT_KEY)
    if not data:
        return False
    plan = CompressionPlan.from_dict(data)
    todo = [e for e in plan if not entry_is_applied(model, e)]
    if todo:
        replay_plan(model, CompressionPlan(todo))
    return True
