"""The checks a plain table passes before the table-only kinds (QR, PQ) replace it."""

from __future__ import annotations

from torch import nn

from lightning_afm.compress.surgery import get_submodule

__all__ = ["checked_table"]


def checked_table(model: nn.Module, name: str, what: str) -> nn.Embedding:
    """The plain ``nn.Embedding`` at ``name``, checked to be one a ``what`` table (``"QR"``...) can replace.

    Refused: anything but a plain table, and the table options a composed table cannot keep
    (a padding row that must stay zero, row renormalisation, sparse or frequency-scaled gradients).
    """
    if not name:
        raise ValueError("give the dotted name of an nn.Embedding inside the model, not the model itself")
    module = get_submodule(model, name)
    if not isinstance(module, nn.Embedding):
        raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Embedding; only plain tables "
                         f"become {what} tables")
    problems = [(module.max_norm is not None, f"renormalises rows (max_norm={module.max_norm})"),
                (module.padding_idx is not None, f"has a padding row (padding_idx={module.padding_idx})"),
                (module.sparse, "has sparse gradients (sparse=True)"),
                (module.scale_grad_by_freq, "scales gradients by frequency (scale_grad_by_freq=True)")]
    for bad, problem in problems:
        if bad:
            raise ValueError(f"{name!r} {problem}, which a {what} table does not do: rebuild the table "
                             "without it or leave it out of the stage's targets")
    return module
