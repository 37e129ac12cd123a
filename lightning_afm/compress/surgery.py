"""Module surgery: find targets by name, swap Linear layers and tables for factored ones, replay a plan.

Every ``compress_*`` function validates everything (the module, the rank, the statistics)
and computes the new module *before* it touches the model, so a bad request raises and
leaves the model as it was; :func:`compress_targets` does the same for a whole set of targets.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from lightning_afm.compress.factorize import (
    DEFAULT_SHIFT_STD,
    afm_embedding_factors,
    afm_factors,
    kept_variance,
    svd_embedding_factors,
    svd_factors,
)
from lightning_afm.compress.fold import replay_fold
from lightning_afm.compress.modules import LowRankEmbedding, LowRankLinear
from lightning_afm.compress.plan import METHODS, CompressionPlan, PlanEntry
from lightning_afm.compress.statistics import OutputStatistics
from lightning_afm.compress.ttd import TTEmbedding, replay_tt_embedding

__all__ = [
    "BUILD_METHODS",
    "DEFAULT_MLP_TARGETS",
    "DEFAULT_EMBEDDING_TARGETS",
    "get_submodule",
    "set_submodule",
    "parameter_count",
    "resolve_targets",
    "build_compressed_linear",
    "build_compressed_embedding",
    "compress_linear",
    "compress_embedding",
    "compress_targets",
    "replay_plan",
]

#: The paper compresses the 2nd and 3rd MLP Linear layers (the 1st depends on the embedding width).
DEFAULT_MLP_TARGETS = ("mlp.1.linear", "mlp.2.linear")
#: Every field table of ``FieldEmbedding``.
DEFAULT_EMBEDDING_TARGETS = ("embeddings.*",)

#: What a replacement can be built from: the factorisations (:data:`METHODS`), or ``"random"``:
#: AFM's structure (both factors with a bias, the ReLU as asked; a table with a biased
#: projection) freshly initialised, to train the small model from scratch (the paper's
#: Table 14). Its plan entry says method ``"afm"`` (the structure to rebuild) and
#: ``flags["init"] == "random"`` (where the weights came from).
BUILD_METHODS = METHODS + ("random",)

_KIND_TYPES: dict[str, type[nn.Module]] = {"linear": nn.Linear, "embedding": nn.Embedding}
_FACTORED = (LowRankLinear, LowRankEmbedding, TTEmbedding)

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


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _types_of(types: Iterable[type[nn.Module] | str] | type[nn.Module] | str) -> tuple[type[nn.Module], ...]:
    if isinstance(types, (str, type)):
        types = [types]
    out = []
    for t in types:
        if isinstance(t, str):
            if t not in _KIND_TYPES:
                raise ValueError(f"unknown module kind {t!r}; use one of {sorted(_KIND_TYPES)} or a class")
            out.append(_KIND_TYPES[t])
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
    factored = [n for n, m in named if isinstance(m, _FACTORED)]
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


# --------------------------------------------------------------------------- building


def _check_method(method: str) -> None:
    if method not in BUILD_METHODS:
        raise ValueError(f"method must be one of {BUILD_METHODS}, got {method!r}")


def _stats_for(stats: StatsArg, name: str, width: int) -> OutputStatistics:
    if stats is None:
        raise ValueError(f"AFM needs the output statistics of {name!r}; run collect_statistics first")
    if isinstance(stats, Mapping):
        if name not in stats:
            raise ValueError(f"no statistics for {name!r}; statistics were collected for {sorted(stats)}")
        stats = stats[name]
    mean, cov = stats.mean, stats.cov
    if mean.shape != (width,) or cov.shape != (width, width):
        raise ValueError(
            f"statistics for {name!r} have mean {tuple(mean.shape)} / cov {tuple(cov.shape)}, "
            f"but the module's output width is {width}"
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ValueError(f"statistics for {name!r} contain NaN or Inf; no module was changed")
    return stats


def build_compressed_linear(
    model: nn.Module,
    name: str,
    stats: StatsArg,
    rank: int,
    method: str = "afm",
    relu: bool = False,
    relu_init: str = "shift",
    shift_std: float = DEFAULT_SHIFT_STD,
) -> tuple[PlanEntry, LowRankLinear]:
    """The :class:`LowRankLinear` that would replace the nn.Linear ``name``, and its plan entry.

    Changes nothing. ``stats``: the target's :class:`OutputStatistics` or the dict from
    :func:`collect_statistics` (ignored, may be None, for ``method="svd"`` and ``"random"``).
    ``method="random"`` builds the same structure as AFM at nn.Linear's default initialisation.
    ``relu``/``relu_init``/``shift_std``: see :func:`afm_factors`; with SVD the ReLU is placed
    as asked, with no sign or bias adjustment (the baseline uses the weights alone).
    """
    _check_method(method)
    module = get_submodule(model, name)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Linear")
    m, n = module.weight.shape
    if method == "random":
        return _random_linear(module, name, rank, relu)
    flags: dict[str, object] = {}
    try:
        if method == "afm":
            s = _stats_for(stats, name, m)
            factors = afm_factors(
                module.weight, module.bias, s.mean, s.cov, rank, relu=relu, relu_init=relu_init, shift_std=shift_std
            )
            flags["kept_variance"] = kept_variance(s.cov, rank)
            if relu:
                flags["relu_init"] = relu_init
        else:
            factors = svd_factors(module.weight, module.bias, rank)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name!r}: {err}") from err
    new = LowRankLinear.from_factors(factors, relu=relu)
    flags["first_bias"] = factors.first_bias is not None
    flags["second_bias"] = factors.second_bias is not None
    entry = PlanEntry(name=name, kind="linear", method=method, rank=int(rank), shape=[m, n], relu=bool(relu), flags=flags)
    return entry, new


def build_compressed_embedding(
    model: nn.Module,
    name: str,
    stats: StatsArg,
    rank: int,
    method: str = "afm",
) -> tuple[PlanEntry, LowRankEmbedding]:
    """The :class:`LowRankEmbedding` that would replace the nn.Embedding ``name``, and its plan entry.

    Changes nothing. ``stats`` as in :func:`build_compressed_linear` (statistics of the looked-up
    vectors, ``[t]`` / ``[t, t]``). ``method="random"``: see :func:`_random_embedding`.
    """
    _check_method(method)
    module = get_submodule(model, name)
    if not isinstance(module, nn.Embedding):
        raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Embedding")
    if module.max_norm is not None:
        raise ValueError(f"{name!r} renormalises rows (max_norm={module.max_norm}), which a factored table cannot do")
    s_rows, t = module.weight.shape
    if method == "random":
        return _random_embedding(module, name, rank)
    flags: dict[str, object] = {}
    try:
        if method == "afm":
            s = _stats_for(stats, name, t)
            factors = afm_embedding_factors(module.weight, s.mean, s.cov, rank)
            flags["kept_variance"] = kept_variance(s.cov, rank)
        else:
            factors = svd_embedding_factors(module.weight, rank)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name!r}: {err}") from err
    new = LowRankEmbedding.from_factors(factors, padding_idx=module.padding_idx, sparse=module.sparse)
    flags["projection_bias"] = factors.projection_bias is not None
    flags["padding_idx"] = module.padding_idx
    flags["sparse"] = bool(module.sparse)
    entry = PlanEntry(name=name, kind="embedding", method=method, rank=int(rank), shape=[s_rows, t], flags=flags)
    return entry, new


def _random_linear(module: nn.Linear, name: str, rank: int, relu: bool) -> tuple[PlanEntry, LowRankLinear]:
    """AFM's ``n -> k -> m`` structure for ``module`` at nn.Linear's default initialisation."""
    m, n = module.weight.shape
    try:
        new = LowRankLinear(n, m, int(rank), relu=relu, device=module.weight.device, dtype=module.weight.dtype)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name!r}: {err}") from err
    flags: dict[str, object] = {"init": "random", "first_bias": True, "second_bias": True}
    entry = PlanEntry(name=name, kind="linear", method="afm", rank=int(rank), shape=[m, n], relu=bool(relu),
                      flags=flags)
    return entry, new


def _random_embedding(module: nn.Embedding, name: str, rank: int) -> tuple[PlanEntry, LowRankEmbedding]:
    """AFM's ``s x k`` table + ``k -> t`` projection for ``module``, freshly initialised.

    The projection gets nn.Linear's default initialisation. The code table is drawn from
    ``N(0, sigma^2)`` with ``sigma`` the standard deviation of the table it replaces, not
    nn.Embedding's ``N(0, 1)``: at fit start that is the model's own embedding initialisation
    (1e-4 in the zoo, as DeepCTR-Torch), so the small model starts as a fresh model would.
    """
    s_rows, t = module.weight.shape
    try:
        new = LowRankEmbedding(s_rows, t, int(rank), projection_bias=True, padding_idx=module.padding_idx,
                               sparse=module.sparse, device=module.weight.device, dtype=module.weight.dtype)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name!r}: {err}") from err
    sigma = float(module.weight.detach().std()) if module.weight.numel() > 1 else 0.0
    if math.isfinite(sigma) and sigma > 0:
        with torch.no_grad():
            nn.init.normal_(new.table.weight, std=sigma)
            if module.padding_idx is not None:
                new.table.weight[module.padding_idx].zero_()
    flags: dict[str, object] = {"init": "random", "table_std": sigma, "projection_bias": True,
                                "padding_idx": module.padding_idx, "sparse": bool(module.sparse)}
    entry = PlanEntry(name=name, kind="embedding", method="afm", rank=int(rank), shape=[s_rows, t], flags=flags)
    return entry, new


def compress_linear(
    model: nn.Module,
    name: str,
    stats: StatsArg,
    rank: int,
    method: str = "afm",
    relu: bool = False,
    relu_init: str = "shift",
    shift_std: float = DEFAULT_SHIFT_STD,
) -> PlanEntry:
    """Replace the nn.Linear ``name`` by its :class:`LowRankLinear`; returns the plan entry."""
    entry, new = build_compressed_linear(model, name, stats, rank, method, relu, relu_init, shift_std)
    set_submodule(model, name, new)
    return entry


def compress_embedding(model: nn.Module, name: str, stats: StatsArg, rank: int, method: str = "afm") -> PlanEntry:
    """Replace the nn.Embedding ``name`` by its :class:`LowRankEmbedding`; returns the plan entry."""
    entry, new = build_compressed_embedding(model, name, stats, rank, method)
    set_submodule(model, name, new)
    return entry


def compress_targets(
    model: nn.Module,
    names: Sequence[str],
    stats: StatsArg,
    rank: int,
    method: str = "afm",
    relu: bool = False,
    relu_init: str = "shift",
    shift_std: float = DEFAULT_SHIFT_STD,
) -> list[PlanEntry]:
    """Compress several nn.Linear / nn.Embedding modules at one rank, all or nothing.

    Every replacement is built first; the model changes only once all of them succeeded.
    ``relu`` applies to Linear targets only. Returns the plan entries in ``names`` order.
    """
    if not names:
        raise ValueError("no target modules to compress")
    built: list[tuple[PlanEntry, nn.Module]] = []
    for name in names:
        module = get_submodule(model, name)
        if isinstance(module, nn.Linear):
            built.append(build_compressed_linear(model, name, stats, rank, method, relu, relu_init, shift_std))
        elif isinstance(module, nn.Embedding):
            built.append(build_compressed_embedding(model, name, stats, rank, method))
        else:
            raise ValueError(f"{name!r} is a {type(module).__name__}; only nn.Linear and nn.Embedding can be compressed")
    for entry, new in built:
        set_submodule(model, entry.name, new)
    return [entry for entry, _ in built]


# --------------------------------------------------------------------------- replay


def _replay_entry(model: nn.Module, entry: PlanEntry) -> None:
    if entry.kind == "fold":
        replay_fold(model, entry)
        return
    if entry.kind == "tt_embedding":
        replay_tt_embedding(model, entry)
        return
    module = get_submodule(model, entry.name)
    expected = nn.Linear if entry.kind == "linear" else nn.Embedding
    if not isinstance(module, expected) or list(module.weight.shape) != entry.shape:
        found = f"{type(module).__name__} {list(module.weight.shape) if hasattr(module, 'weight') else ''}"
        raise ValueError(
            f"cannot replay plan entry {entry.name!r}: expected an {expected.__name__} with weight "
            f"{entry.shape}, found {found}; is this the same model architecture?"
        )
    device, dtype = module.weight.device, module.weight.dtype
    flags = entry.flags
    if entry.kind == "linear":
        m, n = entry.shape
        new: nn.Module = LowRankLinear(
            n,
            m,
            entry.rank,
            relu=entry.relu,
            first_bias=bool(flags.get("first_bias", True)),
            second_bias=bool(flags.get("second_bias", True)),
            device=device,
            dtype=dtype,
        )
    else:
        s_rows, t = entry.shape
        new = LowRankEmbedding(
            s_rows,
            t,
            entry.rank,
            projection_bias=bool(flags.get("projection_bias", True)),
            padding_idx=flags.get("padding_idx"),
            sparse=bool(flags.get("sparse", False)),
            device=device,
            dtype=dtype,
        )
    set_submodule(model, entry.name, new)


def replay_plan(model: nn.Module, plan: CompressionPlan | Iterable[PlanEntry] | Mapping) -> nn.Module:
    """Rebuild the compressed structure of ``plan`` on a fresh, uncompressed ``model`` (in place).

    The new modules' weights are left at their default initialisation: load the compressed
    state dict afterwards. ``plan`` may also be a ``CompressionPlan.to_dict()`` dict.
    Returns ``model``.
    """
    if isinstance(plan, Mapping):
        plan = CompressionPlan.from_dict(dict(plan))
    for i, entry in enumerate(plan):
        try:
            _replay_entry(model, entry)
        except ValueError as err:
            raise ValueError(f"plan entry {i} ({entry.kind} {entry.name!r}): {err}") from err
    return model
