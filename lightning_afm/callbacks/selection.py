"""Keep the best point of a finetune, judged on the validation split.

A finetune of a compressed CTR model is a second (or third) pass over the same training rows,
and CTR models overfit from their second epoch on (the one-epoch phenomenon: Zhang et al.,
CIKM 2022). How much, and when, depends on the data: on one 200k-row file the paper's
finetune (lr 1e-3) lost 0.011 AUC against its baseline, on a 500k-row file it gained 0.017.
So a stage with ``select="best"`` scores the validation split a few times per finetune epoch
(``checks``) and keeps the best state it has seen, the swapped model before any finetuning
included: the finetune can then only help, as far as the validation split can tell. "Better"
means better on the monitored metric by more than the noise of the validation split (paired
standard errors) and no worse on the other metric (AUC and logloss): see :func:`compare`. With
``lr_backoff`` a check that is worse than the best also restores the best state and goes on at
a smaller learning rate, so the rest of the epoch is not wasted on a rate the data rejects.

:class:`BestState` is the bookkeeping (plain PyTorch): scores offered in order, the best one's
weights kept as a CPU copy, and the trail of every check for the stage's record.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

MONITORS = ("val_auc", "val_logloss")


def check_batches(num_batches: int, checks: int) -> list[int]:
    """The batch counts (1-based, strictly inside the epoch) after which to check, ``checks - 1`` of them
    spread evenly; the end of the epoch is the last check.

    Example:
        >>> check_batches(100, 4)
        [25, 50, 75]
        >>> check_batches(2, 4)   # fewer batches than checks: every batch but the last
        [1]
    """
    if num_batches <= 1 or checks <= 1:
        return []
    points = {round(num_batches * j / checks) for j in range(1, checks)}
    return sorted(p for p in points if 0 < p < num_batches)


def midranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` ``[N]`` with ties given their average rank (float64 ``[N]``)."""
    x = x.to(torch.float64)
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    n = x.numel()
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(sorted_x[1:] != sorted_x[:-1]).flatten() + 1])
    ends = torch.cat([starts[1:], torch.tensor([n])])
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave((starts + ends + 1).to(torch.float64) / 2.0, ends - starts)
    return ranks


