"""Module surgery, written once for every kind: find targets by name, replace them all or nothing, replay a plan.

What a replacement is comes from its kind (:mod:`lightning_afm.compress.registry`, the kinds in
:mod:`lightning_afm.compress.kinds`): :func:`build_replacements` asks each target's kind to build
its module and plan entry *before* anything changes, so a bad request raises and leaves the model
as it was; :func:`replace_all` then installs them; :func:`replay_plan` rebuilds the structure of a
plan's entries, whatever their kind. ``compress_linear`` & co. are the same steps for one kind.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_afm.compress.factorize import DEFAULT_SHIFT_STD
from lightning_afm.compress.plan import CompressionPlan, PlanEntry
from lightning_afm.compress.registry import factored_types, get_kind, kind_for_module, kinds
from lightning_afm.compress.statistics import OutputStatistics
from lightning_afm.compress.ttd import DEFAULT_NUM_CORES, DEFAULT_TT_RANK

__all__ = [
    "get_submodule",
    "set_submodule",
    "plain_linear",
    "parameter_count",
    "resolve_targets",
    "select_targets",
    "build_replacements",
    "replace_all",
    "compress_targets",
    "build_compressed_linear",
    "build_compressed_embedding",
    "compress_linear",
    "compress_embedding",
    "compress_embedding_ttd",
    "compress_embeddings_ttd",
    "replay_plan",
]

StatsArg = OutputStatistics | Mapping[str, OutputStatistics] | None


# --------------------------------------------------------------------------- module tree


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted ``name`` (``""`` is the model); ValueError naming the missing part."""
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"{type(model).__name__} has no submodule {name!r} ({err})") from None


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Replace the existing submodule at dotted ``name`` by ``module``; returns the old one."""
    if not name:
        raise ValueError("cannot replace the model itself; give a submodule name")
    old = get_submodule(model, name)
    parent_name, _, child = name.rpartition(".")
    setattr(get_submodule(model, parent_name), child, module)
    return old


def plain_linear(in_features: int, out_features: int, bias: bool, like: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` at default initialisation on ``like``'s device and dtype."""
    return nn.Linear(in_features, out_features, bias=bias, device=like.device, dtype=like.dtype)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once; works on ``meta``-device models).

    Example:
        >>> parameter_count(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _types_of(types: Iterable[type[nn.Module] | str] | type[nn.Module] | str) -> tuple[type[nn.Module], ...]:
    if isinstance(types, (str, type)):
        types = [types]
    out = []
    for t in types:
        if isinstance(t, str):
            kind_types = {k.name: k.replaces for k in kinds() if k.replaces is not None}
            if t not in kind_types:
                raise ValueError(f"unknown module kind {t!r}; use one of {sorted(kind_types)} or a class")
            out.append(kind_types[t])
        else:
            out.append(t)
    return tuple(out)


def _inside_factored(name: str, factored_names: list[str]) -> bool:
    return any(name.startswith(f + ".") for f in factored_names)


def resolve_targets(
    model: nn.Module,
    patterns: str | Sequence[str],
    types: Iterable[type[nn.Module] | str] | type[nn.Module] | str = (nn.Linear,),
) -> list[str]:
    """Names of the modules of ``types`` matched by ``patterns`` (fnmatch globs), in model order.

    A pattern matches module names directly (``"mlp.1.linear"``, ``"mlp.*.linear"``,
    ``"embeddings.*"``); a pattern naming a container matches the modules of ``types`` inside it
    (``"mlp.2"`` -> ``"mlp.2.linear"``). The parts of already-compressed modules
    (``LowRankLinear.first``, ``LowRankEmbedding.table``...) are never targets.

    Raises:
        ValueError: if a pattern matches nothing; the message lists the names that exist.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise ValueError("no target patterns given")
    wanted = _types_of(types)
    named = list(model.named_modules())
    factored = [n for n, m in named if isinstance(m, factored_types())]
    candidates = [
        n for n, m in named if n and isinstance(m, wanted) and not _inside_factored(n, factored)
    ]
    chosen: set[str] = set()
    for pattern in patterns:
        containers = [n for n, _ in named if n and fnmatch.fnmatchcase(n, pattern)]
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            hits = [n for n in candidates if any(n.startswith(c + ".") for c in containers)]
        if not hits:
            compressed = [n for n in factored if n in containers or any(n.startswith(c + ".") for c in containers)]
            note = f" ({compressed} already compressed)" if compressed else ""
            kinds = "/".join(t.__name__ for t in wanted)
            raise ValueError(
                f"target {pattern!r} matches no {kinds} module{note}; the {kinds} modules of "
                f"{type(model).__name__} are: {candidates}"
            )
        chosen.update(hits)
    return [n for n in candidates if n in chosen]


def select_targets(model: nn.Module, names: Sequence[str], method: str, rank: int, **options: Any) -> list[str]:
    """The targets among ``names`` that ``method``'s kind really replaces (:meth:`CompressionKind.select_targets`).

    Most kinds take every target; TT-Rec keeps the small tables dense and adds their fields' LR
    tables, QR keeps the tables it would not shrink. ``options`` as for :func:`compress_targets`.
    """
    if not names:
        return []
    kind = kind_for_module(get_submodule(model, names[0]), method, names[0])
    return kind.select_targets(model, list(names), rank, options)


# --------------------------------------------------------------------------- replacing


def rank_for(rank: int | Mapping[str, int], name: str) -> int:
    """``rank`` itself, or ``rank[name]`` when ranks are given per target (a budget's allocation)."""
    if not isinstance(rank, Mapping):
        return rank
    if name not in rank:
        raise ValueError(f"no rank given for {name!r}; the per-target ranks name {sorted(rank)}")
    return rank[name]


def build_replacements(
    model: nn.Module, names: Sequence[str], stats: StatsArg, rank: int | Mapping[str, int], method: str,
    **options: Any,
) -> list[tuple[PlanEntry, nn.Module]]:
    """Each target's replacement and plan entry, built by its kind (:func:`kind_for_module`); changes nothing.

    ``rank``: one rank for every target, or a rank per target name. ``options`` go to every kind,
    which reads its own (``relu`` for Linears, ``init`` for TT tables...).
    """
    if not names:
        raise ValueError("no target modules to compress")
    built = []
    for name in names:
        kind = kind_for_module(get_submodule(model, name), method, name)
        built.append(kind.build(model, name, stats, rank_for(rank, name), method, options))
    return built


def replace_all(model: nn.Module, built: Iterable[tuple[PlanEntry, nn.Module]]) -> list[PlanEntry]:
    """Install every built replacement (its kind puts it in place); returns the entries in order."""
    built = list(built)
    for entry, module in built:
        get_kind(entry.kind).install(model, entry, module)
    return [entry for entry, _ in built]


def compress_targets(model: nn.Module, names: Sequence[str], stats: StatsArg, rank: int | Mapping[str, int],
                     method: str = "afm", **options: Any) -> list[PlanEntry]:
    """Compress several modules by one method, all or nothing; returns the plan entries in ``names`` order.

    ``rank``: one rank for all, or a mapping target name -> rank (per-layer and per-field ranks).

    Every replacement is built first; the model changes only once all of them succeeded.
    ``options`` go to the kinds that read them: ``relu``/``relu_init``/``shift_std`` to Linear targets
    (:func:`build_compressed_linear`), ``init``/``num_cores``/``init_std``/``deduplicate`` to TT tables
    (``method="ttd"``, :func:`compress_embedding_ttd`), ``qr_operation``/``qr_init`` to QR tables
    (``method="qr"``) and ``pq_centroids``/``pq_iterations``/``pq_seed`` to PQ tables (``method="pq"``).
    """
    return replace_all(model, build_replacements(model, names, stats, rank, method, **options))


def _build_one(model: nn.Module, kind_name: str, name: str, stats: StatsArg, rank: int, method: str,
               **options: Any) -> tuple[PlanEntry, nn.Module]:
    kind = get_kind(kind_name)
    if method not in kind.build_methods:
        raise ValueError(f"method must be one of {kind.build_methods}, got {method!r}")
    return kind.build(model, name, stats, rank, method, options)


def build_compressed_linear(
    model: nn.Module,
    name: str,
    stats: StatsArg,
    rank: int,
    method: str = "afm",
    relu: bool = False,
    relu_init: str = "shift",
    shift_std: float = DEFAULT_SHIFT_STD,
) -> tuple[PlanEntry, nn.Module]:
    """The :class:`LowRankLinear` that would replace the nn.Linear ``name``, and its plan entry; changes nothing.

    ``stats``: the target's :class:`OutputStatistics` or :func:`collect_statistics`'s dict (ignored,
    may be None, for ``method="svd"`` and ``"random"``). See :mod:`lightning_afm.compress.kinds.linear`.
    """
    return _build_one(model, "linear", name, stats, rank, method, relu=relu, relu_init=relu_init,
                      shift_std=shift_std)


def build_compressed_embedding(
    model: nn.Module, name: str, stats: StatsArg, rank: int, method: str = "afm"
) -> tuple[PlanEntry, nn.Module]:
    """The :class:`LowRankEmbedding` that would replace the nn.Embedding ``name``, and its plan entry.

    Changes nothing. ``stats`` as in :func:`build_compressed_linear` (statistics of the looked-up
    vectors, ``[t]`` / ``[t, t]``). See :mod:`lightning_afm.compress.kinds.embedding`.
    """
    return _build_one(model, "embedding", name, stats, rank, method)


def compress_linear(model: nn.Module, name: str, stats: StatsArg, rank: int, method: str = "afm",
                    relu: bool = False, relu_init: str = "shift", shift_std: float = DEFAULT_SHIFT_STD) -> PlanEntry:
    """Replace the nn.Linear ``name`` by its :class:`LowRankLinear`; returns the plan entry."""
    return replace_all(model, [build_compressed_linear(model, name, stats, rank, method, relu, relu_init,
                                                       shift_std)])[0]


def compress_embedding(model: nn.Module, name: str, stats: StatsArg, rank: int, method: str = "afm") -> PlanEntry:
    """Replace the nn.Embedding ``name`` by its :class:`LowRankEmbedding`; returns the plan entry."""
    return replace_all(model, [build_compressed_embedding(model, name, stats, rank, method)])[0]


def compress_embedding_ttd(model: nn.Module, name: str, tt_rank: int = DEFAULT_TT_RANK, init: str = "svd",
                           row_factors: Sequence[int] | None = None, dim_factors: Sequence[int] | None = None,
                           num_cores: int = DEFAULT_NUM_CORES, init_std: float | None = None,
                           deduplicate: bool = True) -> PlanEntry:
    """Replace the nn.Embedding ``name`` by a :class:`TTEmbedding`; returns the ``"tt_embedding"`` plan entry.

    Everything is validated and the new table built before the model changes, so a bad request
    raises and leaves the model as it was. ``init``: ``"svd"`` (TT-SVD of the trained table) or
    ``"random"`` (TT-Rec's Gaussian cores, std ``init_std``, default ``1 / sqrt(3 s)``); see
    :mod:`lightning_afm.compress.kinds.tt_embedding`.

    Example:
        >>> model = nn.Sequential(nn.Embedding(1000, 16))
        >>> entry = compress_embedding_ttd(model, "0", tt_rank=4)
        >>> type(model[0]).__name__, entry.kind, entry.method, entry.rank
        ('TTEmbedding', 'tt_embedding', 'ttd', 4)
    """
    built = _build_one(model, "tt_embedding", name, None, tt_rank, "ttd", init=init, row_factors=row_factors,
                       dim_factors=dim_factors, num_cores=num_cores, init_std=init_std, deduplicate=deduplicate)
    return replace_all(model, [built])[0]


def compress_embeddings_ttd(model: nn.Module, names: Sequence[str], tt_rank: int = DEFAULT_TT_RANK,
                            init: str = "svd", num_cores: int = DEFAULT_NUM_CORES, init_std: float | None = None,
                            deduplicate: bool = True) -> list[PlanEntry]:
    """:func:`compress_embedding_ttd` on several tables, all or nothing (every table built first).

    Factors are left to their defaults per table (tables differ in rows). Returns the entries
    in ``names`` order.
    """
    if not names:
        raise ValueError("no embedding tables to compress")
    return compress_targets(model, names, None, tt_rank, "ttd", init=init, num_cores=num_cores,
                            init_std=init_std, deduplicate=deduplicate)


# --------------------------------------------------------------------------- replay


def replay_plan(model: nn.Module, plan: CompressionPlan | Iterable[PlanEntry] | Mapping) -> nn.Module:
    """Rebuild the compressed structure of ``plan`` on a fresh, uncompressed ``model`` (in place).

    Each entry's kind rebuilds its structure (:meth:`CompressionKind.replay`) and installs it. The
    new modules' weights are left at their default initialisation: load the compressed state dict
    afterwards. ``plan`` may also be a ``CompressionPlan.to_dict()`` dict. Returns ``model``.
    """
    if isinstance(plan, Mapping):
        plan = CompressionPlan.from_dict(dict(plan))
    for i, entry in enumerate(plan):
        kind = get_kind(entry.kind)
        try:
            kind.install(model, entry, kind.replay(model, entry))
        except ValueError as err:
            raise ValueError(f"plan entry {i} ({entry.kind} {entry.name!r}): {err}") from err
    return model
