"""A compression plan: which module was replaced, how, at which rank — enough to rebuild the structure.

Each compression step returns a :class:`PlanEntry`; its ``kind`` names the registered
:class:`~lightning_afm.compress.registry.CompressionKind` that built it and replays it. The plan is plain JSON, is
saved into checkpoints, and :func:`lightning_afm.compress.surgery.replay_plan` replays it on a
fresh, uncompressed model before the state dict loads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lightning_afm.compress.registry import check_rank, get_kind, kind_names

__all__ = ["PlanEntry", "CompressionPlan", "PLAN_VERSION"]

PLAN_VERSION = 1


@dataclass
class PlanEntry:
    """One structural change.

    Attributes:
        name: dotted module name in the model (``"mlp.1.linear"``, ``"embeddings.C1"``).
        kind: a registered kind (:mod:`lightning_afm.compress.kinds`): ``"linear"`` (nn.Linear ->
            LowRankLinear), ``"embedding"`` (nn.Embedding -> LowRankEmbedding), ``"fold"`` (the
            first MLP Linear widened to read codes) or ``"tt_embedding"`` (nn.Embedding -> TTEmbedding).
        method: one of the kind's ``entry_methods`` (``"afm"`` or ``"svd"``; ``"ttd"`` for
            ``"tt_embedding"``); None for a kind without methods (``"fold"``).
        rank: ``k``; the TT-rank ``R`` for ``"tt_embedding"``; None for ``"fold"``.
        shape: the replaced module's original weight shape: ``[m, n]`` for a Linear
            (out, in), ``[s, t]`` for a table, ``[out, in]`` of the Linear a fold replaced.
        relu: a ReLU between the factors (``"linear"`` only).
        flags: structure details needed to rebuild (biases, the folded width, the TT factors
            and ranks ``row_factors``/``dim_factors``/``tt_ranks``, ...) and
            provenance (``relu_init``, kept variance); JSON values only.
    """

    name: str
    kind: str
    method: str | None
    rank: int | None
    shape: list[int]
    relu: bool = False
    flags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in kind_names():
            raise ValueError(f"plan entry {self.name!r}: kind must be one of {kind_names()}, got {self.kind!r}")
        methods = get_kind(self.kind).entry_methods
        if methods:
            if self.method not in methods:
                raise ValueError(f"plan entry {self.name!r}: method must be one of {methods}, got {self.method!r}")
            try:
                check_rank(self.rank)
            except ValueError as err:
                raise ValueError(f"plan entry {self.name!r}: {err}") from None
        if len(self.shape) != 2:
            raise ValueError(f"plan entry {self.name!r}: shape must have 2 entries, got {self.shape!r}")
        self.shape = [int(x) for x in self.shape]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "rank": self.rank,
            "shape": list(self.shape),
            "relu": bool(self.relu),
            "flags": dict(self.flags),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PlanEntry":
        missing = {"name", "kind", "shape"} - set(data)
        if missing:
            raise ValueError(f"plan entry is missing {sorted(missing)}: {data!r}")
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            method=data.get("method"),
            rank=data.get("rank"),
            shape=list(data["shape"]),
            relu=bool(data.get("relu", False)),
            flags=dict(data.get("flags", {})),
        )


@dataclass
class CompressionPlan:
    """An ordered list of :class:`PlanEntry`; order matters when replaying (a fold follows its tables)."""

    entries: list[PlanEntry] = field(default_factory=list)

    def append(self, entry: PlanEntry) -> None:
        self.entries.append(entry)

    def extend(self, entries: Iterable[PlanEntry]) -> None:
        self.entries.extend(entries)

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressionPlan":
        version = data.get("version")
        if version != PLAN_VERSION:
            raise ValueError(f"unsupported compression plan version {version!r} (this code reads {PLAN_VERSION})")
        return cls([PlanEntry.from_dict(e) for e in data.get("entries", [])])

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "CompressionPlan":
        return cls.from_dict(json.loads(text))
