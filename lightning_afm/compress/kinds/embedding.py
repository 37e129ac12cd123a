"""Kind ``"embedding"``: an ``s x t`` ``nn.Embedding`` becomes a :class:`LowRankEmbedding` (``s x k`` codes, ``k -> t``).

Methods: ``"afm"`` (from the statistics of the looked-up vectors, :func:`afm_embedding_factors`),
``"svd"`` (from the table, :func:`svd_embedding_factors`) and ``"random"``: AFM's structure,
freshly initialised (entry method ``"afm"``, ``flags["init"] == "random"``). No options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_afm.compress.factorize import afm_embedding_factors, kept_variance, svd_embedding_factors
from lightning_afm.compress.modules import LowRankEmbedding
from lightning_afm.compress.plan import PlanEntry
from lightning_afm.compress.registry import LowRankKind, Structure
from lightning_afm.compress.statistics import statistics_for
from lightning_afm.compress.surgery import get_submodule

__all__ = ["LowRankEmbeddingKind", "plain_table"]


def plain_table(module: nn.Module, padding_idx: int | None = None, sparse: bool = False) -> nn.Embedding:
    """The ``nn.Embedding`` of ``module``'s rows and width at default initialisation, on its device and dtype."""
    weight = next(module.parameters())
    return nn.Embedding(module.num_embeddings, module.embedding_dim, padding_idx=padding_idx, sparse=sparse,
                        device=weight.device, dtype=weight.dtype)


class LowRankEmbeddingKind(LowRankKind):
    name = "embedding"
    replaces = nn.Embedding
    produces = LowRankEmbedding

    def max_rank(self, module: nn.Module) -> int:
        return module.embedding_dim

    def planned_entry(self, name: str, module: nn.Embedding, method: str, rank: int) -> PlanEntry:
        """The entry :meth:`build` records for ``module`` (structure flags only), without computing factors.

        The projection has a bias with AFM (``mu - U U^T mu``) and a random start, none with SVD.
        """
        flags: dict[str, Any] = {"init": "random"} if method == "random" else {}
        flags.update(projection_bias=method != "svd", padding_idx=module.padding_idx, sparse=bool(module.sparse))
        return PlanEntry(name=name, kind=self.name, method="afm" if method == "random" else method, rank=int(rank),
                         shape=list(module.weight.shape), flags=flags)

    def build(self, model: nn.Module, name: str, stats: Any, rank: int, method: str,
              options: Mapping[str, Any]) -> tuple[PlanEntry, LowRankEmbedding]:
        module = get_submodule(model, name)
        if not isinstance(module, nn.Embedding):
            raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Embedding")
        if module.max_norm is not None:
            raise ValueError(f"{name!r} renormalises rows (max_norm={module.max_norm}), which a factored table cannot do")
        provenance: dict[str, Any] = {}
        try:
            if method == "random":
                new, provenance["table_std"] = _random_table(module, rank)
            else:
                if method == "afm":
                    s = statistics_for(stats, name, module.embedding_dim)
                    factors = afm_embedding_factors(module.weight, s.mean, s.cov, rank)
                    provenance["kept_variance"] = kept_variance(s.cov, rank)
                else:
                    factors = svd_embedding_factors(module.weight, rank)
                new = LowRankEmbedding.from_factors(factors, padding_idx=module.padding_idx, sparse=module.sparse)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name!r}: {err}") from err
        entry = self.planned_entry(name, module, method, rank)
        entry.flags = {**provenance, **entry.flags}
        return entry, new

    def replay(self, model: nn.Module, entry: PlanEntry) -> LowRankEmbedding:
        module = self.replaced_module(model, entry)
        s_rows, t = entry.shape
        return LowRankEmbedding(s_rows, t, entry.rank, projection_bias=bool(entry.flags.get("projection_bias", True)),
                                padding_idx=entry.flags.get("padding_idx"), sparse=bool(entry.flags.get("sparse", False)),
                                device=module.weight.device, dtype=module.weight.dtype)

    def rank_of(self, module: LowRankEmbedding) -> int:
        return module.code_dim

    def structure(self, entry: PlanEntry) -> Structure:
        (s_rows, t), k = entry.shape, entry.rank
        bias = bool(entry.flags.get("projection_bias", True))
        return Structure(parameters=s_rows * k + t * k + t * bias, multiply_adds=t * k, biases={"projection": bias})

    def plain_module(self, name: str, module: LowRankEmbedding, state_dict: Mapping[str, Any]) -> nn.Embedding:
        return plain_table(module, module.table.padding_idx, module.table.sparse)


def _random_table(module: nn.Embedding, rank: int) -> tuple[LowRankEmbedding, float]:
    """AFM's ``s x k`` table + ``k -> t`` projection for ``module``, freshly initialised; and the codes' std.

    The projection gets nn.Linear's default initialisation. The code table is drawn from
    ``N(0, sigma^2)`` with ``sigma`` the standard deviation of the table it replaces, not
    nn.Embedding's ``N(0, 1)``: at fit start that is the model's own embedding initialisation
    (1e-4 in the zoo, as DeepCTR-Torch), so the small model starts as a fresh model would.
    """
    s_rows, t = module.weight.shape
    new = LowRankEmbedding(s_rows, t, int(rank), projection_bias=True, padding_idx=module.padding_idx,
                           sparse=module.sparse, device=module.weight.device, dtype=module.weight.dtype)
    sigma = float(module.weight.detach().std()) if module.weight.numel() > 1 else 0.0
    if math.isfinite(sigma) and sigma > 0:
        with torch.no_grad():
            nn.init.normal_(new.table.weight, std=sigma)
            if module.padding_idx is not None:
                new.table.weight[module.padding_idx].zero_()
    return new, sigma
