"""What a compression will cost, in parameters, as an affine function of each target's rank.

A target's replacement has ``cost * k + constant`` parameters at rank ``k`` (its kind's
:meth:`~lightning_afm.compress.registry.CompressionKind.structure` of the entry it would record,
read at two ranks: no factors computed). A fold adds the first MLP Linear's ``out`` columns per
code and removes its ``t`` columns per field. The model after compression then has
``params_now + sum_i (cost_i k_i + change_i)`` parameters, which a budget's allocation
(:mod:`.budget`) bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from lightning_afm.compress.registry import kind_for_module
from lightning_afm.compress.surgery import get_submodule

__all__ = ["Price", "price_targets"]


@dataclass(frozen=True)
class Price:
    """Parameters a target adds at rank ``k``: ``cost * k + change`` (``change`` < 0: what goes away).

    Attributes:
        name: the target's dotted name.
        cost: parameters per unit of rank.
        change: the constant part, minus the parameters of the module it replaces.
        max_rank: the largest rank the target allows.
        is_table: an embedding table (ranks step by 1) rather than a Linear.
    """

    name: str
    cost: int
    change: int
    max_rank: int
    is_table: bool

    def added(self, rank: int) -> int:
        return self.cost * int(rank) + self.change


def price_targets(model: nn.Module, names: Sequence[str], method: str, fold_width: int | None = None) -> list[Price]:
    """The :class:`Price` of compressing each of ``names`` by ``method``.

    ``fold_width``: the ``out`` width of the first MLP Linear when these targets are field tables
    whose projections a fold will move into it (None: no fold).
    """
    out = []
    for name in names:
        module = get_submodule(model, name)
        kind = kind_for_module(module, method, name)
        one, two = (kind.structure(kind.planned_entry(name, module, method, k)).parameters for k in (1, 2))
        cost, constant = two - one, 2 * one - two
        is_table = isinstance(module, nn.Embedding)
        change = constant - sum(p.numel() for p in module.parameters())
        if fold_width is not None and is_table:
            cost += fold_width
            change -= fold_width * module.embedding_dim
        out.append(Price(name, int(cost), int(change), int(kind.max_rank(module)), is_table))
    return out
