"""A latency budget's measurements of whole models: the inference form's forward, timed.

:func:`inference_latency_ms` times one forward of
:func:`lightning_afm.inference.optimize_for_inference` of a model at a batch of random rows (the
median of several runs). :func:`planned_structure` builds, on a copy, the structure the stages to
come would leave at given ranks (bare factors from their plan entries, no statistics), so the
smallest structure's latency, and a candidate allocation's, are measured before any module of the
model changes. :func:`candidate_model` builds the same structure with AFM's own factors from
collected statistics, for a size budget's validation scoring of candidate allocations.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lightning_afm import compress
from lightning_afm.compress.registry import kind_for_module
from lightning_afm.compress.surgery import get_submodule
from lightning_afm.compress.timing import median_ms
from lightning_afm.callbacks.budgeting import PlannedStage

__all__ = ["planned_structure", "candidate_model", "inference_latency_ms", "random_rows"]


def random_rows(model: nn.Module, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``batch`` rows for ``model``'s schema: ids uniform in each field's vocabulary (``[B, F]``) and
    standard normal numeric features (``[B, N]``, None without any), on the model's device."""
    schema = getattr(model, "schema", None)
    if schema is None:
        raise ValueError(f"a latency budget times the inference form of the bundled CTR models; "
                         f"{type(model).__name__} has no schema (use a params=, ratio= or bytes= budget)")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.stack([torch.randint(0, int(v), (batch,), generator=generator) for v in schema.vocab_sizes], dim=1)
    numeric = torch.randn(batch, schema.num_numeric, generator=generator) if schema.num_numeric else None
    return ids.to(device), None if numeric is None else numeric.to(device)


def inference_latency_ms(model: nn.Module, batch: int) -> float:
    """Median milliseconds of one forward of ``model``'s inference form at ``batch`` random rows.

    Runs where the model is, with the current thread setting; ``model`` is not changed (its
    training mode is put back).
    """
    from lightning_afm.inference import optimize_for_inference  # the callbacks need it only for a latency budget

    categorical, numeric = random_rows(model, batch)
    was_training = model.training
    try:
        fast = optimize_for_inference(model.eval())
        with torch.inference_mode():
            return median_ms(lambda: fast(categorical, numeric), categorical.device)
    finally:
        model.train(was_training)


def planned_structure(model: nn.Module, planned: Sequence[PlannedStage], ranks: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with the structure ``planned`` would leave: each target factored at
    ``ranks[name]`` (its stage's fixed rank when not there; an auto stage's target not there stays
    dense, as the budget leaves it), folded where its stage folds.

    The factors are the kinds' bare structures (:meth:`CompressionKind.replay`), refilled with
    small random values: a latency depends on the shapes, not on the values.
    """
    out = copy.deepcopy(model)
    for p in planned:
        for name in p.names:
            if p.stage.auto_rank and name not in ranks:
                continue
            module = get_submodule(out, name)
            kind = kind_for_module(module, p.stage.method, name)
            if not hasattr(kind, "planned_entry"):
                raise ValueError(f"a latency budget cannot build the {kind.name!r} structure of {name!r} ahead of "
                                 "its stage; use a params=, ratio= or bytes= budget")
            entry = kind.planned_entry(name, module, p.stage.method, int(ranks.get(name, p.stage.rank)))
            kind.install(out, entry, kind.replay(out, entry))
        if p.fold_width is not None:
            compress.fold_into_first_linear(out)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in out.parameters():
            if parameter.is_floating_point():
                parameter.copy_(0.01 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return out


def candidate_model(model: nn.Module, planned: Sequence[PlannedStage],
                    statistics: Mapping[str, compress.OutputStatistics], ranks: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with every target of ``planned`` (all auto stages) initialised by its stage's
    method from ``statistics`` at ``ranks[name]`` (a target not in it stays dense, as the budget leaves
    it), folded where its stage folds: the candidate as its stages would swap it, before any finetune.
    """
    out = copy.deepcopy(model)
    for p in planned:
        if not p.stage.auto_rank:
            raise ValueError(f"candidate_model builds auto stages only; stage {p.stage.name!r} has rank {p.stage.rank}")
        names = [name for name in p.names if name in ranks]
        if names:
            compress.compress_targets(out, names, {name: statistics[name] for name in names},
                                      rank={name: int(ranks[name]) for name in names}, method=p.stage.method,
                                      **p.stage.build_options())
        if p.fold_width is not None:
            compress.fold_into_first_linear(out)
    return out
