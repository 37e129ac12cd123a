"""The paper's model shapes for Criteo and Avazu, and the figures of its Table 2 we compare with.

Everything needed to build the seven models at full size without the data: the per-field
cardinalities of the full datasets (``../shared/data/README.md``: Criteo C1..C26 with no
frequency threshold, 33,762,577 rows in all; Avazu's 22 categorical fields, 9,449,445 rows),
the numeric fields, the embedding width, the MLP width (3 layers) and the paper's ranks.

Example:
    >>> shape = PAPER_SHAPES["criteo"]
    >>> shape.num_fields, shape.num_numeric, shape.embedding_dim, shape.mlp_hidden
    (26, 13, 16, [400, 400, 400])
    >>> shape.capped(1000).vocab_sizes[:4]
    [1000, 583, 1000, 1000]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lightning_afm.data.schema import Schema

__all__ = [
    "CRITEO_VOCAB_SIZES",
    "AVAZU_VOCAB_SIZES",
    "AVAZU_FIELD_NAMES",
    "PaperShape",
    "PAPER_SHAPES",
    "TABLE_2_PARAMS_M",
    "TABLE_2_AFM_PARAMS_M",
    "PAPER_AFM_EMB_GAIN_PCT",
    "TABLE_4_TTD_PARAMS_M",
    "TABLE_17_PARAMS_M",
    "paper_shape",
]

#: Criteo Kaggle ``train.txt``, fields C1..C26, full vocabularies.
CRITEO_VOCAB_SIZES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
#: Avazu ``train.csv``, the 22 categorical fields (``id`` dropped), full vocabularies.
AVAZU_FIELD_NAMES = [
    "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
AVAZU_VOCAB_SIZES = [
    240, 7, 7, 4737, 7745, 26, 8552, 559, 36, 2686408, 6729486, 8251, 5, 4, 2626, 8, 9, 435, 4, 68, 172, 60,
]


@dataclass(frozen=True)
class PaperShape:
    """One dataset's model shape in the paper.

    Attributes:
        dataset: ``"criteo"`` or ``"avazu"``.
        vocab_sizes: rows of each field's table.
        field_names: the categorical field names (``C1..`` for Criteo).
        num_numeric: numeric fields fed to the MLP and the LR part (Criteo 13, Avazu 0).
        embedding_dim: ``t`` (Criteo 16, Avazu 50).
        mlp_hidden: the MLP's widths (3 x 400 / 3 x 2000).
        mlp_rank: the paper's AFM rank for MLP layers 2 and 3 (64 / 320).
        emb_rank: the paper's AFM rank for the tables (2 / 8).
        vocab_cap: None for the full vocabularies, else the cap applied by :meth:`capped`.
    """

    dataset: str
    vocab_sizes: list[int]
    field_names: list[str]
    num_numeric: int
    embedding_dim: int
    mlp_hidden: list[int]
    mlp_rank: int
    emb_rank: int
    vocab_cap: int | None = None

    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def total_rows(self) -> int:
        return sum(self.vocab_sizes)

    def schema(self) -> Schema:
        """The :class:`Schema` the models are built from (numeric fields ``I1..IN``)."""
        return Schema.from_vocab_sizes(self.vocab_sizes, numeric=self.num_numeric, names=self.field_names)

    def capped(self, vocab_cap: int | None) -> "PaperShape":
        """The same shape with every table cut to at most ``vocab_cap`` rows (None: unchanged).

        For quick runs on small machines: parameter counts then no longer match Table 2.
        """
        if vocab_cap is None:
            return self
        if isinstance(vocab_cap, bool) or not isinstance(vocab_cap, int) or vocab_cap < 1:
            raise ValueError(f"vocab_cap must be a positive integer or null, got {vocab_cap!r}")
        return replace(self, vocab_sizes=[min(v, vocab_cap) for v in self.vocab_sizes], vocab_cap=vocab_cap)


PAPER_SHAPES: dict[str, PaperShape] = {
    "criteo": PaperShape(
        dataset="criteo",
        vocab_sizes=CRITEO_VOCAB_SIZES,
        field_names=[f"C{i + 1}" for i in range(len(CRITEO_VOCAB_SIZES))],
        num_numeric=13,
        embedding_dim=16,
        mlp_hidden=[400, 400, 400],
        mlp_rank=64,
        emb_rank=2,
    ),
    "avazu": PaperShape(
        dataset="avazu",
        vocab_sizes=AVAZU_VOCAB_SIZES,
        field_names=AVAZU_FIELD_NAMES,
        num_numeric=0,
        embedding_dim=50,
        mlp_hidden=[2000, 2000, 2000],
        mlp_rank=320,
        emb_rank=8,
    ),
}

#: The paper's Table 2, baseline parameters in millions (our full-size models round to these).
TABLE_2_PARAMS_M: dict[str, dict[str, float]] = {
    "criteo": {"dcn": 574.46, "deepfm": 574.46, "nfm": 574.30, "autoint": 574.46,
               "fibinet": 578.62, "dcnv2": 574.83, "gdcn": 575.19},
    "avazu": {"dcn": 492.14, "deepfm": 492.13, "nfm": 490.03, "autoint": 492.16,
              "fibinet": 537.29, "dcnv2": 494.55, "gdcn": 496.97},
}

#: The paper's Table 2, ``(+AFM MLP, +AFM EMB)`` parameters in millions (MLP rank 64 / 320, embeddings
#: 2 / 8; EMB is cumulative). NFM's and FiBiNet's EMB figures are what folding the projections into an
#: ``F t``-input first Linear would give, which their MLPs do not have and the paper's text rules out
#: ("we do not merge the compression weights into the first dense layer"): we are ``F (t - k) h1`` above.
TABLE_2_AFM_PARAMS_M: dict[str, dict[str, tuple[float, float]]] = {
    "criteo": {"dcn": (574.24, 101.42), "deepfm": (574.24, 101.42), "nfm": (574.08, 101.26),
               "autoint": (574.24, 101.42), "fibinet": (578.40, 105.58), "dcnv2": (574.61, 101.79),
               "gdcn": (574.97, 102.15)},
    "avazu": {"dcn": (486.70, 87.98), "deepfm": (486.69, 87.98), "nfm": (484.59, 85.87),
              "autoint": (486.72, 88.00), "fibinet": (531.85, 133.13), "dcnv2": (489.11, 90.39),
              "gdcn": (491.53, 92.81)},
}

#: The paper's Table 2 CPU inference throughput gain of +AFM EMB over the baseline, in percent
#: (the paper's machine, not ours: shown for reference only, never as our result).
PAPER_AFM_EMB_GAIN_PCT: dict[str, dict[str, float]] = {
    "criteo": {"dcn": 39.7, "deepfm": 59.2, "nfm": 37.4, "autoint": 7.49,
               "fibinet": 14.12, "dcnv2": 37.15, "gdcn": 10.83},
    "avazu": {"dcn": 131.3, "deepfm": 166.1, "nfm": 119.7, "autoint": 68.8,
              "fibinet": 16.5, "dcnv2": 115.85, "gdcn": 80.12},
}


#: The paper's Table 4 (line 715), DeepFM +TTD EMB parameters in millions (TT-rank 16, TT-Rec's settings).
#: Ours (``ttd_emb``: tables of >= 10^5 rows and their LR tables as trains, width factors inner-small)
#: is 3.81M / 12.23M; no TT-Rec convention tried gives both within 0.01M (README, Table 4).
TABLE_4_TTD_PARAMS_M: dict[str, float] = {"criteo": 3.76, "avazu": 12.21}

#: The paper's Table 17 (line 1187-1194), DeepFM on Criteo, parameters in millions per method.
TABLE_17_PARAMS_M: dict[str, float] = {"baseline": 574.46, "umec": 131.09, "pq": 102.08, "qr": 106.38, "afm": 101.42}


def paper_shape(dataset: str, vocab_cap: int | None = None) -> PaperShape:
    """The paper's shape for ``dataset`` (case-insensitive), optionally with capped vocabularies."""
    key = str(dataset).lower()
    if key not in PAPER_SHAPES:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(PAPER_SHAPES)}")
    return PAPER_SHAPES[key].capped(vocab_cap)
