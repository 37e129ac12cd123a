"""Training throughput measured inside the fit, batch by batch."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch


def batch_size_of(batch: Any) -> int:
    """Rows in a batch: a dict of tensors (our DataModules), a tensor, or a tuple/list whose first item is one."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")


class TrainingThroughput(pl.Callback):
    """Samples per second of the training steps (forward, backward, optimizer), data loading excluded.

    The clock runs from ``on_train_batch_start`` to ``on_train_batch_end``, so the figure is the
    model's speed, comparable across data sources. ``samples_per_s`` is over the whole fit.
    """

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        self.seconds += time.perf_counter() - self._start
        self.samples += batch_size_of(batch)
        self._start = None

    def on_train_end(self, trainer, pl_module) -> None:
        # Under DDP every rank counted its own shard: the job's throughput is all ranks' samples
        # over the (mean) time each spent stepping.
        if trainer.world_size > 1:
            totals = trainer.strategy.reduce(torch.tensor([float(self.samples), self.seconds]), reduce_op="sum")
            self.samples = int(totals[0].item())
            self.seconds = float(totals[1].item()) / trainer.world_size

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.seconds if self.seconds > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples = int(state_dict.get("samples", 0))
        self.seconds = float(state_dict.get("seconds", 0.0))
