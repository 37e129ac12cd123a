"""The built-in compression kinds, one module each, registered here in this order.

Adding a kind: write ``kinds/<kind>.py`` with a :class:`~lightning_afm.compress.registry.CompressionKind`
subclass (``TableKind`` for a table swapped by one method), register an instance below, and add a
``conf/compression/<kind>.yaml`` whose stage uses its method. Registration order decides which kind builds a method when two replace the same type.
"""

from lightning_afm.compress.kinds.embedding import LowRankEmbeddingKind
from lightning_afm.compress.kinds.fold import FoldKind, first_mlp_linear_name, fold_into_first_linear
from lightning_afm.compress.kinds.linear import LowRankLinearKind
from lightning_afm.compress.kinds.pq_embedding import PQEmbeddingKind, compress_embeddings_pq
from lightning_afm.compress.kinds.qr_embedding import QREmbeddingKind, compress_embeddings_qr, select_qr_tables
from lightning_afm.compress.kinds.tt_embedding import TTEmbeddingKind, select_tt_tables
from lightning_afm.compress.registry import register_kind

register_kind(LowRankLinearKind())
register_kind(LowRankEmbeddingKind())
register_kind(FoldKind())
register_kind(TTEmbeddingKind())
register_kind(QREmbeddingKind())
register_kind(PQEmbeddingKind())

__all__ = ["FoldKind", "LowRankEmbeddingKind", "LowRankLinearKind", "PQEmbeddingKind", "QREmbeddingKind",
           "TTEmbeddingKind", "compress_embeddings_pq", "compress_embeddings_qr", "first_mlp_linear_name",
           "fold_into_first_linear", "select_qr_tables", "select_tt_tables"]
