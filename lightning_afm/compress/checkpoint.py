"""The compression plan inside a checkpoint dict, and rebuilding the structure before weights load.

A compressed model's state dict has the factored shapes, so a fresh (uncompressed) instance
must be given the compressed structure first. Whoever writes the checkpoint stores the plan
under :data:`PLAN_CHECKPOINT_KEY`; whoever loads calls :func:`restore_compressed_structure`
before ``load_state_dict``. Plain dicts only: no Lightning needed.

The plan in a checkpoint is the whole structure at the moment it was saved (an empty plan:
nothing compressed yet). A model that is *more* compressed than the checkpoint (the fit's final
model loading an earlier stage's checkpoint, e.g. ``trainer.test(ckpt_path="best")``) gets its
extra factored modules put back as plain ones of the original shapes first; the checkpoint's
weights then fill them.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from lightning_afm.compress.plan import CompressionPlan, PlanEntry
from lightning_afm.compress.registry import factored_types, get_kind, kind_of_module, kinds
from lightning_afm.compress.surgery import replay_plan, set_submodule

PLAN_CHECKPOINT_KEY = "afm_compression_plan"


def entry_is_applied(model: nn.Module, entry: PlanEntry) -> bool:
    """Whether ``model`` already has the structure ``entry`` describes."""
    try:
        return get_kind(entry.kind).is_applied(model, entry)
    except (AttributeError, ValueError, KeyError):
        return False


def restore_compressed_structure(model: nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Give ``model`` exactly the structure of the checkpoint's plan; True when the checkpoint has one.

    Factored modules the plan does not hold (or holds at another rank) become plain ``nn.Linear``
    / ``nn.Embedding`` modules of their original shapes again, a fold the plan does not hold is
    undone, then the plan's missing entries are replayed. New modules keep their default
    initialisation: the checkpoint's state dict fills them. A checkpoint without the key (not
    written by the compression callback) leaves the model as it is. Idempotent, so a model's own
    ``on_load_checkpoint`` and a callback may both call it.
    """
    if PLAN_CHECKPOINT_KEY not in checkpoint:
        return False
    data = checkpoint[PLAN_CHECKPOINT_KEY]
    plan = CompressionPlan.from_dict(data) if data else CompressionPlan()
    state_dict = checkpoint.get("state_dict")
    _undo_extra_compression(model, plan, state_dict if isinstance(state_dict, Mapping) else {})
    todo = [e for e in plan if not entry_is_applied(model, e)]
    if todo:
        replay_plan(model, CompressionPlan(todo))
    return True


def _undo_extra_compression(model: nn.Module, plan: CompressionPlan, state_dict: Mapping[str, Any]) -> None:
    """Put back plain modules wherever ``model`` is factored beyond ``plan``.

    Model-level changes (a fold) go first, when the plan lacks them or they read a module being
    put back (a fold reads the factored tables).
    """
    wanted = {e.name: e for e in plan if get_kind(e.kind).produces is not None}
    # Only the outermost factored modules: a fold may have put a wider Linear inside a LowRankLinear.
    factored = [(n, m) for n, m in model.named_modules() if isinstance(m, factored_types())]
    outer = [(n, m) for n, m in factored if not any(n.startswith(f + ".") for f, _ in factored)]
    extra = [(n, m) for n, m in outer if n not in wanted or not entry_is_applied(model, wanted[n])]
    for kind in kinds():
        if kind.produces is not None or not kind.present(model):
            continue
        in_plan = any(e.kind == kind.name for e in plan)
        if not in_plan or any(kind.depends_on(m) for _, m in extra):
            kind.undo(model, state_dict)
    for name, module in extra:
        set_submodule(model, name, kind_of_module(module).plain_module(name, module, state_dict))
