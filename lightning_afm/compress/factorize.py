"""Low-rank factors of Linear layers and embedding tables: AFM (from output statistics) and SVD.

Pure functions on tensors: the maths run in float64 and the results are cast back to the
dtype of the weight (or table) they replace. Notation of DESIGN.md: a Linear layer
``y = W x + b`` with ``W`` of shape ``[m, n]``; a table ``D`` of shape ``[s, t]``.

AFM (Atomic Feature Mimicking) keeps the top-``k`` principal directions ``U_k`` (``[m, k]``)
of the output covariance ``C`` and rebuilds the output as its PCA projection::

    y ~ U_k U_k^T (y - mu) + mu
      = W2 (W1 x + b1) + b2,   W1 = U_k^T W, b1 = U_k^T b, W2 = U_k, b2 = mu - U_k U_k^T mu

SVD (the baseline) uses the weights alone: ``W = U S V^T``, ``W1 = S_k^{1/2} V_k^T``,
``W2 = U_k S_k^{1/2}``, ``b2 = b``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "LinearFactors",
    "EmbeddingFactors",
    "Spectrum",
    "RELU_INITS",
    "afm_factors",
    "afm_embedding_factors",
    "svd_factors",
    "svd_embedding_factors",
    "explained_variance",
    "kept_variance",
    "principal_components",
]

#: How :func:`afm_factors` prepares the factors for a ReLU between them (see its docstring).
RELU_INITS = ("shift", "sign", "plain")

#: Default ``c`` of the ReLU bias shift: the first bias is raised until ``mean - c * std`` of
#: every kept coefficient is >= 0. For Gaussian-like coefficients the ReLU then clips a tail of
#: probability 0.13 %, carrying 2e-4 of the component's variance (E[(Z + 3)_-^2] for Z ~ N(0, 1)).
DEFAULT_SHIFT_STD = 3.0


class LinearFactors(NamedTuple):
    """The two Linears replacing ``y = W x + b`` (``[m, n]``) at rank ``k``.

    Shapes: ``first_weight [k, n]``, ``first_bias [k]`` or None, ``second_weight [m, k]``,
    ``second_bias [m]`` or None. ``y ~ second_weight @ act(first_weight @ x + first_bias) + second_bias``.
    """

    first_weight: Tensor
    first_bias: Tensor | None
    second_weight: Tensor
    second_bias: Tensor | None


class EmbeddingFactors(NamedTuple):
    """A ``k``-dim table and the projection back to ``t`` dims replacing a table ``D`` (``[s, t]``).

    Shapes: ``table [s, k]``, ``projection_weight [t, k]``, ``projection_bias [t]`` or None;
    row ``i`` is rebuilt as ``projection_weight @ table[i] + projection_bias``.
    """

    table: Tensor
    projection_weight: Tensor
    projection_bias: Tensor | None


# --------------------------------------------------------------------------- validation


def _check_rank(rank: int, limit: int, what: str) -> int:
    if isinstance(rank, bool):
        raise TypeError(f"rank must be an integer, got {rank!r}")
    try:
        k = operator.index(rank)
    except TypeError:
        raise TypeError(f"rank must be an integer, got {type(rank).__name__} {rank!r}") from None
    if not 1 <= k <= limit:
        raise ValueError(f"rank {k} is out of range for {what}: it must be between 1 and {limit}")
    return k


def _check_matrix(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-d tensor, got {shape}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    _check_finite(x, name)


def _check_finite(x: Tensor, name: str) -> None:
    """NaN/Inf weights would reach eigh/svd as an opaque LinAlgError (or silently NaN factors)."""
    # A float64 sum is NaN/Inf exactly when an entry is (short of a sum past 1e308), without the
    # entry-sized boolean mask a table of millions of rows would need; the count only on failure.
    if torch.isfinite(x.detach().sum(dtype=torch.float64)):
        return
    bad = int((~torch.isfinite(x.detach())).sum())
    if bad:
        raise ValueError(
            f"{name} contains NaN or Inf ({bad} of {x.numel()} entries): the model diverged before compression; "
            "lower the learning rate or clip gradients and train it again"
        )


def _check_moments(mean: Tensor, cov: Tensor, m: int, what: str) -> None:
    if mean.shape != (m,):
        raise ValueError(f"mean of {what} must have shape ({m},), got {tuple(mean.shape)}")
    if cov.shape != (m, m):
        raise ValueError(f"covariance of {what} must be square with shape ({m}, {m}), got {tuple(cov.shape)}")
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ValueError(f"the statistics of {what} contain NaN or Inf; recollect them from finite outputs")


def _check_bias(bias: Tensor | None, m: int) -> None:
    if bias is not None and bias.shape != (m,):
        raise ValueError(f"bias must have shape ({m},), got {tuple(bias.shape)}")
    if bias is not None:
        _check_finite(bias, "bias")


# --------------------------------------------------------------------------- eigen maths


def _orient(components: Tensor, mean: Tensor) -> Tensor:
    """Flip each column ``u_j`` of ``components`` (``[m, k]``) so that ``u_j^T mean >= 0``.

    ``eigh`` returns each eigenvector up to sign. Without an activation the sign cancels
    (``u u^T``); with a ReLU between the factors it decides what the ReLU cuts away, and the
    orientation with a non-negative mean coefficient keeps most of the component alive
    (DESIGN.md: AUC 0.577 -> 0.6976 before finetuning). When ``u_j^T mean`` is ~0 the sign is
    set by the largest entry instead, so that the result is deterministic.
    """
    coef = components.T @ mean
    scale = components.abs().sum(0) * mean.abs().max().clamp(min=1e-300)
    ambiguous = coef.abs() <= 1e-12 * scale
    rows = components.abs().argmax(dim=0)
    tie_sign = torch.sign(components[rows, torch.arange(components.shape[1])])
    sign = torch.where(ambiguous, tie_sign, torch.sign(coef))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return components * sign


def principal_components(cov: Tensor, rank: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending, ``[m]``) and the top-``rank`` eigenvectors (``[m, rank]``) of ``cov``.

    float64; ``cov`` is symmetrised first so rounding asymmetry cannot leak into ``eigh``.
    """
    c = cov.detach().to(torch.float64)
    c = (c + c.T) / 2
    values, vectors = torch.linalg.eigh(c)
    values = values.flip(0)
    vectors = vectors.flip(1)
    k = values.shape[0] if rank is None else rank
    return values, vectors[:, :k]


