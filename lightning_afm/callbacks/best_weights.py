"""Keep the weights of the best validation check, and put them back when training ends.

Lightning's ``EarlyStopping`` stops a fit ``patience`` checks after the best one, so the model it
leaves behind is the one of the last, worse, epoch. :class:`BestWeights` pairs with it: the model
that is saved (``last.ckpt``) and tested is the one the validation split chose.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch


class BestWeights(pl.Callback):
    """Snapshot the module's weights at each validation check that beats the best so far.

    Args:
        monitor: a logged validation metric (``val_auc``, ``val_logloss``).
        mode: ``"max"`` (AUC) or ``"min"`` (log loss).

    The snapshot lives on the CPU and is part of this callback's checkpoint state, so a fit
    resumed from ``checkpoints/last.ckpt`` still restores the best epoch's weights at its end.
    """

    def __init__(self, monitor: str = "val_auc", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None  # 1-based: the weights after this many epochs
        self.best_metrics: dict[str, float] = {}
        self.checks = 0
        self.restored = False
        self._weights: dict[str, torch.Tensor] | None = None

    def _better(self, value: float) -> bool:
        if self.best_score is None:
            return True
        return value > self.best_score if self.mode == "max" else value < self.best_score

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise RuntimeError(f"BestWeights: the validation step logged no {self.monitor!r} "
                               f"(logged: {sorted(trainer.callback_metrics)})")
        value = float(value.item() if hasattr(value, "item") else value)
        self.checks += 1
        if math.isnan(value) or not self._better(value):
            return
        self.best_score = value
        self.best_epoch = int(trainer.current_epoch) + 1
        self.best_metrics = {k: float(v.item() if hasattr(v, "item") else v)
                             for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        self._weights = {k: t.detach().to("cpu", copy=True) for k, t in pl_module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only when a later check was worse: otherwise the module already holds the best weights.
        if self._weights is None or self.best_epoch == int(trainer.current_epoch):
            return
        pl_module.load_state_dict(self._weights)
        self.restored = True

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, f"best_{self.monitor}": self.best_score,
                "best_weights_restored": self.restored}

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "checks": self.checks, "weights": self._weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
        self.best_epoch = state_dict["best_epoch"]
        self.best_metrics = dict(state_dict["best_metrics"])
        self.checks = int(state_dict["checks"])
        self._weights = state_dict["weights"]
