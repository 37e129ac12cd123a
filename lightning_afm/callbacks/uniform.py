"""The uniform rank pair (MLP rank, embedding rank) whose compressed model comes nearest a parameter count.

Uniform ranks (``compression=afm``: one MLP rank, one embedding rank) are priced with the same
per-rank prices the budget allocator uses (:mod:`lightning_afm.compress.pricing`), without training anything:

    params(m, e) = params_now + sum_{MLP targets} (cost_i m + change_i) + sum_{fields} (cost_j e + change_j)

For each embedding rank ``e`` (1 .. the embedding width) the largest MLP rank ``m`` (a multiple
of ``multiple``, at most every MLP layer's break-even rank, past which its factored pair would
hold more parameters than the dense layer) whose count stays at or under the budget is a
candidate. Many pairs then land within a hair of the budget (a high MLP rank with embedding rank
1, or the reverse), so among the pairs within ``slack`` (1 %) of the largest count, the one whose
ranks stand nearest the paper's proportion on Criteo (MLP 64 : embeddings 2, i.e. 32 : 1, on a
log scale) wins. The pareto recipe compares budgeted AFM against that pair
(:mod:`lightning_afm.report.pareto_ranks`), and a size budget scores it as one of its candidate
allocations (:mod:`.budgeting`; the module lives beside it, not in
``compress``, which names none of the zoo's attributes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_afm.compress.pricing import Price

#: The paper's Criteo ranks (MLP 64, embeddings 2): the proportion a uniform pair keeps where the count allows.
PAPER_PROPORTION = 64 / 2

__all__ = ["PAPER_PROPORTION", "UniformPair", "uniform_params", "choose_pair"]


@dataclass(frozen=True)
class UniformPair:
    """A uniform configuration: MLP rank ``mlp``, embedding rank ``emb``, and its parameter count."""

    mlp: int
    emb: int
    params: int


def uniform_params(params_now: int, prices: Sequence[Price], mlp: int, emb: int) -> int:
    """Parameters after compressing every target of ``prices`` (MLP layers at ``mlp``, tables at ``emb``).

    Ranks above a target's ``max_rank`` are capped there, as the stages cap them.
    """
    total = params_now
    for p in prices:
        total += p.added(min(emb if p.is_table else mlp, p.max_rank))
    return total


def _largest_saving(price: Price, multiple: int) -> int:
    """The largest multiple of ``multiple`` at which a Linear's factored pair saves parameters
    (``multiple`` itself when none does: the smallest uniform rank is still one to price)."""
    saving = price.saving_ranks(multiple)
    return saving[-1] if saving else min(multiple, price.max_rank)


def choose_pair(params_now: int, prices: Sequence[Price], max_params: int, multiple: int = 8,
                slack: float = 0.01) -> UniformPair:
    """The uniform pair nearest ``max_params`` from below (see the module docstring for the rule).

    Raises ValueError naming the smallest uniform count when even ``(multiple, 1)`` is over it.
    """
    tables = [p for p in prices if p.is_table]
    linears = [p for p in prices if not p.is_table]
    if not tables or not linears:
        raise ValueError("choose_pair needs both MLP and table targets (compression=afm_auto prices both)")
    # no MLP rank past a layer's break-even: there the factored pair holds more parameters than the
    # dense layer, and the budgeted runs never build it (their uniform candidate would differ)
    max_mlp = min(_largest_saving(p, multiple) for p in linears)
    max_emb = max(p.max_rank for p in tables)
    largest: list[UniformPair] = []  # per embedding rank, the largest MLP rank that fits
    for emb in range(1, max_emb + 1):
        fitting = [UniformPair(m, emb, uniform_params(params_now, prices, m, emb))
                   for m in range(multiple, max_mlp + multiple, multiple)]
        fitting = [c for c in fitting if c.params <= max_params]
        if fitting:
            largest.append(max(fitting, key=lambda c: c.params))
    if not largest:
        least = uniform_params(params_now, prices, multiple, 1)
        raise ValueError(f"no uniform rank pair fits {max_params:,} parameters: MLP rank {multiple} and embedding "
                         f"rank 1 already leave {least:,}; choose a smaller ratio")
    top = max(c.params for c in largest)
    near = [c for c in largest if c.params >= top - slack * max_params]
    return min(near, key=lambda c: (abs(math.log(c.mlp / c.emb / PAPER_PROPORTION)), -c.params))
