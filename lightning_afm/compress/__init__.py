"""Low-rank compression of CTR models in plain PyTorch: statistics, factors, factored modules, surgery, plans.

Typical use (what ``AFMCompressionCallback`` does per stage)::

    names = resolve_targets(model, default_targets(model, "mlp"), "linear")
    stats = collect_statistics(model, names, train_loader, lambda b: model(b["categorical"], b["numeric"]))
    plan.extend(compress_targets(model, names, stats, rank=64, method="afm", relu=True))

Each kind of change (low-rank Linear, low-rank table, TT table, QR table, PQ table, fold) is one module of
:mod:`lightning_afm.compress.kinds`, registered by name (:mod:`lightning_afm.compress.registry`);
what compression needs from a model is the contract of :mod:`lightning_afm.compress.contract`.
No Lightning import here, and nothing of ``lightning_afm.models``: the callbacks join this
package to Lightning's loop, and the models implement the contract.
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
from lightning_afm.compress.contract import CompressibleModel, ModelLayout, default_targets, implements_contract
from lightning_afm.compress.modules import LowRankEmbedding, LowRankLinear, project_fields, stack_projections
from lightning_afm.compress.plan import CompressionPlan, PlanEntry
from lightning_afm.compress.registry import (
    CompressionKind,
    Structure,
    build_methods_for,
    check_rank,
    get_kind,
    kind_for_method,
    kind_for_module,
    kind_names,
    register_kind,
)
from lightning_afm.compress.statistics import OutputCovariance, OutputStatistics, collect_statistics
from lightning_afm.compress.surgery import (
    build_compressed_embedding,
    build_compressed_linear,
    build_replacements,
    compress_embedding,
    compress_embedding_ttd,
    compress_embeddings_ttd,
    compress_linear,
    compress_targets,
    get_submodule,
    parameter_count,
    replace_all,
    replay_plan,
    resolve_targets,
    select_targets,
    set_submodule,
)
from lightning_afm.compress.pq import PQEmbedding, stored_values
from lightning_afm.compress.qr import QREmbedding
from lightning_afm.compress.tt_modules import TTEmbedding
from lightning_afm.compress.ttd import (
    DEFAULT_TT_MIN_ROWS,
    DEFAULT_TT_RANK,
    TTDecomposition,
    balanced_dim_factors,
    balanced_row_factors,
    tt_rec_dim_factors,
    tt_rec_init_std,
    tt_svd,
)

# the built-in kinds register themselves in the registry on import
from lightning_afm.compress.kinds import (  # noqa: E402
    compress_embeddings_pq,
    compress_embeddings_qr,
    first_mlp_linear_name,
    fold_into_first_linear,
    select_qr_tables,
    select_tt_tables,
)

__all__ = [
    "CompressibleModel",
    "CompressionKind",
    "CompressionPlan",
    "DEFAULT_SHIFT_STD",
    "DEFAULT_TT_MIN_ROWS",
    "DEFAULT_TT_RANK",
    "EmbeddingFactors",
    "LinearFactors",
    "LowRankEmbedding",
    "LowRankLinear",
    "ModelLayout",
    "OutputCovariance",
    "OutputStatistics",
    "PlanEntry",
    "PQEmbedding",
    "QREmbedding",
    "RELU_INITS",
    "Spectrum",
    "Structure",
    "TTDecomposition",
    "TTEmbedding",
    "afm_embedding_factors",
    "afm_factors",
    "balanced_dim_factors",
    "balanced_row_factors",
    "build_compressed_embedding",
    "build_compressed_linear",
    "build_methods_for",
    "build_replacements",
    "check_rank",
    "collect_statistics",
    "compress_embedding",
    "compress_embedding_ttd",
    "compress_embeddings_pq",
    "compress_embeddings_qr",
    "compress_embeddings_ttd",
    "compress_linear",
    "compress_targets",
    "default_targets",
    "explained_variance",
    "first_mlp_linear_name",
    "fold_into_first_linear",
    "get_kind",
    "get_submodule",
    "implements_contract",
    "kept_variance",
    "kind_for_method",
    "kind_for_module",
    "kind_names",
    "parameter_count",
    "principal_components",
    "project_fields",
    "register_kind",
    "replace_all",
    "replay_plan",
    "resolve_targets",
    "select_qr_tables",
    "select_targets",
    "select_tt_tables",
    "set_submodule",
    "stack_projections",
    "stored_values",
    "svd_embedding_factors",
    "svd_factors",
    "tt_rec_dim_factors",
    "tt_rec_init_std",
    "tt_svd",
]
