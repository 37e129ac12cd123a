"""Low-rank compression of CTR models in plain PyTorch: statistics, factors, factored modules, surgery, plans.

Typical use (what ``AFMCompressionCallback`` does per stage)::

    names = resolve_targets(model, DEFAULT_MLP_TARGETS, "linear")
    stats = collect_statistics(model, names, train_loader, lambda b: model(b["categorical"], b["numeric"]))
    plan.extend(compress_targets(model, names, stats, rank=64, method="afm", relu=True))

No Lightning import here: the callbacks join this package to Lightning's loop.
"""

from lightning_afm.compress.factorize import (
    DEFAULT_SHIFT_STD,
    RELU_INITS,
    EmbeddingFactors,
    LinearFactors,
    Spectrum,
    afm_embedding_factors,
    afm_factors,
    explained_variance,
    kept_variance,
    principal_components,
    svd_embedding_factors,
    svd_factors,
)
from lightning_afm.compress.fold import FIRST_MLP_LINEAR, first_mlp_linear_name, fold_into_first_linear
from lightning_afm.compress.modules import LowRankEmbedding, LowRankLinear, project_fields, stack_projections
from lightning_afm.compress.plan import CompressionPlan, PlanEntry
from lightning_afm.compress.statistics import OutputCovariance, OutputStatistics, collect_statistics
from lightning_afm.compress.surgery import (
    DEFAULT_EMBEDDING_TARGETS,
    DEFAULT_MLP_TARGETS,
    build_compressed_embedding,
    build_compressed_linear,
    compress_embedding,
    compress_linear,
    compress_targets,
    get_submodule,
    parameter_count,
    replay_plan,
    resolve_targets,
    set_submodule,
)
from lightning_afm.compress.ttd import (
    DEFAULT_TT_MIN_ROWS,
    DEFAULT_TT_RANK,
    TTDecomposition,
    TTEmbedding,
    balanced_dim_factors,
    balanced_row_factors,
    compress_embedding_ttd,
    compress_embeddings_ttd,
    select_tt_tables,
    tt_rec_dim_factors,
    tt_rec_init_std,
    tt_svd,
)

__all__ = [
    "CompressionPlan",
    "DEFAULT_EMBEDDING_TARGETS",
    "DEFAULT_MLP_TARGETS",
    "DEFAULT_SHIFT_STD",
    "DEFAULT_TT_MIN_ROWS",
    "DEFAULT_TT_RANK",
    "EmbeddingFactors",
    "FIRST_MLP_LINEAR",
    "LinearFactors",
    "LowRankEmbedding",
    "LowRankLinear",
    "OutputCovariance",
    "OutputStatistics",
    "PlanEntry",
    "RELU_INITS",
    "Spectrum",
    "TTDecomposition",
    "TTEmbedding",
    "afm_embedding_factors",
    "afm_factors",
    "balanced_dim_factors",
    "balanced_row_factors",
    "build_compressed_embedding",
    "build_compressed_linear",
    "collect_statistics",
    "compress_embedding",
    "compress_embedding_ttd",
    "compress_embeddings_ttd",
    "compress_linear",
    "compress_targets",
    "explained_variance",
    "first_mlp_linear_name",
    "fold_into_first_linear",
    "get_submodule",
    "kept_variance",
    "parameter_count",
    "principal_components",
    "project_fields",
    "replay_plan",
    "resolve_targets",
    "select_tt_tables",
    "set_submodule",
    "stack_projections",
    "svd_embedding_factors",
    "svd_factors",
    "tt_rec_dim_factors",
    "tt_rec_init_std",
    "tt_svd",
]
