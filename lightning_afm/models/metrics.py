"""The metrics of the models: float64 log loss (sums over batches and DDP ranks) and an AUC that
is null, not 0.0, where it is undefined."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities.data import dim_zero_cat


class BinaryLogLoss(Metric):
    """Mean binary cross-entropy over everything seen, accumulated in float64.

    CTR papers report log loss to 4 decimals over tens of millions of rows; a
    float32 running mean loses those digits, so the per-batch sums are taken in
    float64 and the two states (loss sum, row count) are summed across DDP ranks.

    Args:
        from_logits: ``update`` receives logits (exact, no clipping). Otherwise it
            receives probabilities, clipped to ``[eps, 1 - eps]`` with ``eps`` the
            float64 machine epsilon, as ``sklearn.metrics.log_loss`` does.

    Shapes: ``preds`` and ``target`` ``[B]`` (any shape, flattened).

    Example:
        >>> m = BinaryLogLoss(from_logits=True)
        >>> m.update(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
        >>> round(m.compute().item(), 6)  # log 2
        0.693147
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, from_logits: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.from_logits = bool(from_logits)
        self.add_state("loss_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.numel() != target.numel():
            raise ValueError(f"preds has {preds.numel()} values but target has {target.numel()}")
        preds = preds.detach().reshape(-1).to(torch.float64)
        target = target.detach().reshape(-1).to(torch.float64)
        if self.from_logits:
            losses = F.binary_cross_entropy_with_logits(preds, target, reduction="sum")
        else:
            eps = torch.finfo(torch.float64).eps
            p = preds.clamp(eps, 1.0 - eps)
            losses = -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p)).sum()
        self.loss_sum += losses
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        # no rows seen: NaN rather than an error, like an empty mean
        return self.loss_sum / self.count


class BinaryAUC(BinaryAUROC):
    """Exact binary AUROC that is NaN, with a warning naming the split, when the AUC is undefined.

    torchmetrics returns 0.0 when the targets hold one class only (a tiny file, an unlucky
    split): a figure that reads as "the model is perfectly wrong". The AUC is undefined there,
    so this reports NaN (``null`` in ``summary.json``) and says which split it was.

    Args:
        split: the split's name for the warning (``"val"``, ``"test"``...).

    The check runs inside ``compute`` after torchmetrics has gathered the states over DDP
    ranks, so one rank holding one class does not trip it.
    """

    def __init__(self, split: str = "", **kwargs) -> None:
        kwargs.setdefault("thresholds", None)
        super().__init__(**kwargs)
        self.split = split

    def compute(self) -> torch.Tensor:
        # A list of batches on one process; one tensor once torchmetrics has gathered it over DDP ranks.
        target = self.target if isinstance(self.target, torch.Tensor) else (
            dim_zero_cat(self.target) if self.target else torch.empty(0))
        if target.numel() == 0 or bool(target.min() == target.max()):
            where = f"the {self.split} split" if self.split else "the data scored"
            holds = "no rows" if target.numel() == 0 else f"only {'clicks' if bool(target[0] == 1) else 'non-clicks'}"
            warnings.warn(f"AUC is undefined: {where} holds {holds}, so the AUC is reported as null (NaN). "
                          "Use a larger split or a file with both labels.", UndefinedAUCWarning, stacklevel=2)
            return torch.tensor(float("nan"))
        return super().compute()


class UndefinedAUCWarning(UserWarning):
    """The AUC of a split is undefined (one class, or no rows); it is reported as NaN / null."""
