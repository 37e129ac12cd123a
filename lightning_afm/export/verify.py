"""Check an exported artifact against eager PyTorch on real rows, at more than one batch size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from lightning_afm.export.formats import Runner

#: The largest |p_artifact - p_eager| an fp32 export may show (the serving issue's bound).
DEFAULT_TOLERANCE = 1e-5


@dataclass
class Verification:
    """What the check measured; ``passed`` is ``max_abs_diff <= tolerance``."""

    rows: int
    source: str
    batch_sizes: list[int]
    max_abs_diff: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def run_in_batches(runner: Runner, categorical: np.ndarray, numeric: np.ndarray | None,
                   batch_size: int = 4096) -> np.ndarray:
    """``runner`` (any runtime's callable) over all rows, ``batch_size`` at a time: ``[n]``."""
    parts = [runner(categorical[s:s + batch_size], None if numeric is None else numeric[s:s + batch_size])
             for s in range(0, len(categorical), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)


def eager_probabilities(module: nn.Module, categorical: np.ndarray, numeric: np.ndarray | None,
                        batch_size: int = 4096) -> np.ndarray:
    """The reference: ``module`` (a :func:`~.formats.probability_module`) in eager PyTorch, ``[n]``."""

    def run(c: np.ndarray, n: np.ndarray | None) -> np.ndarray:
        args = (torch.from_numpy(c),) if n is None else (torch.from_numpy(c), torch.from_numpy(n))
        with torch.inference_mode():
            return module(*args).double().numpy().reshape(-1)

    return run_in_batches(run, categorical, numeric, batch_size)


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges: chunks of ``batch_size`` (the last one ragged), then single rows at the start."""
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return spans + [(i, i + 1) for i in range(min(n, 3))]


def verify(runner: Runner, reference: np.ndarray, categorical: np.ndarray, numeric: np.ndarray | None,
           source: str, tolerance: float = DEFAULT_TOLERANCE, batch_size: int = 1000) -> Verification:
    """Run ``runner`` over the rows in batches of ``batch_size`` (plus batches of one row, so a batch
    size baked into the graph shows) and compare with ``reference`` (``[n]`` eager probabilities)."""
    n = len(categorical)
    if n == 0:
        raise ValueError("verification needs at least one row; give the export some test rows")
    worst = 0.0
    sizes = set()
    for start, stop in _batches(n, batch_size):
        got = runner(categorical[start:stop], None if numeric is None else numeric[start:stop])
        if got.shape != (stop - start,):
            raise ValueError(f"the artifact returned shape {got.shape} for a batch of {stop - start} rows")
        diff = np.abs(got - reference[start:stop])
        worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).all() else float("inf"))
        sizes.add(stop - start)
    return Verification(rows=n, source=source, batch_sizes=sorted(sizes), max_abs_diff=worst,
                        tolerance=float(tolerance), passed=worst <= tolerance)


def auc_and_logloss(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Test AUC (NaN for a one-class split) and logloss of ``[n]`` probabilities against 0/1 labels."""
    from torchmetrics.functional.classification import binary_auroc

    p = torch.from_numpy(np.asarray(probabilities, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float64))
    auc = float(binary_auroc(p, y.long())) if 0 < float(y.sum()) < len(y) else float("nan")
    clipped = p.clamp(1e-7, 1 - 1e-7)
    logloss = float(-(y * clipped.log() + (1 - y) * (1 - clipped).log()).mean())
    return auc, logloss
