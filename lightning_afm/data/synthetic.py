"""Synthetic CTR data with a hidden ground truth: the package's built-in default data.

Rows are drawn field by field from Zipf-like (bounded power-law) distributions,
so every field has a few very frequent values and a long tail, as in Criteo.
The label is Bernoulli(sigmoid(logit)) with a hidden logit made of

* a per-value effect in every field (what the LR part and embeddings learn);
* low-rank pairwise interactions ``s_f s_g <u_f[v_f], u_g[v_g]>`` between the
  interacting fields (an FM-shaped term: what FM / cross layers learn);
* numeric effects ``b_j tanh(z_j)`` on standardised ``log1p`` counts, one of
  them gated by a categorical field (a numeric x categorical interaction);
* a ReLU of the sum of three fields' effects (a nonlinearity only an MLP fits).

Value effects are hashes of (seed, field, value), not tables, so the truth
costs no memory even at Criteo's 33.8M values. Everything is deterministic in
the seed. :func:`write_criteo_format` writes the same kind of data as a
Criteo ``train.txt`` (used by the preprocessing benchmark and the tests of the
Criteo path at scale).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

MISSING = -1  # raw value of a missing categorical

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _hash_uniform(seed: int, field_index: int, channel: int, values: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random number in [-sqrt(3), sqrt(3)) (mean 0, variance 1) per value.

    ``values``: ``int64 [...]`` -> ``float64 [...]`` (splitmix64 of value, field, channel and seed).
    """
    salt = np.uint64((seed * 1_000_003 + field_index * 7_919 + channel * 104_729 + 12345) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) * _GOLDEN + salt
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    unit = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return (unit * 2.0 - 1.0) * math.sqrt(3.0)


def zipf_values(rng: np.random.Generator, n: int, vocab_size: int, exponent: float) -> np.ndarray:
    """``n`` draws in ``[0, vocab_size)`` with ``P(k) ~ (k + 1) ** -exponent`` (bounded, continuous-inverse Zipf).

    Returns ``int64 [n]``; value 0 is the most frequent.
    """
    u = rng.random(n)
    top = float(vocab_size) + 1.0
    if abs(exponent - 1.0) < 1e-9:
        x = top**u
    else:
        e = 1.0 - exponent
        x = (1.0 - u * (1.0 - top**e)) ** (1.0 / e)
    return np.minimum(np.floor(x).astype(np.int64) - 1, vocab_size - 1)


@dataclass(frozen=True)
class NumericField:
    """A count-like numeric field: ``floor(expm1(N(log_mean, log_std)))``, missing with ``missing_rate``."""

    log_mean: float = 2.0
    log_std: float = 1.2
    missing_rate: float = 0.1
    negative_rate: float = 0.0  # share of small negative values (Criteo's I2)


@dataclass(frozen=True)
class SyntheticConfig:
    """What the synthetic table looks like and how strong its signal is.

    The defaults (16 categorical fields, 3 .. 200k values, 5 numeric fields,
    1M rows) give a ground-truth AUC near 0.8 and a base rate near 22%, and
    DeepFM (embedding 16, MLP 3 x 400, batch 1000) trains an epoch of the
    80% training split in about a minute on 2 CPU cores.
    """

    num_rows: int = 1_000_000
    vocab_sizes: tuple[int, ...] = (3, 8, 16, 32, 64, 128, 256, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000)
    numeric: tuple[NumericField, ...] = tuple(
        NumericField(m, s, r) for m, s, r in ((0.8, 1.0, 0.45), (2.2, 1.3, 0.2), (3.6, 1.8, 0.25), (1.5, 1.4, 0.05), (1.9, 1.1, 0.2))
    )
    categorical_missing: tuple[float, ...] = ()  # per field; empty = no missing categorical values
    zipf_exponent: float = 1.1
    interaction_rank: int = 4
    interaction_share: float = 0.6
    base_rate: float = 0.22
    signal: float = 1.0  # multiplies every term of the logit
    seed: int = 2020

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
        object.__setattr__(self, "numeric", tuple(NumericField(**n) if isinstance(n, dict) else n for n in self.numeric))
        object.__setattr__(self, "categorical_missing", tuple(float(x) for x in self.categorical_missing))
        if int(self.num_rows) < 1:
            raise ValueError(f"num_rows must be >= 1, got {self.num_rows}")
        if any(v < 1 for v in self.vocab_sizes):
            raise ValueError(f"vocab sizes must be >= 1, got {self.vocab_sizes}")
        if not self.vocab_sizes and not self.numeric:
            raise ValueError("a synthetic table needs at least one field")
        if self.categorical_missing and len(self.categorical_missing) != len(self.vocab_sizes):
            raise ValueError("categorical_missing needs one rate per categorical field")
        if not 0.0 < self.base_rate < 1.0:
            raise ValueError(f"base_rate must be in (0, 1), got {self.base_rate}")