def _eigenvalues(cov: Tensor) -> Tensor:
    """Eigenvalues of ``cov`` (``[m, m]``), descending and clamped at 0 (rounding can leave -1e-17s)."""
    c = cov.detach().to(torch.float64)
    return torch.linalg.eigvalsh((c + c.T) / 2).flip(0).clamp(min=0)


# --------------------------------------------------------------------------- AFM


def afm_factors(
    weight: Tensor,
    bias: Tensor | None,
    mean: Tensor,
    cov: Tensor,
    rank: int,
    relu: bool = False,
    relu_init: str = "shift",
    shift_std: float = DEFAULT_SHIFT_STD,
) -> LinearFactors:
    """AFM factors of a Linear layer from the mean and covariance of its outputs.

    Args:
        weight: ``W`` ``[m, n]``.
        bias: ``b`` ``[m]`` or None.
        mean: ``mu`` ``[m]``, mean of ``y = W x + b`` over the statistics data.
        cov: ``C`` ``[m, m]``, biased covariance of ``y``.
        rank: ``k`` in ``[1, min(m, n)]``.
        relu: whether a ReLU will sit between the two factors.
        relu_init: only used with ``relu=True``; how to keep the ReLU from destroying the
            projection at initialisation:

            - ``"shift"`` (default): orient each component so its mean coefficient
              ``u_j^T mu >= 0``, then raise the first bias by
              ``s_j = max(0, c * sqrt(lambda_j) - u_j^T mu)`` and lower the second bias by
              ``U_k s``. Without the ReLU the shift cancels exactly; with it, the ReLU only clips
              coefficients below ``mean - c * std``.
            - ``"sign"``: the orientation alone (the fix DESIGN.md measured).
            - ``"plain"``: ``eigh``'s arbitrary signs, no shift: the paper's plain ReLU (its Table 6),
              kept to reproduce it; the ReLU may then cut whole components at initialisation.

            Why ``mean - c * std`` as the lower bound: the coefficient ``z_j = u_j^T y`` has
            exactly mean ``u_j^T mu`` and variance ``lambda_j`` under the statistics, so the
            bound needs no extra pass (``U_k`` is only known after the pass) and no extra
            DDP state. A hard minimum would need a second pass, and a bound from per-dim
            min/max of ``y`` is loose by up to ``sqrt(m)`` and would park the ReLU far from
            the data. See ``DEFAULT_SHIFT_STD`` for what ``c = 3`` clips.
        shift_std: ``c`` above.

    Returns:
        :class:`LinearFactors` with ``first_weight = U_k^T W`` ``[k, n]``,
        ``first_bias = U_k^T b (+ s)`` ``[k]`` (zeros when ``bias`` is None),
        ``second_weight = U_k`` ``[m, k]``, ``second_bias = mu - U_k U_k^T mu (- U_k s)`` ``[m]``,
        in ``weight``'s dtype. Without a ReLU and with ``k = m`` this reproduces the layer.
    """
    _check_matrix(weight, "weight")
    m, n = weight.shape
    _check_bias(bias, m)
    k = _check_rank(rank, min(m, n), f"a Linear layer with weight [{m}, {n}] (rank <= min(m, n))")
    _check_moments(mean, cov, m, f"a Linear layer with {m} outputs")
    if relu_init not in RELU_INITS:
        raise ValueError(f"relu_init must be one of {RELU_INITS}, got {relu_init!r}")
    if shift_std < 0:
        raise ValueError(f"shift_std must be >= 0, got {shift_std}")

    w = weight.detach().to(torch.float64)
    b = torch.zeros(m, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64, copy=True)
    b = b.to(w.device)
    mu = mean.detach().to(device=w.device, dtype=torch.float64)
    values, u = principal_components(cov.to(w.device), k)
    if not (relu and relu_init == "plain"):
        u = _orient(u, mu)

    coef_mean = u.T @ mu  # [k], mean of each kept coefficient z_j = u_j^T y
    first_weight = u.T @ w
    first_bias = u.T @ b
    second_weight = u
    second_bias = mu - u @ coef_mean
    if relu and relu_init == "shift":
        std = values[:k].clamp(min=0).sqrt()
        shift = (shift_std * std - coef_mean).clamp(min=0)
        first_bias = first_bias + shift
        second_bias = second_bias - u @ shift

    dtype = weight.dtype
    return LinearFactors(
        first_weight.to(dtype),
        first_bias.to(dtype),
        second_weight.to(dtype),
        second_bias.to(dtype),
    )


