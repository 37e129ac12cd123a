"""Kind ``"pq_embedding"``: an ``nn.Embedding`` becomes a :class:`PQEmbedding` (product quantization), method ``"pq"``.

The entry's rank is ``D``, the sub-vectors (codes) per row, as AFM's rank is code values per
row; it must divide the table's width. Options (a stage's ``build_options``): ``pq_centroids``
(``K`` per sub-space, clipped to the rows), ``pq_iterations`` (Lloyd iterations) and
``pq_seed``. The flags hold the table's ``num_centroids`` (to rebuild it) and, as provenance,
the iterations, the seed and the relative quantization error ``||W - W_pq|| / ||W||`` of the swap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_afm.compress.kinds.table_checks import checked_table
from lightning_afm.compress.kinds.table_kind import TableKind
from lightning_afm.compress.plan import PlanEntry
from lightning_afm.compress.pq import DEFAULT_KMEANS_ITERATIONS, PQEmbedding
from lightning_afm.compress.registry import Structure
from lightning_afm.compress.surgery import compress_targets, get_submodule

__all__ = ["DEFAULT_PQ_CENTROIDS", "PQEmbeddingKind", "compress_embeddings_pq"]

#: Centroids per sub-space when a request names none (a 10-bit code, as the paper's PQ baseline).
DEFAULT_PQ_CENTROIDS = 1024


class PQEmbeddingKind(TableKind):
    name = "pq_embedding"
    method = "pq"
    produces = PQEmbedding

    def max_rank(self, module: nn.Module) -> int:
        return module.embedding_dim

    def rank_problem(self, module: nn.Module, rank: int) -> str | None:
        width = module.embedding_dim
        if width % rank:
            divisors = [d for d in range(1, width + 1) if width % d == 0]
            return (f"PQ cuts each row into rank={rank} sub-vectors, which does not divide the width {width}; "
                    f"choose one of {divisors}")
        return None

    def select_targets(self, model: nn.Module, names: list[str], rank: int,
                       options: Mapping[str, Any]) -> list[str]:
        """Every target, each checked now to be a table PQ can replace (a stage asks at fit start)."""
        for name in names:
            checked_table(model, name, "PQ")
        return list(names)

    def build(self, model: nn.Module, name: str, stats: Any, rank: int, method: str,
              options: Mapping[str, Any]) -> tuple[PlanEntry, PQEmbedding]:
        centroids = options.get("pq_centroids", DEFAULT_PQ_CENTROIDS)
        iterations = options.get("pq_iterations", DEFAULT_KMEANS_ITERATIONS)
        seed = options.get("pq_seed", 0)
        table = checked_table(model, name, "PQ")
        s, t = table.weight.shape
        try:
            new = PQEmbedding.from_table(table.weight, rank, centroids, iterations, seed)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name!r}: {err}") from err
        with torch.no_grad():
            norm = float(table.weight.norm())
            error = float((new.full_table() - table.weight).norm()) / norm if norm > 0 else 0.0
        flags = {"num_centroids": new.num_centroids, "iterations": int(iterations), "seed": int(seed),
                 "relative_error": error}
        return PlanEntry(name=name, kind=self.name, method=self.method, rank=int(rank), shape=[s, t], flags=flags), new

    def replay(self, model: nn.Module, entry: PlanEntry) -> PQEmbedding:
        """Zero codebooks and codes, for the state dict (which holds the codes too) to fill."""
        table = self.replaced_module(model, entry)
        if "num_centroids" not in entry.flags:
            raise ValueError(f"PQ plan entry {entry.name!r} lacks num_centroids in its flags: {entry.flags}")
        return PQEmbedding(*entry.shape, entry.rank, int(entry.flags["num_centroids"]), device=table.weight.device,
                           dtype=table.weight.dtype)

    def is_applied(self, model: nn.Module, entry: PlanEntry) -> bool:
        module = get_submodule(model, entry.name)
        return (isinstance(module, PQEmbedding) and module.num_subspaces == entry.rank
                and module.num_centroids == int(entry.flags.get("num_centroids", module.num_centroids)))

    def structure(self, entry: PlanEntry) -> Structure:
        """Parameters: the ``K t`` codebook entries (the ``s D`` codes are a buffer, see
        :func:`~lightning_afm.compress.pq.stored_values`); a lookup gathers, multiplying nothing."""
        return Structure(parameters=int(entry.flags["num_centroids"]) * entry.shape[1], multiply_adds=0, biases={})


def compress_embeddings_pq(model: nn.Module, names: Sequence[str], num_subspaces: int,
                           num_centroids: int = DEFAULT_PQ_CENTROIDS, iterations: int = DEFAULT_KMEANS_ITERATIONS,
                           seed: int = 0) -> list[PlanEntry]:
    """Quantize the tables ``names``, all or nothing (every table built first); the entries in ``names`` order.

    Example:
        >>> model = nn.Sequential(nn.Embedding(1000, 16))
        >>> entry, = compress_embeddings_pq(model, ["0"], num_subspaces=2, num_centroids=64)
        >>> type(model[0]).__name__, entry.kind, entry.rank, entry.flags["num_centroids"]
        ('PQEmbedding', 'pq_embedding', 2, 64)
    """
    return compress_targets(model, names, None, num_subspaces, "pq", pq_centroids=num_centroids,
                            pq_iterations=iterations, pq_seed=seed)
