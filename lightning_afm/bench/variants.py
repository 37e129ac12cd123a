"""Build each benchmark variant of a model at a given shape: the baseline and its compressed structures.

A variant is the baseline model with some modules swapped for the structures compression leaves
behind. Only the structure matters for parameters and speed, so no data and no statistics are
needed: the structure is built on the ``meta`` device with the public compress API
(:func:`~lightning_afm.compress.replay_plan`, :func:`~lightning_afm.compress.fold_into_first_linear`,
:func:`~lightning_afm.compress.compress_embeddings_ttd`), and only then given memory. Variants:

=============  ==============================================================================
``baseline``   the model as built (``lightning_afm.models``).
``afm_mlp``    AFM on MLP layers 2 and 3 (rank ``mlp_rank``; both factors with a bias, a ReLU
               between them).
``afm_emb``    cumulative, as in the paper's Table 2: ``afm_mlp`` plus AFM on every table (rank
               ``emb_rank``), the per-field projections folded into the first MLP Linear where the
               model's MLP reads the embeddings (its compression layout's ``mlp_reads_embeddings``).
``svd_mlp``    SVD on MLP layers 2 and 3 (first factor without a bias).
``svd_emb``    cumulative like ``afm_emb``: ``svd_mlp`` plus SVD tables (projections without a
               bias), folded likewise.
``ttd_emb``    TT-Rec tables of TT-rank ``tt_rank`` on the baseline (MLP unchanged): the tables
               of ``>= tt_min_rows`` rows and (``tt_lr``) their LR tables, the others dense, as
               ``compression=ttd_emb`` builds them (the paper's Table 4 TTD); no fold (a TT table
               has no projection).
=============  ==============================================================================

The factored structures (which factor has a bias) are not written down here: each kind's
``planned_entry`` says what its build records (``lightning_afm.compress.kinds``), so the
benchmark always times what compression really builds.

Memory: parameters a variant keeps unchanged from the baseline (same name and shape: the LR
tables, the untouched MLP layers, the tables of ``afm_mlp``...) may share the baseline's
storage (``shared=``), so all variants of one model fit next to each other; new parameters are
filled cheaply (values do not change the speed, but they are finite).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from lightning_afm.compress import (
    DEFAULT_TT_MIN_ROWS,
    CompressionPlan,
    PlanEntry,
    TTEmbedding,
    compress_embeddings_ttd,
    default_targets,
    fold_into_first_linear,
    get_kind,
    get_submodule,
    replay_plan,
    resolve_targets,
    select_tt_tables,
)
from lightning_afm.compress.ttd import sampled_gaussian_
from lightning_afm.models import MODELS, CTRModel
from lightning_afm.bench.shapes import PaperShape

__all__ = [
    "VARIANTS",
    "OUR_VARIANTS",
    "VariantOptions",
    "VariantSettings",
    "build_structure",
    "build_twin",
    "materialize_",
    "build_variant",
    "variant_plan",
]

#: Every variant the benchmark knows, in the order of its tables.
VARIANTS = ("baseline", "afm_mlp", "afm_emb", "svd_mlp", "svd_emb", "ttd_emb", "deepctr_torch")
#: The variants built from our models (``deepctr_torch`` is DeepCTR-Torch's model, see :mod:`.deepctr`).
OUR_VARIANTS = VARIANTS[:-1]


@dataclass(frozen=True, kw_only=True)
class VariantOptions:
    """The options of the compressed structures: declared once, for :class:`VariantSettings` and the bench's settings.

    Keyword-only, so that a subclass may declare required fields (the ranks) after them.

    Attributes:
        tt_rank: TT-rank of the ``ttd_emb`` tables.
        tt_min_rows: tables with fewer rows stay dense in ``ttd_emb`` (at most the shape's ``vocab_cap``).
        tt_lr: ``ttd_emb`` compresses the LR tables of the compressed fields too.
        afm_relu: ReLU between the AFM factors (the paper's default).
        svd_relu: ReLU between the SVD factors (as ``conf/compression/svd.yaml``'s ``mlp.relu``).
        fold: fold the table projections into the first MLP Linear where the model allows it.
    """

    tt_rank: int = 16
    tt_min_rows: int = DEFAULT_TT_MIN_ROWS
    tt_lr: bool = True
    afm_relu: bool = True
    svd_relu: bool = True
    fold: bool = True

    def __post_init__(self) -> None:
        for name in ("tt_rank", "tt_min_rows"):
            _check_positive(name, getattr(self, name))

    def variant_options(self) -> dict[str, Any]:
        """``{name: value}`` of the :class:`VariantOptions` fields alone (what a subclass passes on)."""
        return {f.name: getattr(self, f.name) for f in fields(VariantOptions)}


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class VariantSettings(VariantOptions):
    """Ranks of the compressed variants, and their options (:class:`VariantOptions`, keyword-only).

    Attributes:
        mlp_rank: ``k`` of MLP layers 2 and 3 (AFM and SVD).
        emb_rank: ``k`` of the tables (AFM and SVD).
        emb_ranks: per-field ``k`` (a budget's allocation), one per field table in the order of
            the model's compression layout, in place of ``emb_rank``; None: ``emb_rank`` for all.
        mlp_ranks: per-layer ``k`` of the default MLP targets in place of ``mlp_rank``; None: ``mlp_rank``.
    """

    mlp_rank: int
    emb_rank: int
    emb_ranks: tuple[int, ...] | None = None
    mlp_ranks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("mlp_rank", "emb_rank"):
            _check_positive(name, getattr(self, name))
        for name in ("emb_ranks", "mlp_ranks"):
            values = getattr(self, name)
            if values is not None:
                values = tuple(values)
                if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                    raise ValueError(f"{name} must be positive integers (one per target), got {values!r}")
                object.__setattr__(self, name, values)


# --------------------------------------------------------------------------- structures


def _entries(model: nn.Module, group: str, kind: str, method: str, rank: int, ranks: tuple[int, ...] | None,
             **options: bool) -> list[PlanEntry]:
    """The plan entries ``kind`` records when compressing ``model``'s default ``group`` targets by ``method``.

    Read off the kind's :meth:`planned_entry` (the structure compression builds: which factor has
    a bias...), without computing factors. ``ranks``: one per target (in place of ``rank``).
    """
    planned = get_kind(kind).planned_entry
    names = resolve_targets(model, default_targets(model, group), kind)
    if ranks is not None and len(ranks) != len(names):
        raise ValueError(f"{len(ranks)} per-target ranks for the {len(names)} {group} targets of "
                         f"{type(model).__name__} ({names}); give one rank per target")
    ranks = ranks or (rank,) * len(names)
    return [planned(name, get_submodule(model, name), method, k, **options) for name, k in zip(names, ranks)]


def _mlp_entries(model: nn.Module, method: str, settings: VariantSettings) -> list[PlanEntry]:
    relu = settings.afm_relu if method == "afm" else settings.svd_relu
    return _entries(model, "mlp", "linear", method, settings.mlp_rank, settings.mlp_ranks, relu=relu)


def _embedding_entries(model: nn.Module, method: str, settings: VariantSettings) -> list[PlanEntry]:
    return _entries(model, "embeddings", "embedding", method, settings.emb_rank, settings.emb_ranks)


def variant_plan(model: nn.Module, variant: str, settings: VariantSettings) -> CompressionPlan:
    """The plan of ``variant``'s linear and embedding swaps on the uncompressed ``model``.

    The fold (``*_emb`` on models whose MLP reads the embeddings) and the TT tables are not in
    it: :func:`build_structure` applies them with their own functions.
    """
    check_variant(variant)
    plan = CompressionPlan()
    if variant in ("afm_mlp", "afm_emb"):
        plan.extend(_mlp_entries(model, "afm", settings))
    if variant in ("svd_mlp", "svd_emb"):
        plan.extend(_mlp_entries(model, "svd", settings))
    if variant == "afm_emb":
        plan.extend(_embedding_entries(model, "afm", settings))
    if variant == "svd_emb":
        plan.extend(_embedding_entries(model, "svd", settings))
    return plan


def check_variant(variant: str) -> None:
    if variant not in OUR_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; our models' variants are {list(OUR_VARIANTS)}")


def _meta_model(model_name: str, shape: PaperShape) -> CTRModel:
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(MODELS)}")
    with torch.device("meta"):
        return MODELS[model_name](
            shape.schema().to_dict(), embedding_dim=shape.embedding_dim, mlp_hidden=list(shape.mlp_hidden),
            train_metrics=False,
        )


def build_structure(model_name: str, shape: PaperShape, variant: str, settings: VariantSettings) -> CTRModel:
    """``variant`` of ``model_name`` at ``shape`` on the ``meta`` device: structure only, no memory.

    ``count_parameters`` of the result is the variant's parameter count.
    """
    check_variant(variant)
    model = _meta_model(model_name, shape)
    replay_plan(model, variant_plan(model, variant, settings))
    if variant in ("afm_emb", "svd_emb") and settings.fold and model.compression_layout().mlp_reads_embeddings:
        fold_into_first_linear(model)
    if variant == "ttd_emb":
        tables = resolve_targets(model, default_targets(model, "embeddings"), "embedding")
        # capped vocabularies (quick runs) may leave no table that large: the cap bounds the threshold
        min_rows = settings.tt_min_rows if shape.vocab_cap is None else min(settings.tt_min_rows, shape.vocab_cap)
        names = select_tt_tables(model, tables, min_rows, settings.tt_lr)
        # random TT-Rec cores, as the TTD stage's default (their scale needs no values of the meta table)
        compress_embeddings_ttd(model, names, tt_rank=settings.tt_rank, init="random")
    return model


def build_twin(model_name: str, shape: PaperShape) -> CTRModel:
    """The model at ``shape`` but with one row per table, built for real on the CPU.

    It holds what a ``meta`` model cannot rebuild by itself: the buffers (FiBiNet's pair
    indices) and the model's own initialisation of its dense layers, which
    :func:`materialize_` copies wherever a variant keeps them.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(MODELS)}")
    tiny = shape.capped(1)
    return MODELS[model_name](
        tiny.schema().to_dict(), embedding_dim=shape.embedding_dim, mlp_hidden=list(shape.mlp_hidden),
        train_metrics=False,
    )


# --------------------------------------------------------------------------- memory


def _fill_table_(weight: torch.Tensor) -> None:
    # uniform_ is several times faster than normal_ on hundreds of millions of entries;
    # the scale of nn.Embedding's N(0, 1) init, the values themselves do not change the speed
    with torch.no_grad():
        weight.uniform_(-1.0, 1.0)


def materialize_(
    model: nn.Module,
    twin: nn.Module,
    shared: Mapping[str, nn.Parameter] | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Give every ``meta`` parameter and buffer of ``model`` memory and finite values, in place.

    Per parameter, in this order: the parameter of ``shared`` with the same name and shape (no
    new memory; pass the baseline's ``dict(named_parameters())``); else a copy of ``twin``'s
    (same name and shape: the model's own initialisation); else new memory, initialised by
    the owning module (``nn.Linear``: ``reset_parameters``; ``nn.Embedding``: uniform in
    ``[-1, 1]``; :class:`TTEmbedding`: TT-Rec's Gaussian cores). Buffers come from ``twin``.

    Raises:
        RuntimeError: if a parameter or buffer has no source (an unknown module type): the
            benchmark never times uninitialised memory.
    """
    shared = dict(shared or {})
    twin_params = dict(twin.named_parameters())
    twin_buffers = dict(twin.named_buffers())
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        fresh: list[str] = []
        for key, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            name = prefix + key
            source = shared.get(name)
            if source is not None and source.shape == param.shape and not source.is_meta:
                module._parameters[key] = source
                continue
            new = nn.Parameter(torch.empty_like(param, device=device), requires_grad=param.requires_grad)
            twin_param = twin_params.get(name)
            if twin_param is not None and twin_param.shape == param.shape:
                with torch.no_grad():
                    new.copy_(twin_param)
            else:
                fresh.append(key)
            module._parameters[key] = new
        for key, buffer in list(module._buffers.items()):
            if buffer is None or not buffer.is_meta:
                continue
            name = prefix + key
            twin_buffer = twin_buffers.get(name)
            if twin_buffer is None or twin_buffer.shape != buffer.shape:
                raise RuntimeError(f"no values for buffer {name!r} {tuple(buffer.shape)}: the twin model lacks it")
            module._buffers[key] = twin_buffer.clone().to(device)
        if not fresh:
            continue
        if isinstance(module, nn.Embedding):
            _fill_table_(module.weight)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
        elif isinstance(module, nn.ParameterList) and isinstance(_parent(model, module_name), TTEmbedding):
            sampled_gaussian_(list(module), 1.0)
        else:
            raise RuntimeError(
                f"no initialisation for new parameters {[prefix + k for k in fresh]} of a {type(module).__name__}"
            )
    return model


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    if not name:
        return None
    parent, _, _ = name.rpartition(".")
    return model.get_submodule(parent)


def build_variant(
    model_name: str,
    shape: PaperShape,
    variant: str,
    settings: VariantSettings,
    twin: nn.Module | None = None,
    shared: Mapping[str, nn.Parameter] | None = None,
) -> CTRModel:
    """``variant`` of ``model_name`` at ``shape``, on the CPU in eval mode, ready to time.

    ``twin``: :func:`build_twin`'s model (built here if None). ``shared``: parameters to reuse
    by name (see :func:`materialize_`); the variant then allocates only what it changes.
    """
    model = build_structure(model_name, shape, variant, settings)
    materialize_(model, twin if twin is not None else build_twin(model_name, shape), shared)
    return model.eval()