def afm_embedding_factors(table: Tensor, mean: Tensor, cov: Tensor, rank: int) -> EmbeddingFactors:
    """AFM factors of an embedding table from the mean and covariance of its looked-up vectors.

    Args:
        table: ``D`` ``[s, t]``.
        mean: ``mu`` ``[t]``, mean of the looked-up rows (weighted by how often each occurs).
        cov: ``C`` ``[t, t]``.
        rank: ``k`` in ``[1, t]``.

    Returns:
        :class:`EmbeddingFactors`: ``table = D U_k`` ``[s, k]``, ``projection_weight = U_k``
        ``[t, k]``, ``projection_bias = mu - U_k U_k^T mu`` ``[t]``, in ``D``'s dtype. At ``k = t``
        every row is rebuilt exactly.
    """
    _check_matrix(table, "embedding table")
    s, t = table.shape
    k = _check_rank(rank, t, f"an embedding table [{s}, {t}] (rank <= embedding dim)")
    _check_moments(mean, cov, t, f"an embedding table of dim {t}")
    mu = mean.detach().to(device=table.device, dtype=torch.float64)
    _, u = principal_components(cov.to(table.device), k)
    u = _orient(u, mu)  # no activation follows; only for a deterministic result
    bias = mu - u @ (u.T @ mu)
    # The table product runs in the table's own dtype: tables can have millions of rows and a
    # float64 copy would double the peak memory, while a t-term dot product loses nothing
    # measurable in float32.
    dtype = table.dtype
    new_table = table.detach() @ u.to(dtype)
    return EmbeddingFactors(new_table, u.to(dtype), bias.to(dtype))


# --------------------------------------------------------------------------- SVD


