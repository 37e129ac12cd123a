"""How the compression callback reads a batch, runs the model on it, and scores it.

The callback works on any LightningModule, so these defaults cover the common batch layouts;
pass your own ``forward_fn`` / ``label_fn`` to the callback for anything else.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from lightning_afm.data.schema import CATEGORICAL, LABEL, NUMERIC
from lightning_afm.models.metrics import BinaryAUC, BinaryLogLoss

ForwardFn = Callable[[nn.Module, Any], torch.Tensor]
LabelFn = Callable[[Any], torch.Tensor]


def default_forward(module: nn.Module, batch: Any) -> torch.Tensor:
    """Logits for a batch.

    * a dict with ``categorical`` (and ``numeric``): ``module(categorical, numeric)`` (our zoo);
    * any other dict: ``module(batch)``;
    * a tuple or list ``(x1, ..., xn, y)``: ``module(x1, ..., xn)`` (the label is last);
    * anything else: ``module(batch)``.
    """
    if isinstance(batch, dict):
        if CATEGORICAL in batch:
            return module(batch[CATEGORICAL], batch.get(NUMERIC))
        return module(batch)
    if isinstance(batch, (list, tuple)):
        return module(*batch[:-1])
    return module(batch)


def default_labels(batch: Any) -> torch.Tensor:
    """Labels of a batch: ``batch["label"]`` for dicts, the last item of a tuple or list."""
    if isinstance(batch, dict):
        if LABEL not in batch:
            raise KeyError(f"batch dict has no {LABEL!r} key (keys: {sorted(batch)}); pass label_fn to the callback")
        return batch[LABEL]
    if isinstance(batch, (list, tuple)):
        return batch[-1]
    raise TypeError(f"cannot find labels in a {type(batch).__name__} batch; pass label_fn to the callback")


@torch.no_grad()
def evaluate(
    module: nn.Module,
    batches: Iterable[Any],
    forward_fn: ForwardFn = default_forward,
    label_fn: LabelFn = default_labels,
    to_device: Callable[[Any], Any] = lambda b: b,
    keep_predictions: bool = False,
    split: str = "",
) -> dict[str, Any]:
    """AUC and logloss of ``module`` over ``batches`` in eval mode; the module's mode is restored.

    Returns ``{"auc": float, "logloss": float, "samples": int}`` (``nan`` for an empty loader, and
    an AUC of ``nan`` with a warning naming ``split`` when the rows hold one class);
    with ``keep_predictions`` also ``"logits"`` and ``"labels"`` (``[N]`` float32 on the CPU, in
    loader order; under DDP every rank's rows, rank by rank), for paired comparisons of two models
    on the same rows.
    """
    was_training = module.training
    module.eval()
    auroc = BinaryAUC(split, validate_args=False)
    logloss = BinaryLogLoss(from_logits=True)  # float64 sums, added over DDP ranks
    samples = 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for batch in batches:
            batch = to_device(batch)
            logits = forward_fn(module, batch).reshape(-1).float()
            labels = label_fn(batch).reshape(-1)
            auroc.update(torch.sigmoid(logits).cpu(), labels.long().cpu())
            logloss.update(logits.cpu(), labels.cpu())
            samples += labels.numel()
            if keep_predictions:
                kept.append((logits.cpu(), labels.float().cpu()))
    finally:
        module.train(was_training)
    if samples == 0:
        return {"auc": float("nan"), "logloss": float("nan"), "samples": 0}
    out: dict[str, Any] = {"auc": float(auroc.compute()), "logloss": float(logloss.compute()), "samples": samples}
    if keep_predictions:
        logits, labels = (torch.cat(parts) for parts in zip(*kept))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (logits, labels))
            logits, labels = torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])
        out["logits"], out["labels"] = logits, labels
    return out