def _placements(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeLong's structural components: for each positive the share of negatives it outscores
    (``[m]``), for each negative the share of positives that outscore it (``[n]``); ties count 1/2."""
    m, n = int(positive.sum()), int((~positive).sum())
    all_ranks = midranks(scores)
    v10 = (all_ranks[positive] - midranks(scores[positive])) / n
    v01 = 1.0 - (all_ranks[~positive] - midranks(scores[~positive])) / m
    return v10, v01


def paired_auc_difference(labels: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> tuple[float, float]:
    """``AUC(new) - AUC(old)`` on the same rows and its standard error (DeLong et al., 1988).

    ``labels`` ``[N]`` in {0, 1}; ``new``, ``old`` ``[N]`` scores (logits or probabilities).
    The two models' errors are correlated (same rows), so the error of the difference is far
    smaller than either AUC's own: that is what lets a small validation split tell a real gain
    from noise.
    """
    positive = labels > 0.5
    if positive.all() or not positive.any():
        return float("nan"), float("nan")
    a10, a01 = _placements(new, positive)
    b10, b01 = _placements(old, positive)
    d10, d01 = a10 - b10, a01 - b01
    var = d10.var(unbiased=True) / d10.numel() + d01.var(unbiased=True) / d01.numel()
    return float(d10.mean()), float(var.clamp(min=0).sqrt())


def paired_logloss_difference(labels: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> tuple[float, float]:
    """``logloss(new) - logloss(old)`` from logits ``[N]`` on the same rows, and its standard error."""
    y = labels.to(torch.float64)
    d = (torch.nn.functional.binary_cross_entropy_with_logits(new.to(torch.float64), y, reduction="none")
         - torch.nn.functional.binary_cross_entropy_with_logits(old.to(torch.float64), y, reduction="none"))
    se = d.std(unbiased=True) / math.sqrt(d.numel()) if d.numel() > 1 else torch.tensor(float("nan"))
    return float(d.mean()), float(se)


def compare(monitor: str, new: dict[str, Any], old: dict[str, Any] | None, significance: float = 1.0,
            tolerance: tuple[float, float] = (0.0, 0.0)) -> str:
    """``"better"``, ``"worse"`` or ``"tie"``: a check's validation scores against the best's.

    ``new`` / ``old``: ``{"val_auc", "val_logloss"}`` and, for the paired test, ``"logits"`` and
    ``"labels"`` (the same rows for both). With them, each difference is measured in standard
    errors of the paired difference (DeLong's for AUC, the per-row mean for logloss):

    * better: ``monitor`` better by more than ``significance`` standard errors, and the other
      metric no worse (point estimate);
    * worse: either metric worse by more than ``significance`` standard errors plus its
      ``tolerance`` (AUC, logloss; default none);
    * tie: neither (a change the validation split cannot tell from noise).

    Without predictions the point estimates decide (standard errors of 0). NaN never wins.
    Why both metrics: a finetune that overfits raises the logloss at once while the AUC drifts by
    noise; a state picked on a noisy AUC gain alone then loses on both metrics on the test split.

    Example:
        >>> compare("val_auc", {"val_auc": 0.712, "val_logloss": 0.473}, {"val_auc": 0.711, "val_logloss": 0.469})
        'worse'
        >>> compare("val_auc", {"val_auc": 0.712, "val_logloss": 0.468}, {"val_auc": 0.711, "val_logloss": 0.469})
        'better'
    """
    value = float(new.get(monitor, float("nan")))
    if math.isnan(value):
        return "worse"
    if old is None:
        return "better"
    d_auc, d_ll = float(new["val_auc"]) - float(old["val_auc"]), float(new["val_logloss"]) - float(old["val_logloss"])
    se_auc = se_ll = 0.0
    if "logits" in new and "logits" in old and new["logits"].shape == old["logits"].shape:
        d_auc, se_auc = paired_auc_difference(new["labels"], new["logits"], old["logits"])
        d_ll, se_ll = paired_logloss_difference(new["labels"], new["logits"], old["logits"])
        se_auc, se_ll = (0.0 if math.isnan(v) else v for v in (se_auc, se_ll))
    auc_up, auc_down = d_auc > significance * se_auc, d_auc < -(tolerance[0] + significance * se_auc)
    ll_down, ll_up = d_ll < -significance * se_ll, d_ll > tolerance[1] + significance * se_ll
    if auc_down or ll_up:
        return "worse"
    if monitor == "val_auc" and auc_up and d_ll <= 0:
        return "better"
    if monitor == "val_logloss" and ll_down and d_auc >= 0:
        return "better"
    return "tie"


class BestState:
    """The best model state seen so far in one stage, by a validation score.

    Args:
        monitor: ``"val_auc"`` (higher is better) or ``"val_logloss"`` (lower is better).

    Example:
        >>> model = nn.Linear(2, 1)
        >>> best = BestState("val_auc")
        >>> best.offer(model, {"val_auc": 0.70, "val_logloss": 0.5}, point=0.0, lr=1e-3)
        'better'
        >>> with torch.no_grad(): _ = model.weight.add_(1.0)
        >>> best.offer(model, {"val_auc": 0.69, "val_logloss": 0.6}, point=0.5, lr=1e-3)
        'worse'
        >>> best.restore(model); best.point
        0.0
    """

    def __init__(self, monitor: str = "val_auc", significance: float = 1.0) -> None:
        if monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
        self.monitor = monitor
        self.significance = float(significance)
        self.scores: dict[str, float] | None = None
        self.point: float | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.trail: list[dict[str, Any]] = []

    def offer(self, model: nn.Module, scores: dict[str, Any], point: float, lr: float | None) -> str:
        """Record a check at ``point`` (finetune epochs done, e.g. 0.25); keep ``model``'s state if it is better.

        ``scores``: ``{"val_auc", "val_logloss"}``, optionally ``"logits"`` / ``"labels"`` for the
        paired test of :func:`compare`. Returns the verdict against the best so far: ``"better"``
        (now the best), ``"tie"`` or ``"worse"``.
        """
        verdict = compare(self.monitor, scores, self.scores, self.significance)
        plain = {k: float(v) for k, v in sorted(scores.items()) if k.startswith("val_")}
        self.trail.append({"point": round(float(point), 4), "lr": lr, **plain, "verdict": verdict})
        if verdict == "better":
            self.scores = dict(scores)
            self.point = float(point)
            # A CPU copy: the best state must survive the optimizer's next in-place updates.
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return verdict

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to continue the selection after a resume: tensors and plain types only
        (a checkpoint holding it loads with ``torch.load(weights_only=True)``)."""
        scores = None if self.scores is None else {
            k: (v.detach().cpu() if isinstance(v, torch.Tensor) else float(v)) for k, v in self.scores.items()}
        return {"monitor": self.monitor, "significance": self.significance, "scores": scores,
                "point": self.point, "state": self.state, "trail": [dict(t) for t in self.trail]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BestState":
        best = cls(data["monitor"], data["significance"])
        best.scores = dict(data["scores"]) if data.get("scores") is not None else None
        best.point = data.get("point")
        best.state = dict(data["state"]) if data.get("state") is not None else None
        best.trail = [dict(t) for t in data.get("trail", [])]
        return best

    def restore(self, model: nn.Module) -> None:
        """Load the best state back into ``model`` (same structure: one stage never changes it)."""
        if self.state is None:
            raise RuntimeError("no state offered yet: call offer() before restore()")
        model.load_state_dict(self.state)