def svd_factors(weight: Tensor, bias: Tensor | None, rank: int) -> LinearFactors:
    """SVD factors of a Linear layer from its weights alone (the paper's SVD baseline).

    ``W = U S V^T`` (``[m, n]``): ``first_weight = S_k^{1/2} V_k^T`` ``[k, n]`` with no bias,
    ``second_weight = U_k S_k^{1/2}`` ``[m, k]``, ``second_bias = b`` (or None). At ``k = min(m, n)``
    the product reproduces ``W`` and, at every ``k``, it is the best rank-``k`` approximation.
    """
    _check_matrix(weight, "weight")
    m, n = weight.shape
    _check_bias(bias, m)
    k = _check_rank(rank, min(m, n), f"a Linear layer with weight [{m}, {n}] (rank <= min(m, n))")
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    root = s[:k].sqrt()
    dtype = weight.dtype
    first = (root[:, None] * vh[:k]).to(dtype)
    second = (u[:, :k] * root[None, :]).to(dtype)
    return LinearFactors(first, None, second, None if bias is None else bias.detach().clone())


def svd_embedding_factors(table: Tensor, rank: int, chunk_rows: int = 1 << 16) -> EmbeddingFactors:
    """SVD factors of an embedding table: ``D = U S V^T`` becomes ``D V_k`` with projection ``V_k``.

    Shapes: ``table`` ``[s, t]`` -> ``table [s, k]``, ``projection_weight`` ``V_k`` ``[t, k]``,
    ``projection_bias`` None. ``V`` comes from the eigenvectors of ``D^T D`` (``[t, t]``),
    accumulated in float64 over chunks of ``chunk_rows`` rows, because a table can have
    millions of rows and a full float64 SVD would copy it whole.
    """
    _check_matrix(table, "embedding table")
    s, t = table.shape
    k = _check_rank(rank, t, f"an embedding table [{s}, {t}] (rank <= embedding dim)")
    gram = torch.zeros(t, t, dtype=torch.float64, device=table.device)
    for chunk in table.detach().split(chunk_rows):
        c = chunk.to(torch.float64)
        gram += c.T @ c
    _, v = principal_components(gram, k)
    # deterministic signs (the largest entry of each right singular vector positive)
    v = _orient(v, torch.zeros(t, dtype=torch.float64, device=table.device))
    dtype = table.dtype
    return EmbeddingFactors(table.detach() @ v.to(dtype), v.to(dtype), None)


# --------------------------------------------------------------------------- spectrum


@dataclass(frozen=True)
class Spectrum:
    """Explained-variance spectrum of a covariance (Table 11 of the paper).

    Attributes:
        eigenvalues: ``[m]``, descending, clamped at 0 (float64).
        cumulative_ratio: ``[m]``, share of the total variance kept by the first ``j + 1``
            components (all ones when the total variance is 0).
        components: ``{threshold: fewest components whose share is >= threshold}``
            (0 when the total variance is 0: nothing needs keeping).
    """

    eigenvalues: Tensor
    cumulative_ratio: Tensor
    components: dict[float, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain floats and ints for logging: ``{"components_90": 12, ..., "total_variance": ...}``."""
        out: dict[str, object] = {
            f"components_{round(p * 100):g}": int(k) for p, k in self.components.items()
        }
        out["total_variance"] = float(self.eigenvalues.sum())
        out["num_features"] = int(self.eigenvalues.shape[0])
        return out


def explained_variance(cov: Tensor, thresholds: tuple[float, ...] = (0.90, 0.95, 0.99)) -> Spectrum:
    """Sorted eigenvalues of ``cov`` (``[m, m]``), their cumulative share, and components per threshold."""
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be square, got {tuple(cov.shape)}")
    for p in thresholds:
        if not 0 < p <= 1:
            raise ValueError(f"thresholds must be in (0, 1], got {p}")
    values = _eigenvalues(cov)
    total = values.sum()
    if total <= 0:
        ratio = torch.ones_like(values)
        components = {float(p): 0 for p in thresholds}
    else:
        ratio = values.cumsum(0) / total
        # a tiny slack so that a share equal to the threshold up to rounding counts as reached
        components = {
            float(p): int(torch.searchsorted(ratio, torch.tensor(p - 1e-12, dtype=ratio.dtype)).item()) + 1
            for p in thresholds
        }
        components = {p: min(k, values.shape[0]) for p, k in components.items()}
    return Spectrum(values, ratio, components)


def kept_variance(cov: Tensor, rank: int) -> float:
    """Share of the total variance of ``cov`` (``[m, m]``) kept by its top ``rank`` components (1.0 if none)."""
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be square, got {tuple(cov.shape)}")
    k = _check_rank(rank, cov.shape[0], f"a covariance of size {cov.shape[0]}")
    values = _eigenvalues(cov)
    total = float(values.sum())
    return 1.0 if total <= 0 else float(values[:k].sum()) / total
