"""The base of the kinds that swap a plain table for a table class of their own by one method (TT-Rec, QR, PQ)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from lightning_afm.compress.kinds.embedding import plain_table
from lightning_afm.compress.registry import CompressionKind

__all__ = ["TableKind"]


class TableKind(CompressionKind):
    """A kind that replaces a plain ``nn.Embedding`` by its :attr:`produces` table, by one method.

    A subclass sets ``name``, ``method`` and ``produces``; its entry and build methods are
    ``(method,)`` (no ``"random"`` method: each kind's own options choose how its table starts).
    Undone (:meth:`plain_module`), it leaves a plain table of the same rows and width.
    """

    #: The one method of the plan entries and of ``build`` (``"qr"``, ``"pq"``, ``"ttd"``).
    method: ClassVar[str] = ""
    replaces = nn.Embedding

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.method:
            raise TypeError(f"{cls.__name__} must set the class attribute `method` (its one compression method)")
        cls.entry_methods = cls.build_methods = (cls.method,)

    def plain_module(self, name: str, module: nn.Module, state_dict: Mapping[str, Any]) -> nn.Embedding:
        return plain_table(module)
