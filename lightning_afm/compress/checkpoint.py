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

from lightning_afm.compress.fold import first_mlp_linear_name
from lightning_afm.compress.modules import LowRankEmbedding, LowRankLinear
from lightning_afm.compress.plan import CompressionPlan, PlanEntry
from lightning_afm.compress.surgery import get_submodule, replay_plan, set_submodule
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


_FACTORED = (LowRankLinear, LowRankEmbedding, TTEmbedding)


def _undo_extra_compression(model: nn.Module, plan: CompressionPlan, state_dict: Mapping[str, Any]) -> None:
    """Put back plain modules wherever ``model`` is factored beyond ``plan`` (the fold first: it reads the tables)."""
    wanted = {e.name: e for e in plan if e.kind != "fold"}
    # Only the outermost factored modules: a fold may have put a wider Linear inside a LowRankLinear.
    factored = [(n, m) for n, m in model.named_modules() if isinstance(m, _FACTORED)]
    outer = [(n, m) for n, m in factored if not any(n.startswith(f + ".") for f, _ in factored)]
    extra = [(n, m) for n, m in outer if n not in wanted or not entry_is_applied(model, wanted[n])]
    folded = bool(getattr(model, "mlp_reads_codes", False))
    plan_folds = any(e.kind == "fold" for e in plan)
    if folded and (not plan_folds or any(isinstance(m, LowRankEmbedding) for _, m in extra)):
        _unfold(model, state_dict)
    for name, module in extra:
        set_submodule(model, name, _plain_module(name, module, state_dict))


def _unfold(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """The first MLP Linear back at its unfolded width ``F t + N`` (it read ``F k + N`` codes)."""
    name = first_mlp_linear_name(model)
    linear = get_submodule(model, name)
    tables = list(model.embeddings.tables())
    width, code = tables[0].embedding_dim, tables[0].code_dim
    in_features = linear.in_features - len(tables) * code + len(tables) * width
    bias = f"{name}.bias" in state_dict if state_dict else linear.bias is not None
    set_submodule(model, name, nn.Linear(in_features, linear.out_features, bias=bias,
                                         device=linear.weight.device, dtype=linear.weight.dtype))
    model.mlp_reads_codes = False


def _plain_module(name: str, module: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
    """The ``nn.Linear`` / ``nn.Embedding`` a factored module replaced, at default initialisation."""
    weight = next(module.parameters())
    if isinstance(module, LowRankLinear):
        bias = f"{name}.bias" in state_dict if state_dict else module.second.bias is not None
        return nn.Linear(module.in_features, module.out_features, bias=bias, device=weight.device, dtype=weight.dtype)
    padding_idx = getattr(module, "padding_idx", None)
    sparse = False
    if isinstance(module, LowRankEmbedding):
        padding_idx, sparse = module.table.padding_idx, module.table.sparse
    return nn.Embedding(module.num_embeddings, module.embedding_dim, padding_idx=padding_idx, sparse=sparse,
                        device=weight.device, dtype=weight.dtype)
