"""``AFMCompressionCallback``: the paper's pipeline inside one ``trainer.fit``.

Schedule (epochs are the trainer's)::

    [baseline_epochs] -> stage 1: statistics, swap, finetune [epochs] -> stage 2: ... -> end

A stage starts at the start of its first finetune epoch (after the previous epoch's validation
and checkpoints), or at fit start when it begins at epoch 0 (``baseline_epochs=0``: compress an
already trained model); stages with no finetune epochs at the very end of the schedule swap at
the end of its last epoch. A checkpoint written at the end of epoch N therefore holds the
model that epoch N validated. Starting a stage means: a statistics pass over the training data (eval mode, no gradients,
progress bar), the module swap, the stage's dropout, a fresh optimizer with the stage's
settings, the stage's batch size, and an evaluation of the swapped model ("pre-train" in the
paper's tables). When its finetune epochs end the stage is evaluated again ("fine-tune").

The compression plan as of the moment of saving travels in every checkpoint
(``checkpoint["afm_compression_plan"]``, empty before the first swap). Whenever Lightning loads
a checkpoint into the module during a trainer call with this callback (resume, or
``trainer.test(ckpt_path="best")`` from an earlier stage), the module first gets exactly that
structure; our models do the same in ``load_from_checkpoint``. The callback logs ``stage``
(stages done: 0 for the baseline) each epoch for ``ModelCheckpoint(filename=...)``.

Stop requests (``EarlyStopping``, ``trainer.should_stop``) are held off until the schedule has
ended: a stop inside it would leave a stage swapped and never finetuned. At the end of the
schedule every ``EarlyStopping`` starts afresh on the compressed model, and a warning lists
the epochs whose stop was held.

Wall times (the paper's Table 16, line 1140-1146 and 1182), in seconds, ``time.perf_counter()``
after a device synchronisation where the model is on a GPU (so queued kernels count where they
ran). Under DDP each rank measures its own and every record carries rank 0's (broadcast).

* training time of an epoch: from the end of this callback's ``on_train_epoch_start`` (after a
  stage started there) to the start of its ``on_train_epoch_end``, less Lightning's validation
  loop inside it and this callback's own ``select="best"`` checks: forward, backward and
  optimizer steps, data loading, logging and the other callbacks' per-batch work;
* baseline: ``epoch_s`` (the baseline epochs' training time, together; ``None`` when
  ``baseline_epochs=0``) and ``eval_s`` (its scoring of ``eval_splits`` before the first stage);
* per stage: ``statistics_s`` (AFM's pass over the training data; 0 for other methods),
  ``rank_search_s`` (``grow_rank``'s validation passes; ``None`` without a search), ``swap_s``
  (factorisation, module surgery and folding, the DDP re-wrap and the fresh optimizer),
  ``finetune_s`` (the training time of the stage's finetune epochs; 0 for a stage without any,
  ``None`` until they end) and ``eval_s`` (every evaluation of the stage: before and after the
  finetune, and the ``select="best"`` checks).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_afm import compress
from lightning_afm.compress.budget import Allocation, Budget
from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY, restore_compressed_structure
from lightning_afm.compress.contract import mlp_reads_codes
from lightning_afm.compress.registry import factored_types
from lightning_afm.callbacks import lightning_compat
from lightning_afm.callbacks.evaluation import ForwardFn, LabelFn, default_forward, default_labels, evaluate
from lightning_afm.callbacks.selection import BestState, check_batches, compare
from lightning_afm.callbacks.budgeting import (BudgetPrices, PlannedStage, allocate_for_budget, allocate_for_latency,
                                               candidate_allocations, check_budget, check_latency, latency_times,
                                               price_stages, select_allocation, smallest_ranks)
from lightning_afm.callbacks.latency import candidate_model, inference_latency_ms, planned_structure
from lightning_afm.compress.timing import ProductTimer
from lightning_afm.callbacks.stages import CompressionStage, EmbeddingStage, leaves_projections

log = logging.getLogger(__name__)

PLAN_KEY = PLAN_CHECKPOINT_KEY
#: The splits a stage may be scored on (``eval_splits``).
EVAL_SPLITS = ("train", "val", "test")
#: The wall-time keys of every stage record (seconds; see the module docstring).
STAGE_TIME_KEYS = ("statistics_s", "rank_search_s", "swap_s", "finetune_s", "eval_s")


class AFMCompressionCallback(pl.Callback):
    """Compress a model during ``trainer.fit`` with AFM (or SVD), stage by stage.

    Args:
        stages: the stages in order, e.g. ``[MLPStage(rank=64), EmbeddingStage(rank=2)]``.
        baseline_epochs: epochs of plain training before the first stage; ``0`` compresses the
            model as it comes (an already trained one) at the start of the fit.
        eval_splits: which of ``"train"``, ``"val"`` and ``"test"`` to score before and after each
            finetune (from the datamodule, or the trainer's validation dataloaders). ``"train"`` scores
            the training rows in eval mode (the paper reports train and test figures, Table 15,
            line 1100-1106): the datamodule's ``statistics_dataloader()`` (every training row once,
            in order) where it has one, else the fit's training loader (the statistics pass reads
            the same).
        train_eval_rows: score at most this many training rows for ``"train"`` (the first whole
            batches reaching it; under DDP ``ceil(train_eval_rows / world size)`` per rank); ``None``
            scores them all. A pass over Criteo's 41M training rows costs about as much as a
            statistics pass, twice per stage; a few million rows give the AUC to the fourth decimal.
        statistics_batch_size: batch size of the statistics pass (default: the datamodule's).
        forward_fn: ``forward_fn(module, batch) -> logits``; default :func:`default_forward`.
        label_fn: ``label_fn(batch) -> labels``; default :func:`default_labels`.
        budget: what the ``rank="auto"`` stages must fit in (:class:`~lightning_afm.compress.budget.Budget`,
            or a mapping of its settings: ``{"ratio": 5}``): their ranks, per MLP layer and per field,
            are chosen together at the first auto stage (:mod:`.budgeting`). Needed by, and only
            allowed with, a stage of ``rank="auto"``.

    Example::

        trainer = Trainer(max_epochs=3, callbacks=[AFMCompressionCallback(
            [MLPStage(rank=64, lr=1e-3, weight_decay=1e-3), EmbeddingStage(rank=2)])])
        trainer.fit(model, datamodule=dm)
        callback.history  # one record per stage: params, AUC/logloss before and after finetuning

    The records are in ``history``; the model before the first stage in ``baseline``. Every record
    has the same keys (``None`` where not measured; ``finished`` says whether its finetune ended).

    Errors come before any module changes, at fit start: every stage's settings, targets (exist,
    right type, no module in two stages), ranks, folding, and an empty training set.

    Logged through the trainer's loggers: ``compression/{val,test}_{auc,logloss}``,
    ``compression/params``, ``compression/stage``, ``compression/phase`` at step 0 (baseline),
    ``2 i - 1`` (stage ``i`` right after its swap) and ``2 i`` (after its finetune);
    ``compression/check_val_*`` for ``select="best"`` checks at the global step; and ``stage``
    each epoch (``pl_module.log``), for checkpoint names such as
    ``ModelCheckpoint(filename="{epoch}-{stage:.0f}-{val_auc:.4f}")``.
    """

    def __init__(
        self,
        stages: Sequence[CompressionStage],
        baseline_epochs: int = 1,
        eval_splits: Sequence[str] = ("val", "test"),
        train_eval_rows: int | None = None,
        statistics_batch_size: int | None = None,
        forward_fn: ForwardFn | None = None,
        label_fn: LabelFn | None = None,
        progress: bool = True,
        budget: Budget | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        lightning_compat.check_lightning_version()  # the callback reads Lightning internals
        self.stages = list(stages)
        if not self.stages:
            raise ValueError("AFMCompressionCallback needs at least one stage, e.g. [MLPStage(rank=64)]")
        for stage in self.stages:
            if not isinstance(stage, CompressionStage):
                raise TypeError(f"stages must be MLPStage or EmbeddingStage objects, got {type(stage).__name__}")
        if not isinstance(baseline_epochs, int) or baseline_epochs < 0:
            raise ValueError(f"baseline_epochs must be an integer >= 0, got {baseline_epochs!r}")
        if isinstance(eval_splits, str):
            eval_splits = [eval_splits]
        bad = [s for s in eval_splits if s not in EVAL_SPLITS]
        if bad:
            raise ValueError(f"eval_splits may hold {', '.join(repr(s) for s in EVAL_SPLITS)} only, got {bad}")
        if train_eval_rows is not None and (isinstance(train_eval_rows, bool) or not isinstance(train_eval_rows, int)
                                            or train_eval_rows < 1):
            raise ValueError(f"train_eval_rows must be a positive integer (rows) or None (every training row), "
                             f"got {train_eval_rows!r}")
        self.baseline_epochs = baseline_epochs
        self.eval_splits = tuple(dict.fromkeys(eval_splits))
        self.train_eval_rows = train_eval_rows
        self.statistics_batch_size = statistics_batch_size
        self.forward_fn = forward_fn or default_forward
        self.label_fn = label_fn or default_labels
        self.progress = progress
        self.budget = Budget.from_value(budget)
        auto = [s.name for s in self.stages if s.auto_rank]
        if self.budget is not None and not auto:
            raise ValueError(f"a budget ({self.budget.describe()}) chooses the ranks of stages with rank='auto', but "
                             f"every stage has a fixed rank ({[(s.name, s.rank) for s in self.stages]}); set "
                             "rank='auto' on the stages it should size, or drop the budget")
        if auto and self.budget is None:
            raise ValueError(f"stages {auto} have rank='auto', which needs a budget to choose the ranks for: "
                             "AFMCompressionCallback(..., budget=Budget(ratio=5.0)) (or params=, bytes=, "
                             "kept_variance=); Hydra: compression.budget.ratio=5")
        #: The auto ranks (``compress.budget.Allocation.to_dict()``), chosen at the first auto stage.
        self.allocation: dict[str, Any] | None = None
        # A latency budget's measured latency of the smallest structure, once per fit.
        self._smallest_latency_ms: float | None = None

        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, Any] | None = None
        self.plan = compress.CompressionPlan()
        self.stages_started = 0
        self.stages_finished = 0
        # The running stage's best state (select="best"; in checkpoints, so that a fit resumed
        # inside the stage selects as the uninterrupted fit would) and the tables it froze (frozen
        # again on resume from the stage's settings).
        self._best: BestState | None = None
        self._frozen: list[nn.Parameter] = []
        # The trainer's own min_epochs while the callback holds stop requests off (a 1-tuple, as
        # None is a value), and the epochs after which a stop was asked for and held.
        self._user_min_epochs: tuple[int | None] | None = None
        self._fitting = True
        self._held_stops: list[int] = []
        # Wall times (see the module docstring): training seconds per finished epoch (in checkpoints,
        # so a resumed fit still knows its baseline's), the running epoch's clock, the seconds inside
        # it that are not training (validation, our checks), and the start of a validation.
        self._epoch_s: dict[int, float] = {}
        self._epoch_clock: float | None = None
        self._not_training_s = 0.0
        self._validation_clock: float | None = None

    # -- schedule ------------------------------------------------------------------------
    def start_epoch(self, index: int) -> int:
        """The first finetune epoch of stage ``index``."""
        return self.baseline_epochs + sum(s.epochs for s in self.stages[:index])

    @property
    def total_epochs(self) -> int:
        return self.start_epoch(len(self.stages))

    @property
    def schedule_done(self) -> bool:
        return self.stages_finished == len(self.stages)

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning also hands callbacks their state from a checkpoint loaded by validate/test/
        # predict; only a fit (resuming) takes it, so the fit's records outlive a test of "best".
        self._fitting = stage == "fit"
        self._smallest_latency_ms = None
        # Any checkpoint Lightning loads into this module (resume, trainer.test(ckpt_path="best"), ...)
        # must first get the structure of its own plan: see _install_structure_restore.
        self._install_structure_restore(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_structure_restore(pl_module)
        self._release_min_epochs(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every check before any module changes: a bad setting fails here, not after an epoch.
        self._check_strategy(trainer, pl_module)
        self._check_schedule(trainer)
        self._check_training_data(trainer)
        self._check_stages(trainer, pl_module)
        self._hold_early_stopping(trainer)
        if self.stages_started > self.stages_finished:
            # Resumed inside a finetune: put back what the checkpoint does not hold.
            self._apply_training_settings(trainer, pl_module, self.stages[self.stages_started - 1])
        self._start_due(trainer, pl_module, epoch=trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_held_stop(trainer, epoch=trainer.current_epoch - 1)
        # Stages start here, after the previous epoch's checkpoints were written: a checkpoint of
        # epoch N holds the model that epoch N validated.
        self._start_due(trainer, pl_module, epoch=trainer.current_epoch)
        # The epoch's training clock starts after the stage's own work (statistics, swap, evaluations).
        self._epoch_clock = self._now(pl_module)
        self._not_training_s = 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_clock is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._validation_clock = self._now(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates inside the training epoch (before on_train_epoch_end): not training time.
        if self._validation_clock is not None:
            self._not_training_s += self._now(pl_module) - self._validation_clock
            self._validation_clock = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_clock is not None:
            # First, before a stage finishes here (its finetune_s adds up its epochs).
            seconds = self._now(pl_module) - self._epoch_clock - self._not_training_s
            self._epoch_s[trainer.current_epoch] = self._rank_zero(trainer, max(seconds, 0.0))
            self._epoch_clock = None
        next_epoch = trainer.current_epoch + 1
        self._finish_due(trainer, pl_module, next_epoch)
        if self.stages_started == self.stages_finished and self._stages_due(next_epoch) == self._trailing_stages():
            # Stages with no finetune at the very end of the schedule: swap now, so that the
            # checkpoints of this epoch (and last.ckpt) hold the final model.
            self._start_due(trainer, pl_module, epoch=next_epoch)
        self._prepare_batch_size(trainer, next_epoch)
        if self.schedule_done and next_epoch == self.total_epochs:
            self._release_early_stopping(trainer)
        self._log_stage(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._log_stage(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.schedule_done:
            open_stage = self.stages_started > self.stages_finished
            rank_zero_warn(
                f"AFMCompressionCallback: the fit ended at epoch {trainer.current_epoch} (global step "
                f"{trainer.global_step}) before the compression schedule did ({self.total_epochs} epochs): "
                f"{self.stages_finished} of {len(self.stages)} stages finished"
                + (f"; stage {self.stages[self.stages_started - 1].name!r} is swapped but its finetune was cut "
                   "short, so its history record has no after-finetune scores" if open_stage else "")
                + ". Resume with trainer.fit(..., ckpt_path=...) or raise max_steps / max_time.")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._best is None or self.stages_started == self.stages_finished:
            return
        index = self.stages_started - 1
        stage = self.stages[index]
        batches = trainer.num_training_batches
        if isinstance(batches, int) and batch_idx + 1 in check_batches(batches, stage.checks):
            point = trainer.current_epoch - self.start_epoch(index) + (batch_idx + 1) / batches
            started = self._now(pl_module)
            self._check(trainer, pl_module, stage, point)
            seconds = self._now(pl_module) - started
            self._not_training_s += seconds  # an evaluation of the stage, not its training
            self._add_time(self.history[index], "eval_s", seconds)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Always, an empty plan included: a checkpoint written before the first swap must make a
        # compressed model plain again when it loads (restore_compressed_structure).
        checkpoint[PLAN_KEY] = self.plan.to_dict()

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "baseline": self.baseline,
            "plan": self.plan.to_dict(),
            "stages_started": self.stages_started,
            "stages_finished": self.stages_finished,
            "held_stops": list(self._held_stops),
            "best": self._best.to_dict() if self._best is not None else None,
            "epoch_s": [[epoch, seconds] for epoch, seconds in sorted(self._epoch_s.items())],
            "allocation": self.allocation,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._fitting:
            return
        self.history = list(state_dict.get("history", []))
        self.baseline = state_dict.get("baseline")
        plan = state_dict.get("plan")
        self.plan = compress.CompressionPlan.from_dict(plan) if plan else compress.CompressionPlan()
        self.stages_started = int(state_dict.get("stages_started", 0))
        self.stages_finished = int(state_dict.get("stages_finished", 0))
        self._held_stops = [int(e) for e in state_dict.get("held_stops", [])]
        best = state_dict.get("best")
        self._best = BestState.from_dict(best) if best else None
        self._epoch_s = {int(epoch): float(seconds) for epoch, seconds in state_dict.get("epoch_s", [])}
        self.allocation = state_dict.get("allocation")

    def summary(self) -> dict[str, Any]:
        """Entries for the run's ``summary.json``: the baseline figures and one record per stage."""
        out: dict[str, Any] = {"stages": [dict(r) for r in self.history]}
        if self.allocation is not None:
            out["budget"] = dict(self.allocation)
        for key, value in (self.baseline or {}).items():
            if key.startswith(tuple(f"{split}_" for split in EVAL_SPLITS)):
                out[f"baseline_{key}"] = value
        if self.baseline:
            out["baseline_params"] = self.baseline.get("params")
            # Table 16's "Original Model" line: the baseline epochs' training time, and its scoring.
            out["baseline_epoch_s"] = self.baseline.get("epoch_s")
            out["baseline_eval_s"] = self.baseline.get("eval_s")
        return out

    # -- checkpoints of earlier stages -------------------------------------------------------
    def _install_structure_restore(self, pl_module: pl.LightningModule) -> None:
        """Make ``pl_module.on_load_checkpoint`` rebuild the checkpoint's structure before anything else.

        Lightning loads a checkpoint's weights right after the module's ``on_load_checkpoint``; no
        callback hook comes earlier with the loaded dict (``Trainer.ckpt_path`` is only set after
        ``setup``). So the callback wraps the module's hook for the duration of the trainer call:
        the structure comes from the dict Lightning itself loaded, with the user's
        ``weights_only`` (the callback never reads the file).
        """
        if getattr(pl_module.on_load_checkpoint, "_afm_structure_restore", False):
            return
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            if self._fitting and self._is_plain_model_checkpoint(checkpoint):
                self._keep_only_weights(checkpoint)
            restore_compressed_structure(pl_module, checkpoint)
            original(checkpoint)

        on_load_checkpoint._afm_structure_restore = True  # type: ignore[attr-defined]
        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    def _is_plain_model_checkpoint(self, checkpoint: dict[str, Any]) -> bool:
        """A checkpoint of a fit without this callback and without a compression plan: a trained baseline."""
        plan = checkpoint.get(PLAN_KEY) or {}
        return self.state_key not in (checkpoint.get("callbacks") or {}) and not plan.get("entries")

    @staticmethod
    def _keep_only_weights(checkpoint: dict[str, Any]) -> None:
        """``trainer.fit(model, ckpt_path=baseline.ckpt)``: compress the trained baseline, from epoch 0.

        The file comes from a fit without compression, so its optimizer state, epoch counters and
        callback states belong to another schedule (and the optimizer's groups no longer match the
        swapped modules). Lightning loads the weights; the rest is dropped here, from the dict it
        goes on to restore the training state from, so the schedule starts at epoch 0 as with
        ``trainer.fit(DeepFM.load_from_checkpoint(path))``.
        """
        log.info("compressing the trained model of the checkpoint: its weights are the starting point; its "
                 "optimizer state, epoch counters and callback states are not used")
        checkpoint.pop("loops", None)
        checkpoint.pop("callbacks", None)
        checkpoint["optimizer_states"] = []
        checkpoint["lr_schedulers"] = []

    @staticmethod
    def _remove_structure_restore(pl_module: pl.LightningModule) -> None:
        if getattr(pl_module.__dict__.get("on_load_checkpoint"), "_afm_structure_restore", False):
            del pl_module.on_load_checkpoint

    def _log_stage(self, pl_module: pl.LightningModule) -> None:
        """``stage``: how many stages the model has gone through (0: baseline), for checkpoint names.

        ``ModelCheckpoint(filename="{epoch}-{stage:.0f}-{val_auc:.4f}")`` then says which structure a
        file holds. Logged at validation end and at train epoch end, so both ModelCheckpoint save
        points (``save_on_train_epoch_end`` or not) see the value of the model they save.
        """
        pl_module.log("stage", float(self.stages_started), on_step=False, on_epoch=True, sync_dist=True)

    # -- EarlyStopping and other stop requests -----------------------------------------------
    def _hold_early_stopping(self, trainer: pl.Trainer) -> None:
        """Keep the fit going until the schedule has ended, whatever asks it to stop.

        A stop inside the schedule would leave a stage swapped and never finetuned. Lightning's own
        ``min_epochs`` gate holds ``trainer.should_stop`` (EarlyStopping's or any other) off, also
        when it is set by a validation inside an epoch; the user's value comes back in
        :meth:`_release_early_stopping` / ``teardown``.
        """
        if trainer.current_epoch >= self.total_epochs or self._user_min_epochs is not None:
            return
        loop = trainer.fit_loop
        self._user_min_epochs = (loop.min_epochs,)
        loop.min_epochs = max(loop.min_epochs or 0, self.total_epochs)

    def _release_min_epochs(self, trainer: pl.Trainer) -> None:
        if self._user_min_epochs is not None:
            trainer.fit_loop.min_epochs = self._user_min_epochs[0]
            self._user_min_epochs = None

    def _note_held_stop(self, trainer: pl.Trainer, epoch: int) -> None:
        """A stop asked for during the schedule: remember the epoch and take the request back."""
        if trainer.should_stop and not self.schedule_done and self._user_min_epochs is not None:
            if epoch not in self._held_stops:
                self._held_stops.append(epoch)
            trainer.should_stop = False

    def _release_early_stopping(self, trainer: pl.Trainer) -> None:
        """The schedule has ended: stop requests act again, and EarlyStopping starts afresh.

        Afresh, because the model it watched (the baseline, then each stage) is gone: measured
        against the uncompressed baseline's best score, the compressed model would be stopped at
        once, and the patience spent during the schedule was spent on other models.
        """
        self._note_held_stop(trainer, epoch=trainer.current_epoch)
        self._release_min_epochs(trainer)
        stoppers = [cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
        for stopper in stoppers:
            stopper.wait_count = 0
            stopper.stopped_epoch = 0
            stopper.best_score = torch.tensor(math.inf if stopper.monitor_op == torch.lt else -math.inf)
        if self._held_stops:
            rank_zero_warn(
                f"AFMCompressionCallback held off a request to stop the fit (EarlyStopping or trainer.should_stop) "
                f"after epoch(s) {self._held_stops}, inside the compression schedule (epochs 0-{self.total_epochs - 1}); "
                "every stage was swapped and finetuned. From here on stop requests act"
                + (", and EarlyStopping starts afresh on the compressed model." if stoppers else "."))
            self._held_stops = []

    # -- the pipeline ----------------------------------------------------------------------
    def _stages_due(self, epoch: int) -> list[int]:
        """Indices of the stages not started yet whose first finetune epoch is ``epoch`` or earlier."""
        return [i for i in range(self.stages_started, len(self.stages)) if self.start_epoch(i) <= epoch]

    def _trailing_stages(self) -> list[int]:
        """The stages without finetune epochs at the very end of the schedule."""
        return [i for i in range(len(self.stages)) if self.start_epoch(i) == self.total_epochs
                and self.stages[i].epochs == 0 and self.total_epochs > 0]

    def _start_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Start the stages due by ``epoch`` (a stage without finetune epochs also ends at once).

        "Due by" rather than "due at": a fit resumed from a checkpoint written before the epoch
        that should have started a stage catches up at fit start.
        """
        for index in self._stages_due(epoch):
            if self.stages_started > self.stages_finished:
                break  # the running stage has finetune epochs left
            self._start_stage(trainer, pl_module, index)
            if self.stages[index].epochs == 0:
                self._finish_stage(trainer, pl_module, index)

    def _finish_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule, next_epoch: int) -> None:
        """End the running stage if its last finetune epoch ends before ``next_epoch``, else check it."""
        if self.stages_started == self.stages_finished:
            return
        index = self.stages_started - 1
        if next_epoch >= self.start_epoch(index + 1):
            self._finish_stage(trainer, pl_module, index)
        elif self._best is not None:
            started = self._now(pl_module)
            self._check(trainer, pl_module, self.stages[index], float(next_epoch - self.start_epoch(index)))
            self._add_time(self.history[index], "eval_s", self._now(pl_module) - started)

    def _prepare_batch_size(self, trainer: pl.Trainer, next_epoch: int) -> None:
        """A stage starting at ``next_epoch`` with its own ``batch_size``: set it now, so the fit loop
        builds the next epoch's dataloader with it (it does so before ``on_train_epoch_start``)."""
        due = [i for i in self._stages_due(next_epoch) if self.stages[i].batch_size is not None]
        dm = trainer.datamodule
        if due and dm is not None and self.stages_started == self.stages_finished:
            dm.batch_size = int(self.stages[due[-1]].batch_size)
            lightning_compat.reset_train_dataloader(trainer)

    def _start_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        stage = self.stages[index]
        self._check_finite_weights(pl_module, stage)
        if self.baseline is None:
            started = self._now(pl_module)
            scores = self._score(trainer, pl_module)
            self.baseline = {"params": compress.parameter_count(pl_module), **scores,
                             "epoch_s": self._epochs_seconds(range(self.baseline_epochs)),
                             "eval_s": self._now(pl_module) - started}
            self.baseline.update(self._rank_zero(trainer, {k: self.baseline[k] for k in ("epoch_s", "eval_s")}))
            self._log_point(trainer, stage_number=0, phase=0, params=self.baseline["params"], scores=self.baseline)
        record = self._new_record(pl_module, stage, index)
        names = self._targets(pl_module, stage)
        self._check_ranks(pl_module, stage, names)
        fold = isinstance(stage, EmbeddingStage) and self._should_fold(pl_module, stage, names)

        statistics = {}
        started = self._now(pl_module)
        if stage.auto_rank and self.allocation is None:
            statistics = self._allocate(trainer, pl_module, index)
            record["budget"] = dict(self.allocation)
        elif stage.method == "afm":
            log.info("AFM stage %r: statistics pass over the training data for %s", stage.name, names)
            statistics = self._collect_statistics(trainer, pl_module, stage, names)
        record["statistics_s"] = self._now(pl_module) - started
        rank: int | dict[str, int] = stage.rank
        if stage.auto_rank:
            # targets whose every rank up to the break-even was worth less than the dense module stay as they are
            record["dense"] = [name for name in names if name in self.allocation.get("dense", ())]
            names = [name for name in names if name not in record["dense"]]
            rank = {name: int(self.allocation["ranks"][name]) for name in names}
            record["ranks"] = dict(rank)  # "rank" stays "auto"; the chosen rank of each layer / field
        if isinstance(stage, EmbeddingStage) and stage.grow_rank and statistics:
            started = self._now(pl_module)
            rank, record["rank_search"] = self._grow_rank(trainer, pl_module, stage, statistics)
            record["rank"] = rank
            record["rank_search_s"] = self._now(pl_module) - started
        started = self._now(pl_module)
        # All or nothing: every replacement is built and checked before the first swap; the plan
        # grows with each structural change, so a checkpoint always matches its plan.
        with self._stage_errors(stage):
            names = self._stage_targets(pl_module, stage, names, rank)
            entries = compress.compress_targets(pl_module, names, statistics or None, rank=rank,
                                                method=stage.method, **stage.build_options()) if names else []
            self.plan.extend(entries)
            if fold:
                self.plan.append(compress.fold_into_first_linear(pl_module))
        kept = {entry.name: entry.flags.get("kept_variance") for entry in entries}
        kept.update(dict.fromkeys(record["dense"] or (), 1.0))  # left dense: all of it
        layers = {name: self._spectrum(stats, kept[name]) for name, stats in statistics.items()}
        self.stages_started = index + 1

        self._rewrap_for_ddp(trainer, pl_module)
        self._apply_training_settings(trainer, pl_module, stage, new_optimizer=True)
        record["swap_s"] = self._now(pl_module) - started
        record["params"] = compress.parameter_count(pl_module)
        record["stored_values"] = compress.stored_values(pl_module)  # PQ's codes too (Table 17 counts them)
        if self.budget is not None and self.budget.timed and index == len(self.stages) - 1:
            self._measure_latency(trainer, pl_module, record)
        record["layers"] = layers
        started = self._now(pl_module)
        # select="best" scores the validation split with its predictions anyway: one pass serves both.
        val_check = self._val_check(trainer, pl_module) if stage.select == "best" else None
        pre = self._score(trainer, pl_module, [s for s in self.eval_splits if val_check is None or s != "val"])
        if val_check is not None and "val" in self.eval_splits:
            pre = {"val_auc": val_check["val_auc"], "val_logloss": val_check["val_logloss"], **pre}
        for split, scores in pre.items():
            record[f"pre_finetune_{split}"] = scores
        if val_check is not None:
            self._best = BestState(stage.monitor, stage.significance)
            self._best.offer(pl_module, val_check, point=0.0, lr=self._current_lr(trainer))
        record["eval_s"] = self._now(pl_module) - started
        record.update(self._rank_zero(trainer, {k: record[k] for k in STAGE_TIME_KEYS}))
        self.history.append(record)
        self._log_point(trainer, stage_number=index + 1, phase=1, params=record["params"], scores=pre)
        log.info("AFM stage %r: %s -> %s parameters", stage.name, f"{record['params_before']:,}", f"{record['params']:,}")

    def _new_record(self, pl_module: nn.Module, stage: CompressionStage, index: int) -> dict[str, Any]:
        """A history record with every key there is (None until measured), so records read alike
        whether or not their stage finished, selected, or searched a rank."""
        scores = [f"{split}_{metric}" for split in self.eval_splits for metric in ("auc", "logloss")]
        record: dict[str, Any] = {
            "name": stage.name, "kind": stage.kind, "method": stage.method, "rank": stage.rank,
            "start_epoch": self.start_epoch(index), "epochs": stage.epochs,
            "params_before": compress.parameter_count(pl_module), "params": None, "stored_values": None,
            "layers": None, "rank_search": None, "selected_point": None, "checks": None, "finished": False,
            "budget": None, "ranks": None, "dense": None, "latency_ms": None,
        }
        record.update(dict.fromkeys(STAGE_TIME_KEYS))
        record.update(dict.fromkeys(f"pre_finetune_{k}" for k in scores))
        record.update(dict.fromkeys(scores))
        return record

    def _finish_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        record = self.history[index]
        stage = self.stages[index]
        start = self.start_epoch(index)
        record["finetune_s"] = self._epochs_seconds(range(start, start + stage.epochs)) if stage.epochs else 0.0
        started = self._now(pl_module)
        if self._best is not None:
            if self._check(trainer, pl_module, stage, float(stage.epochs), backoff=False) != "better":
                self._best.restore(pl_module)
            record["selected_point"] = self._best.point
            record["checks"] = self._best.trail
            self._best = None
        self._unfreeze()
        scores = self._score(trainer, pl_module)
        record.update(scores)
        self._add_time(record, "eval_s", self._now(pl_module) - started)
        record.update(self._rank_zero(trainer, {k: record[k] for k in STAGE_TIME_KEYS}))
        record["finished"] = True
        self.stages_finished = index + 1
        self._log_point(trainer, stage_number=index + 1, phase=2, params=record["params"], scores=scores)

    # -- best-state selection --------------------------------------------------------------
    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: CompressionStage, point: float,
               backoff: bool = True) -> str:
        """Score the validation split at ``point`` (finetune epochs done) and offer the state as the best.

        A check worse than the best, with ``lr_backoff``, puts the best state back and goes on with a
        fresh optimizer at the smaller rate (Adam's moments belong to the abandoned trajectory).
        Returns the verdict of :func:`~lightning_afm.callbacks.selection.compare`.
        """
        assert self._best is not None
        lr = self._current_lr(trainer)
        verdict = self._best.offer(pl_module, self._val_check(trainer, pl_module), point=point, lr=lr)
        self._log_check(trainer, self._best.trail[-1])
        if verdict == "worse" and backoff and stage.lr_backoff is not None and lr is not None:
            self._best.restore(pl_module)
            self._build_optimizer(trainer, pl_module, stage, lr=lr * float(stage.lr_backoff))
            log.info("AFM stage %r: validation fell below its best at %.2f epochs; back to the best state "
                     "(%.2f epochs), lr %.3g -> %.3g", stage.name, point, self._best.point, lr,
                     lr * float(stage.lr_backoff))
        return verdict

    def _val_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Validation AUC and logloss with the per-row logits and labels the paired test needs."""
        scores = evaluate(pl_module, self._eval_loader(trainer, "val"), self.forward_fn, self.label_fn,
                          to_device=lambda b: self._to_device(trainer, b), keep_predictions=True, split="val")
        return {"val_auc": scores["auc"], "val_logloss": scores["logloss"],
                **{k: scores[k] for k in ("logits", "labels") if k in scores}}

    def _grow_rank(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: EmbeddingStage,
                   statistics: dict[str, compress.OutputStatistics]) -> tuple[int, list[dict[str, Any]]]:
        """The smallest of ``rank, 2 rank, 4 rank, ...`` (below the tables' width) whose AFM swap loses
        no more than the stage's tolerances against the model as it is, on the validation split.

        AFM's swapped tables give exactly ``mu + U_k U_k^T (e - mu)`` for every looked-up row (folded
        or not), so each candidate is scored with forward hooks that project the tables' outputs,
        without building it. "No more": not worse than ``grow_auc_tolerance`` / ``grow_logloss_tolerance``
        plus ``significance`` paired standard errors (:func:`~lightning_afm.callbacks.selection.compare`).
        None passing: the largest candidate.
        """
        width = min(pl_module.get_submodule(name).embedding_dim for name in statistics)
        candidates = [stage.rank]
        while candidates[-1] * 2 < width:
            candidates.append(candidates[-1] * 2)
        reference = self._val_check(trainer, pl_module)
        trail: list[dict[str, Any]] = []
        for rank in candidates:
            handles = []
            for name, stats in statistics.items():
                module = pl_module.get_submodule(name)
                u = compress.principal_components(stats.cov, rank)[1]
                projector = (u @ u.T).to(module.weight)
                mean = stats.mean.to(module.weight)
                handles.append(module.register_forward_hook(
                    lambda _m, _i, out, p=projector, mu=mean: (out - mu) @ p + mu))
            try:
                scores = self._val_check(trainer, pl_module)
            finally:
                for handle in handles:
                    handle.remove()
            verdict = compare(stage.monitor, scores, reference, stage.significance,
                              tolerance=(stage.grow_auc_tolerance, stage.grow_logloss_tolerance))
            trail.append({"rank": rank, "val_auc": scores["val_auc"], "val_logloss": scores["val_logloss"],
                          "verdict_against_unswapped": verdict})
            if verdict != "worse":
                return rank, trail
        log.warning("AFM stage %r: every rank up to %d loses on the validation split; using %d",
                    stage.name, candidates[-1], candidates[-1])
        return candidates[-1], trail

    @staticmethod
    def _current_lr(trainer: pl.Trainer) -> float | None:
        optimizers = trainer.strategy.optimizers
        return float(optimizers[0].param_groups[0]["lr"]) if optimizers else None

    def _build_optimizer(self, trainer: pl.Trainer, pl_module: nn.Module, stage: CompressionStage,
                         lr: float | None) -> None:
        """A fresh optimizer from the module's ``configure_optimizers`` with the stage's settings.

        Tables are frozen after it is built: they stay in its parameter groups (so a resumed fit's
        optimizer state fits the groups) but get no gradients, which Adam skips, decay included.
        """
        trainer.strategy.setup_optimizers(trainer)
        for optimizer in trainer.strategy.optimizers:
            for group in optimizer.param_groups:
                if lr is not None:
                    group["lr"] = float(lr)
                    group["initial_lr"] = float(lr)
                if stage.weight_decay is not None:
                    group["weight_decay"] = float(stage.weight_decay)
        self._freeze(pl_module, stage)

    def _freeze(self, pl_module: nn.Module, stage: CompressionStage) -> None:
        if not stage.freeze_embeddings:
            return
        for module in pl_module.modules():
            if isinstance(module, nn.Embedding) and module.weight.requires_grad:
                module.weight.requires_grad_(False)
                module.weight.grad = None
                self._frozen.append(module.weight)

    def _unfreeze(self) -> None:
        for parameter in self._frozen:
            parameter.requires_grad_(True)
        self._frozen = []

    # -- pieces ----------------------------------------------------------------------------
    @staticmethod
    def _spectrum(stats: compress.OutputStatistics, kept_variance: float | None) -> dict[str, Any]:
        """The variance the swap kept (its plan entry's) and the components needed for 90/95/99 % (Table 11)."""
        return {"kept_variance": kept_variance, **compress.explained_variance(stats.cov).to_dict()}

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               splits: Sequence[str] | None = None) -> dict[str, float]:
        """``{"val_auc", "val_logloss", "test_auc", "test_logloss"}`` (and ``train_*``) for the splits
        (default: the configured ones) that exist."""
        out: dict[str, float] = {}
        for split in self.eval_splits if splits is None else splits:
            loader = self._eval_loader(trainer, split)
            if loader is None:
                continue
            if split == "train" and self.train_eval_rows is not None:
                loader = _first_rows(loader, -(-self.train_eval_rows // max(trainer.world_size, 1)), self.label_fn)
            scores = evaluate(pl_module, loader, self.forward_fn, self.label_fn,
                              to_device=lambda b: self._to_device(trainer, b), split=split)
            out[f"{split}_auc"] = scores["auc"]
            out[f"{split}_logloss"] = scores["logloss"]
        return out

    def _eval_loader(self, trainer: pl.Trainer, split: str):
        if split == "train":
            # The training rows in eval mode: the statistics pass's loader (every row once, in order,
            # sharded over ranks) where the datamodule has it, else the training loader itself.
            loader = self._statistics_batches(trainer)
            return loader if loader is not None and _has_batches(loader) else None
        dm = trainer.datamodule
        if dm is not None:
            method = getattr(dm, f"{split}_dataloader", None)
            if method is not None:
                try:
                    loader = method()
                except (NotImplementedError, MisconfigurationException):
                    return None
                return loader if loader is not None and _has_batches(loader) else None
            return None
        if split == "val":
            loaders = trainer.val_dataloaders
            if loaders is None:
                # Before the first validation (fit start), the loop has not built its dataloader yet.
                loaders = lightning_compat.val_source_loaders(trainer)
            if isinstance(loaders, (list, tuple)):
                loaders = loaders[0] if loaders else None
            return loaders
        return None

    def _statistics_batches(self, trainer: pl.Trainer):
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "statistics_dataloader"):
            return dm.statistics_dataloader(batch_size=self.statistics_batch_size)
        loader = trainer.train_dataloader
        if loader is None:
            # Before the fit loop has built it (a stage at epoch 0): ask the data source.
            loader = lightning_compat.train_source_loaders(trainer)
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        if isinstance(loader, dict):
            loader = next(iter(loader.values()))
        return loader

    @staticmethod
    def _now(pl_module: nn.Module) -> float:
        """``time.perf_counter()`` once the model's device has finished its queued work (GPU)."""
        try:
            device = next(pl_module.parameters()).device
        except StopIteration:
            device = None
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    @staticmethod
    def _rank_zero(trainer: pl.Trainer, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a collective: every rank calls it at the same point).

        Each rank times its own work; the records must stay alike on all ranks (checkpoints and the
        summary come from rank 0, but a user may read ``history`` on any), so they carry rank 0's.
        """
        if trainer.world_size > 1:
            return trainer.strategy.broadcast(value, src=0)
        return value

    def _epochs_seconds(self, epochs: range) -> float | None:
        """The training seconds of ``epochs`` together; None when there are none or one was not timed."""
        if not len(epochs) or any(e not in self._epoch_s for e in epochs):
            return None
        return sum(self._epoch_s[e] for e in epochs)

    @staticmethod
    def _add_time(record: dict[str, Any], key: str, seconds: float) -> None:
        record[key] = (record.get(key) or 0.0) + seconds

    @staticmethod
    def _to_device(trainer: pl.Trainer, batch: Any) -> Any:
        return trainer.strategy.batch_to_device(batch)

    def _targets(self, pl_module: nn.Module, stage: CompressionStage) -> list[str]:
        types = (nn.Linear,) if stage.kind == "mlp" else (nn.Embedding,)
        hint = f"Set the stage's `targets` to names (or glob patterns) of {types[0].__name__} modules of your model"
        try:
            patterns = stage.target_patterns(pl_module)
        except ValueError as err:  # no targets and no contract to give defaults
            found = [n for n, m in pl_module.named_modules() if n and isinstance(m, types)]
            raise ValueError(f"stage {stage.name!r}: {err}. {hint}: {found}") from err
        if not stage.targets:  # the model's defaults: those still plain, as a glob over them would give
            factored = {n for n, m in pl_module.named_modules() if isinstance(m, factored_types())}
            patterns = [n for n in patterns if n not in factored] or patterns
        try:
            return compress.resolve_targets(pl_module, patterns, types)
        except ValueError as err:
            raise ValueError(f"stage {stage.name!r}: {err}. {hint}") from err

    def planned_stages(self, pl_module: nn.Module, first: int = 0) -> list[PlannedStage]:
        """Stages ``first`` onwards as they would run on ``pl_module`` now: each with its resolved targets
        and, where it will fold, the first MLP Linear's width (what a budget prices; changes nothing).

        ``lightning_afm.callbacks.budgeting.price_stages(pl_module, callback.planned_stages(pl_module), 0)``
        prices them without training (``python -m lightning_afm.report.pareto_ranks`` does).
        """
        planned, folded = [], mlp_reads_codes(pl_module)
        for stage in self.stages[first:]:
            names = self._targets(pl_module, stage)
            if stage.method == "ttd":
                names = compress.select_tt_tables(pl_module, names, stage.ttd_min_rows, stage.ttd_lr)
                if self.budget is not None and self.budget.kept_variance is None:
                    raise ValueError(f"stage {stage.name!r}: a size or latency budget cannot price TT tables yet; use "
                                     "kept_variance= or leave the TT stage out of a budgeted compression")
            width = None
            if isinstance(stage, EmbeddingStage) and self._should_fold(pl_module, stage, names, folded):
                folded = True
                first_linear = compress.first_mlp_linear_name(pl_module)
                if any(p.stage.auto_rank and first_linear in p.names for p in planned) or (
                        stage.auto_rank and first_linear in names):
                    raise ValueError(f"stage {stage.name!r}: the fold reads the codes through {first_linear!r}, "
                                     "whose rank is also chosen by the budget; leave it out of the auto targets")
                width = pl_module.get_submodule(first_linear).out_features
            planned.append(PlannedStage(stage, names, width))
        return planned

    def _budget_prices(self, pl_module: nn.Module, first: int) -> tuple[list[PlannedStage], BudgetPrices]:
        planned = self.planned_stages(pl_module, first)
        reference = self.baseline["params"] if self.baseline else compress.parameter_count(pl_module)
        return planned, price_stages(pl_module, planned, reference)

    def _allocate(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                  index: int) -> dict[str, compress.OutputStatistics]:
        """Choose every auto target's rank (one statistics pass over them all); returns the statistics
        of stage ``index``'s own targets (its swap uses them)."""
        planned = self.planned_stages(pl_module, index)
        prices = price_stages(pl_module, planned, self.baseline["params"])
        auto_names = [p.name for p in prices.auto]
        log.info("AFM budget (%s): statistics pass over the training data for %d auto targets",
                 self.budget.describe(), len(auto_names))
        statistics = self._collect_statistics(trainer, pl_module, self.stages[index], auto_names)
        with self._stage_errors(self.stages[index]):
            if self.budget.timed:
                # each rank times its own machine: every rank swaps at rank 0's ranks
                allocation = self._allocate_latency(trainer, pl_module, planned, prices, statistics)
                self.allocation = self._rank_zero(trainer, allocation.to_dict())
            elif self.budget.sized and self.budget.select == "val":
                allocation = self._select_by_validation(trainer, pl_module, planned, prices, statistics)
                self.allocation = self._rank_zero(trainer, allocation.to_dict())
            else:
                self.allocation = allocate_for_budget(self.budget, prices, statistics).to_dict()
        log.info("AFM budget: ranks %s -> %s parameters", self.allocation["ranks"], f"{self.allocation['params']:,}")
        own = set(planned[0].names)
        return {name: stats for name, stats in statistics.items() if name in own}

    def _select_by_validation(self, trainer: pl.Trainer, pl_module: nn.Module, planned: Sequence[PlannedStage],
                              prices: BudgetPrices, statistics: Mapping[str, compress.OutputStatistics]) -> Allocation:
        """A size budget's allocation: among the candidates (:func:`candidate_allocations`), AFM-initialised
        copies scored on the first ``select_rows`` validation rows, the uniform pair unless another is
        better beyond the current stage's ``significance`` (:func:`select_allocation`); the equal-weight rule,
        with a warning, when there is no validation split or a fixed-rank stage is still to come (its
        factors need statistics this pass did not collect)."""
        loader = self._eval_loader(trainer, "val")
        reason = ("there is no validation split" if loader is None else
                  "a fixed-rank stage is still to come" if any(not p.stage.auto_rank for p in planned) else None)
        if reason is not None:
            rank_zero_warn(f"AFM budget: select='val' scores candidate allocations on the validation split, but "
                           f"{reason}; using the equal-weight rule (select='variance')")
            allocation = allocate_for_budget(self.budget, prices, statistics)
            allocation.notes.update(selection="variance", selection_note=f"select='val' fell back: {reason}")
            return allocation
        candidates = candidate_allocations(self.budget, prices, statistics)
        rows = -(-int(self.budget.select_rows) // max(trainer.world_size, 1))
        started = self._now(pl_module)
        # scoring iterates a loader, which draws a seed from the global generator: put it back, so the
        # finetune that follows shuffles as it would have without the selection
        cpu_state = torch.random.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            allocation, records = select_allocation(
                candidates, lambda candidate: self._candidate_scores(trainer, pl_module, planned, statistics,
                                                                     candidate.ranks, rows),
                significance=float(planned[0].stage.significance))
        finally:
            torch.random.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
        allocation.notes.update(selection="val", selection_rows=int(self.budget.select_rows),
                                selection_s=round(self._now(pl_module) - started, 3))
        log.info("AFM budget: %d candidate allocations scored on the validation split in %.1f s: %s; kept %s",
                 len(records), allocation.notes["selection_s"],
                 ", ".join(f"{r['label']} {r['val_logloss']:.5f} ({r['verdict']})" for r in records),
                 allocation.notes["selected"])
        return allocation

    def _candidate_scores(self, trainer: pl.Trainer, pl_module: nn.Module, planned: Sequence[PlannedStage],
                          statistics: Mapping[str, compress.OutputStatistics], ranks: Mapping[str, int],
                          rows: int) -> dict[str, Any]:
        """Validation AUC, logloss and per-row logits of the AFM-initialised copy at ``ranks`` (first ``rows``)."""
        scores = evaluate(candidate_model(pl_module, planned, statistics, ranks),
                          _first_rows(self._eval_loader(trainer, "val"), rows, self.label_fn), self.forward_fn,
                          self.label_fn, to_device=lambda b: self._to_device(trainer, b), keep_predictions=True,
                          split="val")
        return {"val_auc": scores["auc"], "val_logloss": scores["logloss"], "logits": scores["logits"],
                "labels": scores["labels"]}

    def _smallest_latency(self, trainer: pl.Trainer, pl_module: nn.Module, planned: Sequence[PlannedStage],
                          prices: BudgetPrices) -> float:
        """Measured latency of the smallest structure the stages to come can leave (once per fit; rank 0's)."""
        if self._smallest_latency_ms is None:
            smallest = planned_structure(pl_module, planned, smallest_ranks(prices, self.budget.multiple))
            self._smallest_latency_ms = self._rank_zero(trainer, inference_latency_ms(smallest, self.budget.batch))
        return self._smallest_latency_ms

    def _allocate_latency(self, trainer: pl.Trainer, pl_module: nn.Module, planned: Sequence[PlannedStage],
                          prices: BudgetPrices, statistics: Mapping[str, compress.OutputStatistics]):
        """The allocation for a latency budget, each candidate's structure measured on a copy."""
        first = next(pl_module.parameters())
        timer = ProductTimer(self.budget.batch, first.device, first.dtype)
        smallest = self._smallest_latency(trainer, pl_module, planned, prices)
        times = latency_times(pl_module, planned, prices, self.budget, timer)
        log.info("AFM budget: timed %d product shapes at batch %s", timer.shapes_timed, f"{self.budget.batch:,}")
        return allocate_for_latency(
            self.budget, prices, statistics, times, smallest,
            lambda ranks: inference_latency_ms(planned_structure(pl_module, planned, ranks), self.budget.batch))

    def _measure_latency(self, trainer: pl.Trainer, pl_module: nn.Module, record: dict[str, Any]) -> None:
        """After the last swap under a latency budget: the structure's measured latency, in the budget block."""
        latency = self._rank_zero(trainer, inference_latency_ms(pl_module, self.budget.batch))
        self.allocation["latency_ms"] = round(latency, 4)
        record["latency_ms"] = self.allocation["latency_ms"]
        log.info("AFM budget: the compressed model's inference form takes %.4g ms per batch of %s (budget %g ms)",
                 latency, f"{self.budget.batch:,}", self.budget.latency_ms)

    @staticmethod
    def _stage_targets(pl_module: nn.Module, stage: CompressionStage, names: list[str], rank: int) -> list[str]:
        """The targets the stage's kind really takes (TT-Rec the large tables and their LR tables, QR
        those it shrinks; the others stay as they are)."""
        return compress.select_targets(pl_module, names, stage.method, rank, **stage.build_options())

    @staticmethod
    def _check_ranks(pl_module: nn.Module, stage: CompressionStage, names: list[str]) -> None:
        if stage.auto_rank:  # chosen per target within each target's width
            return
        for name in names:
            module = pl_module.get_submodule(name)
            kind = compress.kind_for_module(module, stage.method, name)
            width = kind.max_rank(module)
            if width is not None and stage.rank > width:  # None: a TT-rank, not bounded by the table's width
                raise ValueError(
                    f"stage {stage.name!r}: rank {stage.rank} is larger than {name!r} allows "
                    f"({type(module).__name__} of width {width}); choose a rank in 1..{width}")
            problem = kind.rank_problem(module, stage.rank)
            if problem is not None:
                raise ValueError(f"stage {stage.name!r}: {name!r}: {problem}")

    @staticmethod
    def _fold_problem(pl_module: nn.Module, names: list[str], folded_earlier: bool) -> str | None:
        """Why the projections of the tables ``names`` cannot be folded into the first MLP Linear, or None."""
        cls = type(pl_module).__name__
        if not compress.implements_contract(pl_module):
            return (f"{cls}'s MLP does not read the embeddings directly as far as compression knows (the model does "
                    "not implement the compression contract, lightning_afm.compress.CompressibleModel)")
        layout = pl_module.compression_layout()
        if not layout.mlp_reads_embeddings:
            return f"{cls}'s MLP does not read the embeddings directly (an interaction layer sits in between)"
        if not layout.field_tables:
            return f"{cls}'s compression layout names no field tables"
        if folded_earlier or layout.mlp_reads_codes:
            return "an earlier stage already folded the tables"
        missing = [n for n in layout.field_tables if n not in names
                   and not isinstance(pl_module.get_submodule(n), compress.LowRankEmbedding)]
        if missing:
            return f"the MLP reads every field table, and the stage leaves {missing} out of its targets"
        try:
            compress.first_mlp_linear_name(pl_module)
        except ValueError as err:
            return str(err)
        return None

    def _should_fold(self, pl_module: nn.Module, stage: EmbeddingStage, names: list[str],
                     folded_earlier: bool = False) -> bool:
        if stage.fold is False or not leaves_projections(stage.method):
            return False
        problem = self._fold_problem(pl_module, names, folded_earlier)
        if stage.fold is True and problem is not None:
            raise ValueError(f"stage {stage.name!r}: fold=True, but {problem}; use fold='auto' (folds where "
                             "possible) or fold=False (keeps the per-field projections)")
        return problem is None

    @contextlib.contextmanager
    def _stage_errors(self, stage: CompressionStage) -> Iterator[None]:
        """Name the stage in an error from the compression code, with the likely cause of non-finite values."""
        try:
            yield
        except (ValueError, TypeError, RuntimeError) as err:
            message = f"stage {stage.name!r}: {err}"
            if "NaN" in message or "Inf" in message:
                message += (". Non-finite values on finite weights come from the data or an overflow: look for "
                            "NaN/Inf input features (e.g. missing numeric values) or lower the learning rate")
            raise (type(err) if type(err) in (ValueError, TypeError) else ValueError)(message) from err

    def _collect_statistics(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: CompressionStage,
                            names: list[str]) -> dict[str, compress.OutputStatistics]:
        with self._stage_errors(stage):
            return compress.collect_statistics(
                pl_module, names, self._statistics_batches(trainer),
                forward=lambda batch: self.forward_fn(pl_module, self._to_device(trainer, batch)),
                progress=self.progress and trainer.is_global_zero,
            )

    @staticmethod
    def _check_finite_weights(pl_module: nn.Module, stage: CompressionStage) -> None:
        """NaN/Inf weights before a swap: the training before it diverged; say so instead of a LinAlgError."""
        # A float64 sum per parameter: NaN/Inf exactly when an entry is, with no entry-sized mask.
        bad = [name for name, p in pl_module.named_parameters()
               if p.is_floating_point() and not torch.isfinite(p.detach().sum(dtype=torch.float64))]
        if bad:
            shown = ", ".join(repr(n) for n in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ValueError(
                f"stage {stage.name!r}: the model's weights contain NaN or Inf ({shown}) before the swap, so there is "
                "nothing to compress: the training before this stage diverged. Lower the learning rate (the "
                "model's lr, or the previous stage's `lr`) or clip gradients (Trainer(gradient_clip_val=1.0)), "
                "then train again. Nothing was changed.")

    def _check_training_data(self, trainer: pl.Trainer) -> None:
        """An empty training set ends the fit before the first epoch: fail instead of compressing nothing."""
        if self.schedule_done:
            return
        plan = " + ".join([f"{self.baseline_epochs} baseline"] + [f"{s.epochs} {s.name}" for s in self.stages])
        if trainer.limit_train_batches == 0:
            raise MisconfigurationException(
                f"AFMCompressionCallback: Trainer(limit_train_batches=0) runs no training batches, so the compression "
                f"schedule ({plan} epochs) would end with nothing compressed; remove limit_train_batches=0")
        loaders = self._train_loaders(trainer)
        empty = [loader for loader in loaders if _is_empty(loader)]
        if trainer.strategy.reduce_boolean_decision(bool(empty), all=False):
            raise MisconfigurationException(
                f"AFMCompressionCallback: the training dataloader is empty ({_describe(empty[0]) if empty else 'on some rank'}), "
                f"so Lightning would skip every epoch and the compression schedule ({plan} epochs) would end with "
                "nothing compressed. Give the fit training data: check the training split (its file, filters and "
                "fractions) and use a batch size no larger than the dataset when drop_last=True")

    @staticmethod
    def _train_loaders(trainer: pl.Trainer) -> list[Any]:
        """The fit's training dataloader(s), asked from the data source (the fit loop builds its own later)."""
        loaders = lightning_compat.train_source_loaders(trainer)
        if loaders is None:
            return []
        if isinstance(loaders, dict):
            return list(loaders.values())
        if isinstance(loaders, (list, tuple)):
            return list(loaders)
        return [loaders]

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and max_epochs < self.total_epochs:
            plan = " + ".join([f"{self.baseline_epochs} baseline"] + [f"{s.epochs} {s.name}" for s in self.stages])
            raise MisconfigurationException(
                f"AFMCompressionCallback needs {self.total_epochs} epochs ({plan}) but the trainer has "
                f"max_epochs={max_epochs}; set Trainer(max_epochs={self.total_epochs}) "
                f"(Hydra: trainer.max_epochs={self.total_epochs})")

    def _check_stages(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """Every stage still to come, completely, before any work: settings, targets (exist, right type,
        no module in two stages), ranks, folding, validation data, batch size."""
        claimed: dict[str, str] = {}
        folded = mlp_reads_codes(pl_module)
        for stage in self.stages[self.stages_started:]:
            stage.validate()  # again: a stage's fields may have been changed since it was made
            names = self._targets(pl_module, stage)
            names = self._stage_targets(pl_module, stage, names, stage.rank)
            self._check_ranks(pl_module, stage, names)
            for name in names:
                if name in claimed:
                    raise ValueError(
                        f"stages {claimed[name]!r} and {stage.name!r} both target {name!r}: a module is compressed "
                        "once; give the stages disjoint `targets`")
                claimed[name] = stage.name
            if isinstance(stage, EmbeddingStage):
                folded = self._should_fold(pl_module, stage, names, folded) or folded
            self._check_data_needs(trainer, stage)
        if self.budget is not None and self.allocation is None and self.stages_started < len(self.stages):
            # the smallest structure needs no statistics: an impossible budget fails before any work
            planned, prices = self._budget_prices(pl_module, self.stages_started)
            check_budget(self.budget, prices)
            if self.budget.timed:
                check_latency(self.budget, self._smallest_latency(trainer, pl_module, planned, prices))

    def _check_data_needs(self, trainer: pl.Trainer, stage: CompressionStage) -> None:
        reads_val = [k for k, on in (("select='best'", stage.select == "best"),
                                     ("grow_rank=True", getattr(stage, "grow_rank", False))) if on]
        if reads_val and self._eval_loader(trainer, "val") is None:
            raise MisconfigurationException(
                f"stage {stage.name!r} has {' and '.join(reads_val)}, which read the validation split, but "
                "the fit has no validation data; give it one (Hydra: data.val_fraction=0.1; Python: a "
                "datamodule with val_dataloader() or trainer.fit(model, train, val)) or set select='last' "
                "and grow_rank=False (Hydra: protocol=paper)")
        if stage.batch_size is not None:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "batch_size"):
                raise MisconfigurationException(
                    f"stage {stage.name!r} sets batch_size={stage.batch_size}, which needs a LightningDataModule "
                    "with a `batch_size` attribute read by train_dataloader(); set batch_size=None to keep yours")

    def _apply_training_settings(self, trainer, pl_module, stage: CompressionStage, new_optimizer: bool = False) -> None:
        if stage.dropout is not None:
            for module in pl_module.modules():
                if isinstance(module, nn.Dropout):
                    module.p = float(stage.dropout)
        if new_optimizer:
            self._build_optimizer(trainer, pl_module, stage, lr=stage.lr)
        else:
            self._freeze(pl_module, stage)
        # At fit start the fit loop has not built its dataloader yet; later stages had their batch
        # size set at the end of the epoch before them (_prepare_batch_size).
        if stage.batch_size is not None and trainer.datamodule is not None:
            trainer.datamodule.batch_size = int(stage.batch_size)

    @staticmethod
    def _check_strategy(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One device, or ``strategy="ddp"``: the strategies under which swapped modules train correctly.

        * Strategies that train in spawned processes (``ddp_spawn``, ``ddp_fork``,
          ``ddp_notebook``) compress the workers' copies; Lightning then loads rank 0's weights
          into the main process's model with ``strict=False``, which keeps its uncompressed
          modules (and this callback's records stay empty there): a silently wrong model.
        * A wrapper other than ``DistributedDataParallel`` (FSDP, DeepSpeed) owns the parameters
          in its own layout; :meth:`_rewrap_for_ddp` cannot register new ones with it.
        """
        from torch.nn.parallel import DistributedDataParallel

        strategy = trainer.strategy
        launcher = getattr(strategy, "launcher", None)
        if lightning_compat.trains_in_spawned_processes(strategy):
            raise MisconfigurationException(
                f"AFMCompressionCallback cannot run under a strategy that trains in spawned processes "
                f"({type(strategy).__name__} with start method {getattr(launcher, '_start_method', '?')!r}, "
                "e.g. 'ddp_spawn'): the compressed model would not come back to the main process. "
                "Use Trainer(strategy='ddp') (Hydra: trainer=ddp)")
        wrapper = getattr(strategy, "model", pl_module)
        if wrapper is not pl_module and not (
                isinstance(wrapper, DistributedDataParallel) and wrapper.module is pl_module):
            raise MisconfigurationException(
                f"AFMCompressionCallback swaps modules on one device or under strategy='ddp' only; "
                f"{type(strategy).__name__} wraps the model in {type(wrapper).__name__}, which cannot take "
                "new parameters during the fit. Use Trainer(strategy='ddp') or a single device")

    @staticmethod
    def _rewrap_for_ddp(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Wrap the swapped model in a new ``DistributedDataParallel``, so its new parameters synchronise.

        DDP fixes its parameter list (and gradient buckets) when it wraps the model: the factored
        modules' parameters would get no all-reduce, and the removed ones would leave DDP waiting
        for gradients that never come ("parameters that were not used in producing the loss" at
        the next step). Every rank swaps at the same point, so every rank re-wraps here (the
        constructor is a collective that also broadcasts rank 0's weights). The optimizer must be
        built after this (``_apply_training_settings`` does). The old wrapper's gradient hooks on
        the kept parameters stay idle: they only act after that wrapper's own forward.
        """
        from torch.nn.parallel import DistributedDataParallel

        strategy = trainer.strategy
        if isinstance(getattr(strategy, "model", None), DistributedDataParallel):
            lightning_compat.rewrap_ddp(strategy, pl_module)

    @staticmethod
    def _log_scalars(trainer: pl.Trainer, metrics: dict[str, Any], step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)

    def _log_point(self, trainer: pl.Trainer, stage_number: int, phase: int, params: int | None,
                   scores: dict[str, Any]) -> None:
        """One point of the compression trajectory, through the trainer's loggers.

        The step is the point's place in the schedule, so a chart of ``compression/val_auc`` shows
        the stages in order: 0 the baseline, ``2 i - 1`` stage ``i`` right after its swap (AFM's
        headline figure), ``2 i`` stage ``i`` after its finetune. ``compression/stage`` (``i``) and
        ``compression/phase`` (0 baseline, 1 swapped, 2 finetuned) say which point it is.
        """
        step = 0 if phase == 0 else 2 * stage_number - 2 + phase
        metrics: dict[str, Any] = {"compression/stage": stage_number, "compression/phase": phase,
                                   "compression/params": params, "compression/global_step": trainer.global_step}
        metrics.update({f"compression/{k}": v for k, v in scores.items()
                        if k.startswith(tuple(f"{split}_" for split in EVAL_SPLITS))})
        self._log_scalars(trainer, metrics, step=step)

    def _log_check(self, trainer: pl.Trainer, check: dict[str, Any]) -> None:
        """A select='best' validation check, at the global step it was made."""
        self._log_scalars(trainer, {f"compression/check_{k}": v for k, v in check.items() if k.startswith("val_")},
                          step=trainer.global_step)


def _is_empty(loader: Any) -> bool:
    """A sized loader of no batches (an unsized one may be empty too, but only iterating would tell)."""
    try:
        return len(loader) == 0
    except TypeError:
        return False


def _describe(loader: Any) -> str:
    dataset = getattr(loader, "dataset", None)
    try:
        rows = f"{len(dataset)} rows" if dataset is not None else "no dataset"
    except TypeError:
        rows = "an unsized dataset"
    return (f"0 batches from {rows}, batch_size={getattr(loader, 'batch_size', '?')}, "
            f"drop_last={getattr(loader, 'drop_last', '?')}")


def _first_rows(loader: Any, rows: int, label_fn: LabelFn) -> Iterator[Any]:
    """The batches of ``loader`` up to the first that brings the rows seen to ``rows`` or more."""
    seen = 0
    for batch in loader:
        yield batch
        seen += int(label_fn(batch).numel())
        if seen >= rows:
            return


def _has_batches(loader: Any) -> bool:
    try:
        return len(loader) > 0
    except TypeError:
        return True
