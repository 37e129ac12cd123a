"""The schema: what a model needs to know about a CTR table, and nothing more.

A :class:`Schema` names the categorical fields (with the number of rows each
embedding table needs) and the numeric fields. Models are built from a schema
alone, so a model of the paper's full Criteo size can be built without the data.

Encoding contract shared by ``data`` and ``models``:

* categorical value ids are ``int64`` in ``[0, vocab_size)``; id ``0`` is the
  out-of-vocabulary (OOV) id for rare or unseen values;
* numeric values are ``float32``, already scaled (the paper: min-max to [0, 1]);
* a batch is a ``dict`` with ``"categorical"`` (``[B, F]`` int64),
  ``"numeric"`` (``[B, N]`` float32, ``N`` may be 0) and ``"label"``
  (``[B]`` float32 in {0, 1}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

CATEGORICAL = "categorical"
NUMERIC = "numeric"
LABEL = "label"


@dataclass(frozen=True)
class CategoricalField:
    """One categorical field: its name and the rows its embedding table needs."""

    name: str
    vocab_size: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a categorical field needs a non-empty name")
        if int(self.vocab_size) < 1:
            raise ValueError(
                f"field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}"
            )


@dataclass(frozen=True)
class Schema:
    """Fields of a CTR table, in the column order of the encoded arrays.

    Example:
        >>> s = Schema.from_vocab_sizes([10, 20], numeric=["price"])
        >>> s.vocab_sizes, s.num_categorical, s.num_numeric
        ([10, 20], 2, 1)
    """

    categorical: tuple[CategoricalField, ...]
    numeric: tuple[str, ...] = ()
    label: str = LABEL
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", tuple(self.categorical))
        object.__setattr__(self, "numeric", tuple(self.numeric))
        names = [f.name for f in self.categorical] + list(self.numeric)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"field names must be unique; repeated: {dup}")
        if not self.categorical and not self.numeric:
            raise ValueError("a schema needs at least one field")

    # -- views -------------------------------------------------------------
    @property
    def vocab_sizes(self) -> list[int]:
        return [int(f.vocab_size) for f in self.categorical]

    @property
    def categorical_names(self) -> list[str]:
        return [f.name for f in self.categorical]

    @property
    def num_categorical(self) -> int:
        return len(self.categorical)

    @property
    def num_numeric(self) -> int:
        return len(self.numeric)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_vocab_sizes(
        cls,
        vocab_sizes: Sequence[int],
        numeric: Iterable[str] | int = (),
        names: Sequence[str] | None = None,
    ) -> "Schema":
        """Build a schema from table sizes (field names default to ``C1..Cn``).

        ``numeric`` is a list of names or a count (names ``I1..In``).
        """
        names = list(names) if names is not None else [f"C{i + 1}" for i in range(len(vocab_sizes))]
        if len(names) != len(vocab_sizes):
            raise ValueError(f"{len(names)} names for {len(vocab_sizes)} vocab sizes")
        if isinstance(numeric, int):
            numeric = [f"I{i + 1}" for i in range(numeric)]
        return cls(
            categorical=tuple(CategoricalField(n, int(v)) for n, v in zip(names, vocab_sizes)),
            numeric=tuple(numeric),
        )

    # -- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "categorical": [{"name": f.name, "vocab_size": int(f.vocab_size)} for f in self.categorical],
            "numeric": list(self.numeric),
            "label": self.label,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: "dict[str, Any] | Schema") -> "Schema":
        if isinstance(d, Schema):
            return d
        return cls(
            categorical=tuple(CategoricalField(c["name"], int(c["vocab_size"])) for c in d["categorical"]),
            numeric=tuple(d.get("numeric", ())),
            label=d.get("label", LABEL),
            extra=dict(d.get("extra", {})),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Schema":
        return cls.from_dict(json.loads(Path(path).read_text()))
