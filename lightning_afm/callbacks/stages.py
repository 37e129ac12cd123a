"""What one compression stage does: which modules, which method and rank, and how to finetune.

A stage's finetune settings (``lr``, ``weight_decay``, ``batch_size``, ``dropout``) are
``None`` to keep what the model or the dataloader already has.

How the finetune ends (see :mod:`lightning_afm.callbacks.selection`): ``select="last"`` keeps
the model as the last finetune epoch leaves it (the paper); ``select="best"`` scores the
validation split ``checks`` times per finetune epoch and keeps the best state by ``monitor``,
the swapped model before any finetuning included; a state replaces the best only when it beats
it by more than ``significance`` paired standard errors (and is no worse on the other metric);
``lr_backoff`` (with ``"best"``) restores the best state whenever a check is worse and goes on
at ``lr * lr_backoff``.
``freeze_embeddings`` keeps every embedding table (``nn.Embedding``: field, LR and code tables)
fixed during the finetune.

``rank="auto"`` (AFM only): each target's rank is chosen, with every other auto target's, for
the callback's ``budget`` (:class:`lightning_afm.compress.budget.Budget`).

Methods: ``"afm"`` (from the output statistics), ``"svd"`` (from the weights), ``"random"``
(AFM's structure, freshly initialised, no statistics: with ``baseline_epochs=0`` it trains the
small model from scratch, the paper's Table 14, see ``conf/compression/scratch.yaml``) and,
for tables only, ``"ttd"``, ``"qr"`` and ``"pq"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Sequence

from torch import nn

from lightning_afm.callbacks.selection import MONITORS
from lightning_afm.compress import LowRankEmbedding, check_rank, default_targets
from lightning_afm.compress.factorize import RELU_INITS
from lightning_afm.compress.qr import QR_INITS, QR_OPERATIONS
from lightning_afm.compress.registry import build_methods_for, kind_for_method
from lightning_afm.compress.ttd import TT_INITS

#: The methods of the registered kinds that replace a Linear / a table (``compress.kinds``).
METHODS = build_methods_for(nn.Linear)
EMBEDDING_METHODS = build_methods_for(nn.Embedding)
SELECTS = ("last", "best")


def leaves_projections(method: str) -> bool:
    """Whether ``method``'s tables are AFM's codes and projections, the only ones a fold can take (not TT, QR, PQ)."""
    produces = kind_for_method(nn.Embedding, method).produces
    return produces is not None and issubclass(produces, LowRankEmbedding)


_EXAMPLES = {"lr": 1e-3, "weight_decay": 1e-3, "dropout": 0.0, "significance": 1.0, "lr_backoff": 0.1,
             "grow_auc_tolerance": 0.0005, "grow_logloss_tolerance": 0.001}


_REQUIRED_NUMBERS = ("significance", "grow_auc_tolerance", "grow_logloss_tolerance")


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _is_integral(value: Any) -> bool:
    return not isinstance(value, bool) and _is_number(value) and float(value) == int(float(value))


@dataclass
class CompressionStage:
    """Settings shared by every stage. Use :class:`MLPStage` or :class:`EmbeddingStage`."""

    rank: int | str
    method: str = "afm"
    targets: Sequence[str] | None = None
    epochs: int = 1
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    dropout: float | None = None
    select: str = "last"
    checks: int = 4
    monitor: str = "val_auc"
    significance: float = 1.0
    lr_backoff: float | None = None
    freeze_embeddings: bool = False
    name: str = ""

    kind: ClassVar[str] = ""
    methods: ClassVar[tuple[str, ...]] = METHODS
    #: Which default targets the model's compression contract gives (``"mlp"`` or ``"embeddings"``).
    target_group: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.kind
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        self.validate()

    def validate(self) -> None:
        """Errors that need no model: raised when the stage is made, long before any work."""
        where = f"{type(self).__name__}({self.name!r})"
        self._check_numbers(where)
        if self.method not in self.methods:
            raise ValueError(f"{where}: method must be one of {self.methods}, got {self.method!r}")
        if self.auto_rank:
            if self.method != "afm":
                raise ValueError(f"{where}: rank='auto' reads AFM's spectra, so it needs method='afm', "
                                 f"got method={self.method!r}")
        else:
            try:
                check_rank(self.rank)
            except ValueError:
                raise ValueError(f"{where}: rank must be a positive integer or 'auto' (chosen for the "
                                 f"callback's budget), got {self.rank!r}") from None
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise ValueError(f"{where}: epochs must be an integer >= 0, got {self.epochs!r}")
        if self.batch_size is not None and (not _is_integral(self.batch_size) or int(self.batch_size) <= 0):
            raise ValueError(f"{where}: batch_size must be a positive integer or None, got {self.batch_size!r}")
        if self.dropout is not None and not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{where}: dropout must be in [0, 1) or None, got {self.dropout!r}")
        if self.lr is not None and float(self.lr) <= 0:
            raise ValueError(f"{where}: lr must be positive or None, got {self.lr!r}")
        if self.weight_decay is not None and float(self.weight_decay) < 0:
            raise ValueError(f"{where}: weight_decay must be >= 0 or None, got {self.weight_decay!r}")
        if self.select not in SELECTS:
            raise ValueError(f"{where}: select must be one of {SELECTS}, got {self.select!r}")
        if not isinstance(self.checks, int) or isinstance(self.checks, bool) or self.checks < 1:
            raise ValueError(f"{where}: checks must be an integer >= 1 (validation checks per finetune epoch), "
                             f"got {self.checks!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"{where}: monitor must be one of {MONITORS}, got {self.monitor!r}")
        if float(self.significance) < 0:
            raise ValueError(f"{where}: significance must be >= 0 (standard errors), got {self.significance!r}")
        if self.lr_backoff is not None:
            if not 0.0 < float(self.lr_backoff) < 1.0:
                raise ValueError(f"{where}: lr_backoff must be in (0, 1) or None, got {self.lr_backoff!r}")
            if self.select != "best":
                raise ValueError(f"{where}: lr_backoff restores the best state, so it needs select='best'")

    #: Fields that hold a real number (or None where ``None`` means "keep what the model has").
    number_fields: ClassVar[tuple[str, ...]] = ("lr", "weight_decay", "dropout", "significance", "lr_backoff")

    def _check_numbers(self, where: str) -> None:
        """A number field holding text (``lr="fast"``) or a bool fails here, by name, not inside ``float()``
        later; a numeric string from a config (``"1e-3"``) is taken as its number."""
        for name in self.number_fields:
            value = getattr(self, name)
            optional = name not in _REQUIRED_NUMBERS
            if value is None and optional:
                continue
            if isinstance(value, bool) or not _is_number(value):
                raise ValueError(f"{where}: {name} must be a number{' or None' if optional else ''}, "
                                 f"got {value!r}; e.g. {name}={_EXAMPLES.get(name, 1.0)!r}")
            if isinstance(value, str):
                setattr(self, name, float(value))

    @property
    def auto_rank(self) -> bool:
        """Whether the ranks are chosen per target for the callback's ``budget`` (``rank="auto"``)."""
        return self.rank == "auto"

    def target_patterns(self, model: nn.Module) -> list[str]:
        """The stage's own ``targets``, or else the model's defaults (its compression contract's layout)."""
        return list(self.targets) if self.targets else default_targets(model, self.target_group)

    def build_options(self) -> dict[str, Any]:
        """Settings the compression kinds read when they build this stage's replacements."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        if d["targets"] is not None:
            d["targets"] = list(d["targets"])
        return d


@dataclass
class MLPStage(CompressionStage):
    """Factor MLP Linear layers (default: the model's contract names them; the zoo's are the paper's 2nd and 3rd).

    ``relu`` puts a ReLU between the two factors (the paper's choice: better after finetuning).
    ``relu_init`` (AFM with ``relu``): ``"shift"`` (default) orients each kept component by its
    mean and raises the first bias so the ReLU starts inactive (the swap is then nearly
    lossless); ``"sign"`` the orientation alone; ``"plain"`` the paper's plain ReLU on ``eigh``'s
    signs (its Table 6). See :func:`lightning_afm.compress.afm_factors`.
    """

    relu: bool = True
    relu_init: str = "shift"

    kind: ClassVar[str] = "mlp"
    target_group: ClassVar[str] = "mlp"

    def build_options(self) -> dict[str, Any]:
        return {"relu": self.relu, "relu_init": self.relu_init}

    def validate(self) -> None:
        super().validate()
        if self.relu_init not in RELU_INITS:
            raise ValueError(f"MLPStage({self.name!r}): relu_init must be one of {RELU_INITS}, got {self.relu_init!r}")


@dataclass
class EmbeddingStage(CompressionStage):
    """Factor embedding tables (default: every field table the model's compression contract names).

    ``fold``: ``"auto"`` folds the per-field projections into the first MLP Linear when the
    model's MLP reads the embeddings directly (DeepFM, DCN, DCNv2, GDCN, AutoInt; not NFM or
    FiBiNet); ``True`` demands it (an error where impossible); ``False`` never folds.

    ``grow_rank`` (AFM only; needs validation data): ``rank`` is the first rank tried; the
    stage doubles it, below the tables' width, until the swap loses at most
    ``grow_auc_tolerance`` AUC and ``grow_logloss_tolerance`` logloss against the model as it is
    on the validation split, beyond ``significance`` paired standard errors (no candidate
    passing: the largest). Without a tolerance a large validation split calls every loss, however
    small, significant: rank 8 of 16 lost 0.0002 AUC on a 200k-row file and still "lost". The paper picks its ranks per dataset by the same criterion, by hand (line
    825-830: "ensure that the AUC and Logloss of the compressed model are comparable").

    ``method="ttd"`` is the TT-Rec baseline (the paper's TTD, which follows TT-Rec's settings at
    TT-rank 16, line 737-738): each target table with at least ``ttd_min_rows`` rows becomes
    tensor-train cores of TT-rank ``rank``, and with ``ttd_lr`` so does the width-1 LR table of
    its field (``linear.<field>``); smaller tables stay dense, as in TT-Rec. Cores start at random
    as TT-Rec's (``ttd_init="random"``, scale ``1/sqrt(3 rows)``) or from TT-SVD of the trained
    table (``"svd"``). The defaults give the counts nearest the paper's Table 4 (line 715), see
    :func:`lightning_afm.compress.select_tt_tables`. Nothing to fold.

    ``method="qr"`` is the QR trick (Shi et al., the paper's Table 17 QR, :mod:`lightning_afm.compress.qr`):
    ``rank`` is the number of collisions ``m``; each target table that gets smaller becomes a
    ``ceil(s / m)``-row quotient and an ``m``-row remainder table, combined by ``qr_operation``
    (``"mult"``, Shi et al.'s default, or ``"add"``), starting at random (``qr_init="random"``,
    Shi et al.) or from the bucket means of the trained table (``"table"``).
    ``method="pq"`` is product quantization (the paper's Table 17 PQ, :mod:`lightning_afm.compress.pq`):
    ``rank`` is the number of sub-vectors (codes per row) ``D``; each target table is quantized by
    ``pq_iterations`` Lloyd iterations of k-means per sub-space (``pq_centroids`` centroids, seed
    ``pq_seed``), then the codebooks finetune with the codes fixed. Neither has anything to fold.
    """

    fold: bool | str = "auto"
    ttd_init: str = "random"
    ttd_min_rows: int = 100_000
    ttd_lr: bool = True
    qr_operation: str = "mult"
    qr_init: str = "random"
    pq_centroids: int = 1024
    pq_iterations: int = 10
    pq_seed: int = 0
    grow_rank: bool = False
    grow_auc_tolerance: float = 0.0005
    grow_logloss_tolerance: float = 0.001

    kind: ClassVar[str] = "emb"
    methods: ClassVar[tuple[str, ...]] = EMBEDDING_METHODS
    number_fields: ClassVar[tuple[str, ...]] = CompressionStage.number_fields + (
        "grow_auc_tolerance", "grow_logloss_tolerance")
    target_group: ClassVar[str] = "embeddings"

    def build_options(self) -> dict[str, Any]:
        return {"init": self.ttd_init, "ttd_min_rows": self.ttd_min_rows, "ttd_lr": self.ttd_lr,
                "qr_operation": self.qr_operation, "qr_init": self.qr_init, "pq_centroids": self.pq_centroids,
                "pq_iterations": self.pq_iterations, "pq_seed": self.pq_seed}

    def validate(self) -> None:
        super().validate()
        if isinstance(self.ttd_min_rows, bool) or not _is_integral(self.ttd_min_rows) or int(self.ttd_min_rows) < 1:
            raise ValueError(f"EmbeddingStage({self.name!r}): ttd_min_rows must be a positive integer (tables with "
                             f"fewer rows stay dense), got {self.ttd_min_rows!r}")
        self.ttd_min_rows = int(self.ttd_min_rows)
        if not isinstance(self.ttd_lr, bool):
            raise ValueError(f"EmbeddingStage({self.name!r}): ttd_lr must be true or false, got {self.ttd_lr!r}")
        if self.ttd_init not in TT_INITS:
            raise ValueError(f"EmbeddingStage({self.name!r}): ttd_init must be 'svd' or 'random', got {self.ttd_init!r}")
        if self.fold is True and not leaves_projections(self.method):
            raise ValueError(f"EmbeddingStage({self.name!r}): {self.method} tables have no projection to fold; "
                             "use fold='auto'")
        self._check_table_options()
        if min(float(self.grow_auc_tolerance), float(self.grow_logloss_tolerance)) < 0:
            raise ValueError(f"EmbeddingStage({self.name!r}): grow tolerances must be >= 0")
        if self.grow_rank and self.auto_rank:
            raise ValueError(f"EmbeddingStage({self.name!r}): grow_rank searches one rank for every table, "
                             "rank='auto' chooses one per table for the budget; use one of them")
        if self.grow_rank and self.method != "afm":
            raise ValueError(f"EmbeddingStage({self.name!r}): grow_rank needs method='afm' (it scores AFM's "
                             f"projections), got method={self.method!r}")
        if self.fold not in ("auto", True, False):
            raise ValueError(f"EmbeddingStage({self.name!r}): fold must be 'auto', True or False, got {self.fold!r}")

    def _check_table_options(self) -> None:
        """The QR and PQ settings (checked whatever the method: a config names them all)."""
        where = f"EmbeddingStage({self.name!r})"
        if self.qr_operation not in QR_OPERATIONS:
            raise ValueError(f"{where}: qr_operation must be one of {QR_OPERATIONS}, got {self.qr_operation!r}")
        if self.qr_init not in QR_INITS:
            raise ValueError(f"{where}: qr_init must be one of {QR_INITS}, got {self.qr_init!r}")
        if self.method == "qr" and self.rank < 2:
            raise ValueError(f"{where}: with method='qr' the rank is the number of collisions, which must be >= 2 "
                             f"(1 would leave the table as it is), got {self.rank}")
        for name, least in (("pq_centroids", 1), ("pq_iterations", 0), ("pq_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not _is_integral(value) or int(value) < least:
                raise ValueError(f"{where}: {name} must be an integer >= {least}, got {value!r}")
            setattr(self, name, int(value))