# Standard deviation of each part of the logit (before ``signal``); with these the
# logit's std is ~1.4 and the ground truth's AUC ~0.8 at the default settings.
TARGET_STD = {"values": 0.9, "pairs": 0.8, "numeric": 0.45, "relu": 0.4}


@dataclass
class GroundTruth:
    """The hidden CTR model of a :class:`SyntheticConfig` (small: no per-value tables)."""

    config: SyntheticConfig
    field_scale: np.ndarray  # [F] relative std of each field's value effect
    pair_weight: np.ndarray  # [F] s_f: weight of field f in the pairwise term (0: no interactions)
    numeric_weight: np.ndarray  # [N]
    missing_effect: np.ndarray  # [N] logit shift when a numeric value is missing
    gate_field: int  # categorical field whose values scale numeric field 0
    relu_fields: tuple[int, ...]  # fields inside the ReLU term
    part_scale: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(TARGET_STD, 1.0))
    bias: float = 0.0

    def parts(self, categorical: np.ndarray, numeric: np.ndarray) -> dict[str, np.ndarray]:
        """The unscaled parts of the logit, each float64 ``[n]``.

        ``categorical`` int64 ``[n, F]`` (``MISSING`` = -1), ``numeric`` float64 ``[n, N]`` (NaN = missing).
        """
        cfg = self.config
        seed, rank = cfg.seed, cfg.interaction_rank
        n, num_fields = categorical.shape
        parts = {k: np.zeros(n) for k in TARGET_STD}
        pooled = np.zeros((n, rank))  # sum_f s_f u_f, for the FM identity below
        squares = np.zeros(n)
        for f in range(num_fields):
            v = categorical[:, f]
            parts["values"] += self.field_scale[f] * _hash_uniform(seed, f, 0, v)
            if self.pair_weight[f] != 0.0:
                u = np.stack([_hash_uniform(seed, f, 1 + k, v) for k in range(rank)], axis=1) * self.pair_weight[f]
                pooled += u
                squares += np.einsum("nk,nk->n", u, u)
        # sum over pairs f < g of <s_f u_f, s_g u_g> = (|sum_f s_f u_f|^2 - sum_f |s_f u_f|^2) / 2
        parts["pairs"] += 0.5 * (np.einsum("nk,nk->n", pooled, pooled) - squares)
        for j, spec in enumerate(cfg.numeric):
            x = numeric[:, j]
            missing = np.isnan(x)
            z = np.tanh((np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0.0)) - spec.log_mean) / spec.log_std)
            term = np.where(missing, self.missing_effect[j], self.numeric_weight[j] * z)
            if j == 0 and num_fields:
                gate = _hash_uniform(seed, self.gate_field, 1 + rank, categorical[:, self.gate_field])
                term = term + np.where(missing, 0.0, 0.6 * gate * z)
            parts["numeric"] += term
        if self.relu_fields:
            h = sum(_hash_uniform(seed, f, 2 + rank, categorical[:, f]) for f in self.relu_fields)
            parts["relu"] += np.maximum(h, 0.0)
        return parts

    def logit(self, categorical: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        """The true logit, float64 ``[n]`` (arguments as in :meth:`parts`)."""
        parts = self.parts(categorical, numeric)
        total = sum(self.part_scale[k] * parts[k] for k in parts)
        return self.bias + self.config.signal * total


def make_truth(config: SyntheticConfig) -> GroundTruth:
    """Draw the hidden model of ``config`` (deterministic in ``config.seed``).

    Each part of the logit is scaled to its :data:`TARGET_STD` and the bias set
    for ``base_rate``, both on a fixed 20k-row calibration sample.
    """
    rng = np.random.default_rng([config.seed, 0])
    num_fields, num_numeric = len(config.vocab_sizes), len(config.numeric)
    field_scale = rng.uniform(0.3, 1.0, size=num_fields)
    interacting = rng.random(num_fields) < config.interaction_share
    pair_weight = np.where(interacting, rng.uniform(0.5, 1.5, size=num_fields), 0.0)
    numeric_weight = rng.choice([-1.0, 1.0], size=num_numeric) * rng.uniform(0.5, 1.5, size=num_numeric)
    missing_effect = rng.normal(0.0, 0.5, size=num_numeric)
    gate_field = int(rng.integers(0, num_fields)) if num_fields else 0
    relu_fields = tuple(int(f) for f in rng.choice(num_fields, size=min(3, num_fields), replace=False)) if num_fields else ()
    truth = GroundTruth(config, field_scale, pair_weight, numeric_weight, missing_effect, gate_field, relu_fields)
    cat, num = _draw_features(config, np.random.default_rng([config.seed, 2]), 20_000)
    parts = truth.parts(cat, num)
    for k, target in TARGET_STD.items():
        std = parts[k].std()
        truth.part_scale[k] = target / std if std > 1e-12 else 0.0
    raw = truth.logit(cat, num)
    lo, hi = -30.0, 30.0  # bisection: mean click probability = base rate
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(raw + mid).mean() < config.base_rate:
            lo = mid
        else:
            hi = mid
    truth.bias = (lo + hi) / 2
    return truth


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _draw_features(config: SyntheticConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw features of ``n`` rows: categorical int64 ``[n, F]`` (-1 missing), numeric float64 ``[n, N]`` (NaN)."""
    cat = np.empty((n, len(config.vocab_sizes)), dtype=np.int64)
    for f, vocab in enumerate(config.vocab_sizes):
        cat[:, f] = zipf_values(rng, n, vocab, config.zipf_exponent)
        if config.categorical_missing and config.categorical_missing[f] > 0:
            cat[rng.random(n) < config.categorical_missing[f], f] = MISSING
    num = np.empty((n, len(config.numeric)), dtype=np.float64)
    for j, spec in enumerate(config.numeric):
        x = np.floor(np.expm1(rng.normal(spec.log_mean, spec.log_std, size=n).clip(0.0, 25.0)))
        if spec.negative_rate > 0:
            neg = rng.random(n) < spec.negative_rate
            x[neg] = -rng.integers(1, 3, size=int(neg.sum()))
        x[rng.random(n) < spec.missing_rate] = np.nan
        num[:, j] = x
    return cat, num


@dataclass
class SyntheticChunk:
    """Rows of a synthetic table: raw ``categorical`` int64 ``[n, F]``, ``numeric`` float64 ``[n, N]``,
    ``label`` float32 ``[n]`` and the true ``logit`` float64 ``[n]``."""

    categorical: np.ndarray
    numeric: np.ndarray
    label: np.ndarray
    logit: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def iter_synthetic(config: SyntheticConfig, truth: GroundTruth | None = None, chunk_rows: int = 1 << 18) -> Iterator[SyntheticChunk]:
    """The table of ``config`` in chunks of ``chunk_rows`` (chunk ``i`` is drawn from its own stream ``(seed, 1, i)``)."""
    truth = truth or make_truth(config)
    for i, start in enumerate(range(0, int(config.num_rows), int(chunk_rows))):
        n = min(int(chunk_rows), int(config.num_rows) - start)
        rng = np.random.default_rng([config.seed, 1, i])
        cat, num = _draw_features(config, rng, n)
        logit = truth.logit(cat, num)
        label = (rng.random(n) < _sigmoid(logit)).astype(np.float32)
        yield SyntheticChunk(cat, num, label, logit)


def make_synthetic(config: SyntheticConfig | None = None, **overrides) -> SyntheticChunk:
    """The whole synthetic table in memory (raw values; the DataModule encodes them).

    Example:
        >>> t = make_synthetic(num_rows=1000, vocab_sizes=(5, 50), seed=1)
        >>> t.categorical.shape, t.numeric.shape, 0.1 < float(t.label.mean()) < 0.35
        ((1000, 2), (1000, 5), True)
    """
    config = dataclasses.replace(config, **overrides) if config is not None else SyntheticConfig(**overrides)
    chunks = list(iter_synthetic(config))
    return SyntheticChunk(
        np.concatenate([c.categorical for c in chunks]),
        np.concatenate([c.numeric for c in chunks]),
        np.concatenate([c.label for c in chunks]),
        np.concatenate([c.logit for c in chunks]),
    )


# -- Criteo-format files ---------------------------------------------------------------------

CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip  (full Kaggle train.txt, from ../shared/data/README.md)
# Share of empty values per field and log1p statistics of I1..I13, measured on the shared 10k sample.
CRITEO_CATEGORICAL_MISSING = (
    0, 0, 0.036, 0.036, 0, 0.133, 0, 0, 0, 0, 0, 0.036, 0, 0, 0, 0.036, 0, 0, 0.45, 0.45, 0.036,
    0.818, 0, 0.036, 0.45, 0.45,
)  # fmt: skip
CRITEO_NUMERIC = tuple(
    NumericField(m, s, r, neg)
    for m, s, r, neg in (
        (0.8, 1.0, 0.448, 0), (2.1, 2.1, 0.0, 0.1), (2.25, 1.3, 0.204, 0), (1.73, 0.96, 0.198, 0),
        (7.2, 2.9, 0.049, 0), (3.6, 1.8, 0.251, 0), (1.5, 1.4, 0.049, 0), (2.1, 1.2, 0.001, 0),
        (3.6, 1.7, 0.049, 0), (0.4, 0.4, 0.448, 0), (0.85, 0.74, 0.049, 0), (0.3, 0.6, 0.773, 0),
        (1.9, 1.06, 0.198, 0),
    )
)  # fmt: skip


def criteo_like_config(num_rows: int, seed: int = 0, zipf_exponent: float = 1.05, ctr: float = 0.25) -> SyntheticConfig:
    """A :class:`SyntheticConfig` shaped like Criteo: 26 fields of its cardinalities, 13 count fields,
    click rate ``ctr`` (Criteo's is about 0.26)."""
    return SyntheticConfig(
        num_rows=num_rows,
        vocab_sizes=CRITEO_CARDINALITIES,
        numeric=CRITEO_NUMERIC,
        categorical_missing=CRITEO_CATEGORICAL_MISSING,
        zipf_exponent=zipf_exponent,
        interaction_share=0.5,
        base_rate=ctr,
        signal=0.7,
        seed=seed,
    )


def _hex_tokens(field_index: int, values: np.ndarray) -> np.ndarray:
    """Distinct 8-hex-digit tokens for raw values ``int64 [n]`` -> ``S8 [n]`` (an odd multiplier mod 2^32 is a bijection)."""
    with np.errstate(over="ignore"):
        code = (values.astype(np.uint64) * np.uint64(2654435761) + np.uint64(field_index * 40503 + 7)) & np.uint64(0xFFFFFFFF)
    shifts = np.arange(28, -4, -4, dtype=np.uint64)
    digits = ((code[:, None] >> shifts) & np.uint64(0xF)).astype(np.uint8)
    return np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[digits].view("S8").ravel()


def write_criteo_format(path: str | Path, num_rows: int, seed: int = 0, chunk_rows: int = 1 << 18, progress: bool = False,
                        ctr: float = 0.25) -> Path:
    """Write ``num_rows`` Criteo-like rows as a Criteo ``train.txt`` (tab-separated, no header).

    Columns: label, I1..I13 (integers, may be empty or negative), C1..C26
    (8-hex tokens, may be empty); cardinalities, missing rates and count
    distributions follow the real data; labels follow a hidden ground truth.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    from tqdm.auto import tqdm

    from .readers import CRITEO_COLUMNS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = criteo_like_config(num_rows, seed, ctr=ctr)
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as f, tqdm(total=num_rows, unit="rows", unit_scale=True, desc=f"writing {path.name}", disable=not progress) as bar:
        for chunk in iter_synthetic(config, chunk_rows=chunk_rows):
            columns = [pa.array(chunk.label.astype(np.int8))]
            for j in range(chunk.numeric.shape[1]):
                x = chunk.numeric[:, j]
                columns.append(pa.array(np.nan_to_num(x, nan=0).astype(np.int64), mask=np.isnan(x)))
            for c in range(chunk.categorical.shape[1]):
                v = chunk.categorical[:, c]
                missing = v == MISSING
                tokens = pa.array(_hex_tokens(c, np.maximum(v, 0)), type=pa.binary()).cast(pa.string())
                if missing.any():
                    tokens = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), tokens)
                columns.append(tokens)
            pacsv.write_csv(pa.Table.from_arrays(columns, names=list(CRITEO_COLUMNS)), f, options)
            bar.update(len(chunk))
    return path


def ground_truth_auc(chunk: SyntheticChunk) -> float:
    """AUC of the true logit against the labels (the ceiling no model beats in expectation)."""
    return binary_auc(chunk.label, chunk.logit)


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC by ranks (ties get the average rank), numpy only."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average 1-based rank per tie group
    pos = labels.sum()
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
