"""Compression kinds and their registry: one object per kind of structural change, looked up by name.

A kind (:class:`CompressionKind`) knows everything about one change, say "an ``nn.Linear``
becomes a ``LowRankLinear``": which methods build it, how to build the replacement from
statistics or weights (:meth:`~CompressionKind.build`), how to rebuild its bare structure from
a plan entry (:meth:`~CompressionKind.replay`), what that structure costs
(:meth:`~CompressionKind.structure`), and how to undo it. Surgery, plan replay and checkpoint
loading are written once, generically, against this interface; a plan entry's ``kind`` is the
registry key. The built-in kinds live in :mod:`lightning_afm.compress.kinds`, one module each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

if TYPE_CHECKING:
    from lightning_afm.compress.plan import PlanEntry

__all__ = ["Structure", "CompressionKind", "LowRankKind", "register_kind", "get_kind", "kind_names", "kinds",
           "kind_for_module", "kind_for_method", "kind_of_module", "factored_types", "build_methods_for", "check_rank"]


@dataclass(frozen=True)
class Structure:
    """What a replacement costs, read from its plan entry alone (no weights, no factors).

    Attributes:
        parameters: parameter elements of the new module.
        multiply_adds: multiply-adds per example (per looked-up row for a table).
        biases: which parts have a bias (``{"first": True, "second": False}``...).
    """

    parameters: int
    multiply_adds: int
    biases: dict[str, bool] = field(default_factory=dict)


def check_rank(rank: Any, limit: int | None = None, what: str = "", label: str = "rank") -> int:
    """``rank`` as an int in ``[1, limit]`` (``limit`` None: any positive int); a ValueError otherwise.

    The one check of a requested rank: plan entries, stages, TT-ranks and the callback's
    check of a rank against each target (:meth:`CompressionKind.max_rank`) all use it.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{label} must be a positive int, got {rank!r}")
    if limit is not None and rank > limit:
        raise ValueError(f"{label} {rank} is out of range for {what}: it must be between 1 and {limit}")
    return rank


