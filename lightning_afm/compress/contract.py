"""What compression needs to know about a model: the contract a model implements to be compressed by name.

Compression itself only needs module names (``targets``), so any ``nn.Module`` can be compressed
by naming its Linears and tables. A model that implements :class:`CompressibleModel` also gets:

* default targets: the paper's MLP Linears (its 2nd and 3rd) and the field tables;
* the fold of the tables' projections into the first MLP Linear (:mod:`.kinds.fold`), which
  needs to know which Linear reads the embeddings, in which field order, and a switch that
  makes the MLP read the ``k``-dim codes instead of the ``t``-dim embeddings;
* the TT-Rec stage's LR tables (the first-order, width-1 table of each field).

The zoo (:class:`lightning_afm.models.base.CTRModel`) implements it once for every model.
This module names no attribute of the zoo: the model says where its parts are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["ModelLayout", "CompressibleModel", "implements_contract", "layout_of", "default_targets",
           "mlp_reads_codes", "set_mlp_reads_codes", "TARGET_GROUPS"]

#: The groups of default targets a layout names: ``"mlp"`` (Linears) and ``"embeddings"`` (tables).
TARGET_GROUPS = ("mlp", "embeddings")


@dataclass(frozen=True)
class ModelLayout:
    """Where a model's compressible parts are; dotted module names relative to the model.

    Attributes:
        mlp_targets: the MLP Linears compressed by default (the paper: the 2nd and 3rd; the first
            depends on the embedding width and is handled by the fold).
        field_tables: the field embedding tables, in the order the MLP reads them (field-major
            ``cat([X.flatten(1), numeric])``). Each is an ``nn.Embedding`` or a factored table.
        first_mlp_linear: the module that reads the embeddings (an ``nn.Linear``, or the
            ``LowRankLinear`` it became); None when the model has no such layer.
        mlp_reads_embeddings: True when ``first_mlp_linear`` reads ``cat([X.flatten(1), numeric])``
            with ``X`` the ``[B, F, t]`` field embeddings directly (False when an interaction
            layer sits in between, as in NFM and FiBiNet): only then can the projections fold.
        mlp_reads_codes: the state after a fold: the MLP reads the ``[B, F, k]`` codes.
        lr_tables: field table name -> the name of that field's width-1 first-order (LR) table,
            for the fields that have one.
    """

    mlp_targets: tuple[str, ...]
    field_tables: tuple[str, ...]
    first_mlp_linear: str | None
    mlp_reads_embeddings: bool
    mlp_reads_codes: bool = False
    lr_tables: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class CompressibleModel(Protocol):
    """The contract: a model describes its layout and lets a fold switch its MLP to the codes.

    Example (a user's module)::

        class MyCTR(nn.Module):
            def compression_layout(self) -> ModelLayout:
                return ModelLayout(mlp_targets=("net.2",), field_tables=("user", "item"),
                                   first_mlp_linear="net.0", mlp_reads_embeddings=True,
                                   mlp_reads_codes=self.reads_codes)

            def set_mlp_reads_codes(self, reads_codes: bool) -> None:
                self.reads_codes = reads_codes
    """

    def compression_layout(self) -> ModelLayout:
        """The model's :class:`ModelLayout` as it is now."""

    def set_mlp_reads_codes(self, reads_codes: bool) -> None:
        """Make the first MLP Linear read the ``[B, F, k]`` codes (True) or the embeddings (False)."""


def implements_contract(model: nn.Module) -> bool:
    return isinstance(model, CompressibleModel)


def layout_of(model: nn.Module, needed_for: str = "this") -> ModelLayout:
    """``model``'s layout; a ValueError saying what to do when the model does not implement the contract."""
    if not implements_contract(model):
        raise ValueError(
            f"{type(model).__name__} does not implement the compression contract "
            f"(lightning_afm.compress.CompressibleModel: compression_layout() and set_mlp_reads_codes()), "
            f"which {needed_for} needs; implement it, or name the modules to compress in `targets`"
        )
    layout = model.compression_layout()
    if not isinstance(layout, ModelLayout):
        raise TypeError(f"{type(model).__name__}.compression_layout() must return a ModelLayout, "
                        f"got {type(layout).__name__}")
    return layout


def default_targets(model: nn.Module, group: str) -> list[str]:
    """The default target names of ``group`` (``"mlp"`` or ``"embeddings"``) from the model's layout."""
    if group not in TARGET_GROUPS:
        raise ValueError(f"group must be one of {TARGET_GROUPS}, got {group!r}")
    layout = layout_of(model, f"choosing default {group} targets")
    return list(layout.mlp_targets if group == "mlp" else layout.field_tables)


def mlp_reads_codes(model: nn.Module) -> bool:
    """Whether ``model``'s MLP reads codes (a fold was applied); False for a model without the contract."""
    return implements_contract(model) and bool(model.compression_layout().mlp_reads_codes)


def set_mlp_reads_codes(model: nn.Module, reads_codes: bool) -> None:
    layout_of(model, "folding")
    model.set_mlp_reads_codes(bool(reads_codes))