class CompressionKind:
    """One kind of structural change. Subclass, set the class attributes, register an instance.

    Class attributes:
        name: the plan entries' ``kind``.
        entry_methods: the ``method`` values its plan entries may hold (empty: the entry has no
            method and no rank, as a fold).
        build_methods: the methods :meth:`build` accepts (a fresh ``"random"`` start included).
        replaces: the plain module type it replaces (None: it does not take per-module targets).
        produces: the module type it leaves behind (None: it changes a plain module in place).
    """

    name: ClassVar[str] = ""
    entry_methods: ClassVar[tuple[str, ...]] = ()
    build_methods: ClassVar[tuple[str, ...]] = ()
    replaces: ClassVar[type[nn.Module] | None] = None
    produces: ClassVar[type[nn.Module] | None] = None

    # -- building ----------------------------------------------------------------------------
    def max_rank(self, module: nn.Module) -> int | None:
        """The largest rank ``module`` allows (None: no bound, as a TT-rank)."""
        return None

    def rank_problem(self, module: nn.Module, rank: int) -> str | None:
        """Why ``rank`` cannot build this kind's replacement of ``module`` beyond :meth:`max_rank` (None: it can).

        Asked before any work (a stage's checks at fit start), so a bad rank fails before the baseline trains.
        """
        return None

    def select_targets(self, model: nn.Module, names: list[str], rank: int,
                       options: Mapping[str, Any]) -> list[str]:
        """The targets among ``names`` this kind really replaces (default: all of them).

        A kind that leaves some targets as they are (TT-Rec the small tables, QR those it would not
        shrink) says so here, and may add targets (TT-Rec the LR tables of its fields).
        """
        return list(names)

    def build(self, model: nn.Module, name: str, stats: Any, rank: int, method: str,
              options: Mapping[str, Any]) -> tuple["PlanEntry", nn.Module]:
        """The replacement of module ``name`` and its plan entry; changes nothing in ``model``.

        ``options``: settings of this or other kinds (one request may cover several kinds); a kind
        reads the ones it knows.
        """
        raise NotImplementedError

    # -- replaying ---------------------------------------------------------------------------
    def replay(self, model: nn.Module, entry: "PlanEntry") -> nn.Module:
        """The bare structure of ``entry`` (default initialisation) for the module it replaced."""
        raise NotImplementedError

    def install(self, model: nn.Module, entry: "PlanEntry", module: nn.Module) -> None:
        """Put ``module`` (from :meth:`build` or :meth:`replay`) into ``model`` at ``entry.name``."""
        from lightning_afm.compress.surgery import set_submodule

        set_submodule(model, entry.name, module)

    def is_applied(self, model: nn.Module, entry: "PlanEntry") -> bool:
        """Whether ``model`` already has the structure ``entry`` describes."""
        raise NotImplementedError

    # -- describing and undoing --------------------------------------------------------------
    def structure(self, entry: "PlanEntry") -> Structure:
        raise NotImplementedError

    def plain_module(self, name: str, module: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
        """The plain module a :attr:`produces` module replaced, at default initialisation."""
        raise NotImplementedError

    # -- model-level kinds (``produces`` None, e.g. the fold): present as a whole or not -------
    def present(self, model: nn.Module) -> bool:
        """Whether ``model`` carries this change (model-level kinds only)."""
        return False

    def depends_on(self, module: nn.Module) -> bool:
        """Whether putting back the plain module of ``module`` breaks this change (it must go first)."""
        return False

    def undo(self, model: nn.Module, state_dict: Mapping[str, Any]) -> None:
        """Take this change out of ``model`` (model-level kinds only)."""
        raise NotImplementedError

    def replaced_module(self, model: nn.Module, entry: "PlanEntry") -> nn.Module:
        """The module ``entry`` replaces, checked to be a :attr:`replaces` of the entry's shape."""
        from lightning_afm.compress.surgery import get_submodule

        module = get_submodule(model, entry.name)
        expected = self.replaces or nn.Linear
        if not isinstance(module, expected) or list(module.weight.shape) != entry.shape:
            found = f"{type(module).__name__} {list(module.weight.shape) if hasattr(module, 'weight') else ''}"
            raise ValueError(
                f"cannot replay plan entry {entry.name!r}: expected an {expected.__name__} with weight "
                f"{entry.shape}, found {found}; is this the same model architecture?"
            )
        return module


class LowRankKind(CompressionKind):
    """A kind built by the paper's factorisations: AFM (statistics) or SVD (weights), or a fresh ``"random"``
    start of AFM's structure (recorded as ``"afm"``, ``flags["init"] == "random"``)."""

    entry_methods = ("afm", "svd")
    build_methods = entry_methods + ("random",)

    def rank_of(self, module: nn.Module) -> int:
        """The rank ``k`` of a :attr:`produces` module."""
        raise NotImplementedError

    def is_applied(self, model: nn.Module, entry: "PlanEntry") -> bool:
        from lightning_afm.compress.surgery import get_submodule

        module = get_submodule(model, entry.name)
        return isinstance(module, self.produces) and self.rank_of(module) == entry.rank


_REGISTRY: dict[str, CompressionKind] = {}


def register_kind(kind: CompressionKind) -> CompressionKind:
    """Add ``kind`` to the registry under ``kind.name``; a second kind of the same name is an error."""
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has no name; set the class attribute `name`")
    if kind.name in _REGISTRY and type(_REGISTRY[kind.name]) is not type(kind):
        raise ValueError(f"a compression kind named {kind.name!r} is already registered "
                         f"({type(_REGISTRY[kind.name]).__name__})")
    _REGISTRY[kind.name] = kind
    return kind


def get_kind(name: str) -> CompressionKind:
    if name not in _REGISTRY:
        raise ValueError(f"unknown compression kind {name!r}; the registered kinds are {kind_names()}")
    return _REGISTRY[name]


def kind_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def kinds() -> tuple[CompressionKind, ...]:
    return tuple(_REGISTRY.values())


def factored_types() -> tuple[type[nn.Module], ...]:
    """The module types the kinds leave behind (their parts are never targets)."""
    return tuple(k.produces for k in kinds() if k.produces is not None)


def kind_of_module(module: nn.Module) -> CompressionKind | None:
    """The kind whose :attr:`~CompressionKind.produces` ``module`` is, or None for a plain module."""
    return next((k for k in kinds() if k.produces is not None and isinstance(module, k.produces)), None)


def build_methods_for(replaces: type[nn.Module]) -> tuple[str, ...]:
    """Every method some kind builds from a ``replaces`` module, in registration order, no repeats."""
    out: list[str] = []
    for kind in kinds():
        if kind.replaces is replaces:
            out.extend(m for m in kind.build_methods if m not in out)
    return tuple(out)


def kind_for_method(replaces: type[nn.Module], method: str) -> CompressionKind:
    """The kind that builds ``method``'s replacement of a ``replaces`` module (registration order decides)."""
    for kind in kinds():
        if kind.replaces is replaces and method in kind.build_methods:
            return kind
    raise ValueError(f"method must be one of {build_methods_for(replaces)} for an {replaces.__name__}, got {method!r}")


def kind_for_module(module: nn.Module, method: str, name: str = "") -> CompressionKind:
    """The kind that builds ``method``'s replacement of ``module``; ValueError saying what is possible."""
    candidates = [k for k in kinds() if k.replaces is not None and isinstance(module, k.replaces)]
    for kind in candidates:
        if method in kind.build_methods:
            return kind
    if not candidates:
        types = sorted({k.replaces.__name__ for k in kinds() if k.replaces is not None})
        raise ValueError(f"{name!r} is a {type(module).__name__}; only {' and '.join(f'nn.{t}' for t in types)} "
                         "can be compressed")
    methods = [m for k in candidates for m in k.build_methods]
    raise ValueError(f"method must be one of {tuple(methods)} for {name!r} ({type(module).__name__}), got {method!r}")
