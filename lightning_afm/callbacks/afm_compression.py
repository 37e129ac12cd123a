"""``AFMCompressionCallback``: the paper's pipeline inside one ``trainer.fit``.

Schedule (epochs are the trainer's)::

    [baseline_epochs] -> stage 1: statistics, swap, finetune [epochs] -> stage 2: ... -> end

A stage starts at the end of the epoch before it (after that epoch's validation), or at fit
start when it begins at epoch 0 (``baseline_epochs=0``: compress an already trained model).
Starting a stage means: a statistics pass over the training data (eval mode, no gradients,
progress bar), the module swap, the stage's dropout, a fresh optimizer with the stage's
settings, the stage's batch size, and an evaluation of the swapped model ("pre-train" in the
paper's tables). When its finetune epochs end the stage is evaluated again ("fine-tune").

The compression plan travels in every checkpoint (``checkpoint["afm_compression_plan"]``) and
is replayed on the fresh model before its weights load, both when resuming a fit and in
``load_from_checkpoint`` of our models.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_afm import compress
from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY, restore_compressed_structure
from lightning_afm.callbacks.evaluation import ForwardFn, LabelFn, default_forward, default_labels, evaluate
from lightning_afm.callbacks.selection import BestState, check_batches, compare
from lightning_afm.callbacks.stages import CompressionStage, EmbeddingStage

log = logging.getLogger(__name__)

PLAN_KEY = PLAN_CHECKPOINT_KEY


class AFMCompressionCallback(pl.Callback):
    """Compress a model during ``trainer.fit`` with AFM (or SVD), stage by stage.

    Args:
        stages: the stages in order, e.g. ``[MLPStage(rank=64), EmbeddingStage(rank=2)]``.
        baseline_epochs: epochs of plain training before the first stage; ``0`` compresses the
            model as it comes (an already trained one) at the start of the fit.
        eval_splits: which of ``"val"`` and ``"test"`` to score before and after each finetune
            (from the datamodule, or the trainer's validation dataloaders).
        statistics_batch_size: batch size of the statistics pass (default: the datamodule's).
        forward_fn: ``forward_fn(module, batch) -> logits``; default :func:`default_forward`.
        label_fn: ``label_fn(batch) -> labels``; default :func:`default_labels`.

    Example::

        trainer = Trainer(max_epochs=3, callbacks=[AFMCompressionCallback(
            [MLPStage(rank=64, lr=1e-3, weight_decay=1e-3), EmbeddingStage(rank=2)])])
        trainer.fit(model, datamodule=dm)
        callback.history  # one record per stage: params, AUC/logloss before and after finetuning

    The records are in ``history``; the model before the first stage in ``baseline``.
    """

    def __init__(
        self,
        stages: Sequence[CompressionStage],
        baseline_epochs: int = 1,
        eval_splits: Sequence[str] = ("val", "test"),
        statistics_batch_size: int | None = None,
        forward_fn: ForwardFn | None = None,
        label_fn: LabelFn | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.stages = list(stages)
        if not self.stages:
            raise ValueError("AFMCompressionCallback needs at least one stage, e.g. [MLPStage(rank=64)]")
        for stage in self.stages:
            if not isinstance(stage, CompressionStage):
                raise TypeError(f"stages must be MLPStage or EmbeddingStage objects, got {type(stage).__name__}")
        if not isinstance(baseline_epochs, int) or baseline_epochs < 0:
            raise ValueError(f"baseline_epochs must be an integer >= 0, got {baseline_epochs!r}")
        bad = [s for s in eval_splits if s not in ("val", "test")]
        if bad:
            raise ValueError(f"eval_splits may hold 'val' and 'test' only, got {bad}")
        self.baseline_epochs = baseline_epochs
        self.eval_splits = tuple(eval_splits)
        self.statistics_batch_size = statistics_batch_size
        self.forward_fn = forward_fn or default_forward
        self.label_fn = label_fn or default_labels
        self.progress = progress

        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, Any] | None = None
        self.plan = compress.CompressionPlan()
        self.stages_started = 0
        self.stages_finished = 0
        # The running stage's best state (select="best") and the tables it froze; neither is in
        # checkpoints: a fit resumed inside such a stage starts its selection afresh.
        self._best: BestState | None = None
        self._frozen: list[nn.Parameter] = []

    # -- schedule ------------------------------------------------------------------------
    def start_epoch(self, index: int) -> int:
        """The first finetune epoch of stage ``index``."""
        return self.baseline_epochs + sum(s.epochs for s in self.stages[:index])

    @property
    def total_epochs(self) -> int:
        return self.start_epoch(len(self.stages))

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.ckpt_path:
            return
        # Resuming: the checkpoint's weights have the compressed shapes, so the structure must
        # be rebuilt before Lightning loads them (it restores right after this hook).
        checkpoint = torch.load(trainer.ckpt_path, map_location="cpu", weights_only=False)
        restore_compressed_structure(pl_module, checkpoint)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_strategy(trainer, pl_module)
        self._check_schedule(trainer)
        self._check_stages(trainer, pl_module)
        if self.stages_started > self.stages_finished:
            # Resumed inside a finetune: put back what the checkpoint does not hold.
            self._apply_training_settings(trainer, pl_module, self.stages[self.stages_started - 1], reload=False)
        self._advance(trainer, pl_module, next_epoch=trainer.current_epoch, at_fit_start=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._advance(trainer, pl_module, next_epoch=trainer.current_epoch + 1, at_fit_start=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._best is None or self.stages_started == self.stages_finished:
            return
        index = self.stages_started - 1
        stage = self.stages[index]
        batches = trainer.num_training_batches
        if isinstance(batches, int) and batch_idx + 1 in check_batches(batches, stage.checks):
            point = trainer.current_epoch - self.start_epoch(index) + (batch_idx + 1) / batches
            self._check(trainer, pl_module, stage, point)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.plan.entries:
            checkpoint[PLAN_KEY] = self.plan.to_dict()

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "baseline": self.baseline,
            "plan": self.plan.to_dict(),
            "stages_started": self.stages_started,
            "stages_finished": self.stages_finished,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.baseline = state_dict.get("baseline")
        plan = state_dict.get("plan")
        self.plan = compress.CompressionPlan.from_dict(plan) if plan else compress.CompressionPlan()
        self.stages_started = int(state_dict.get("stages_started", 0))
        self.stages_finished = int(state_dict.get("stages_finished", 0))

    def summary(self) -> dict[str, Any]:
        """Entries for the run's ``summary.json``: the baseline figures and one record per stage."""
        out: dict[str, Any] = {"stages": [dict(r) for r in self.history]}
        for key, value in (self.baseline or {}).items():
            if key.startswith(("test_", "val_")):
                out[f"baseline_{key}"] = value
        if self.baseline:
            out["baseline_params"] = self.baseline.get("params")
        return out

    # -- the pipeline ----------------------------------------------------------------------
    def _advance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, next_epoch: int, at_fit_start: bool) -> None:
        """Close the stage whose finetune ends before ``next_epoch``; start the stages due by then.

        "Due by" rather than "due at": a fit resumed from a checkpoint written before the end of
        the epoch that should have started a stage (e.g. ``ModelCheckpoint`` on validation end)
        catches up at fit start.
        """
        if self.stages_started > self.stages_finished:
            index = self.stages_started - 1
            if next_epoch >= self.start_epoch(index + 1) and not at_fit_start:
                self._finish_stage(trainer, pl_module, index)
            elif self._best is not None and not at_fit_start:
                self._check(trainer, pl_module, self.stages[index], float(next_epoch - self.start_epoch(index)))
        while self.stages_started < len(self.stages) and self.start_epoch(self.stages_started) <= next_epoch:
            if self.stages_started > self.stages_finished:
                break  # the running stage has finetune epochs left
            index = self.stages_started
            self._start_stage(trainer, pl_module, index, reload=not at_fit_start)
            if self.stages[index].epochs == 0:
                self._finish_stage(trainer, pl_module, index)

    def _start_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int, reload: bool) -> None:
        stage = self.stages[index]
        if self.baseline is None:
            self.baseline = {"params": compress.parameter_count(pl_module), **self._score(trainer, pl_module)}
            self._log(trainer, {f"afm/baseline_{k}": v for k, v in self.baseline.items()})
        record: dict[str, Any] = {
            "name": stage.name, "kind": stage.kind, "method": stage.method, "rank": stage.rank,
            "start_epoch": self.start_epoch(index), "epochs": stage.epochs,
            "params_before": compress.parameter_count(pl_module),
        }
        names = self._targets(pl_module, stage)
        self._check_ranks(pl_module, stage, names)

        statistics = {}
        if stage.method == "afm":
            log.info("AFM stage %r: statistics pass over the training data for %s", stage.name, names)
            statistics = compress.collect_statistics(
                pl_module, names, self._statistics_batches(trainer),
                forward=lambda batch: self.forward_fn(pl_module, self._to_device(trainer, batch)),
                progress=self.progress and trainer.is_global_zero,
            )
        rank = stage.rank
        if isinstance(stage, EmbeddingStage) and stage.grow_rank and statistics:
            rank, record["rank_search"] = self._grow_rank(trainer, pl_module, stage, statistics)
            record["rank"] = rank
        # All or nothing: every replacement is built and checked before the first swap.
        if stage.method == "ttd":
            entries = compress.compress_embeddings_ttd(pl_module, names, tt_rank=stage.rank, init=stage.ttd_init)
        else:
            entries = compress.compress_targets(
                pl_module, names, statistics or None, rank=rank, method=stage.method,
                relu=getattr(stage, "relu", False), relu_init=getattr(stage, "relu_init", "shift"))
        layers = {name: self._spectrum(stats, rank) for name, stats in statistics.items()}
        if isinstance(stage, EmbeddingStage) and stage.method != "ttd" and self._should_fold(pl_module, stage):
            entries.append(compress.fold_into_first_linear(pl_module))
        self.plan.extend(entries)
        self.stages_started = index + 1

        self._rewrap_for_ddp(trainer, pl_module)
        self._apply_training_settings(trainer, pl_module, stage, reload=reload, new_optimizer=True)
        record["params"] = compress.parameter_count(pl_module)
        record["layers"] = layers
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
        self.history.append(record)
        self._log(trainer, {f"afm/{stage.name}_params": record["params"],
                            **{f"afm/{stage.name}_pre_finetune_{k}": v for k, v in record.items()
                               if k.startswith(("val_", "test_"))}})
        log.info("AFM stage %r: %s -> %s parameters", stage.name, f"{record['params_before']:,}", f"{record['params']:,}")

    def _finish_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        record = self.history[index]
        stage = self.stages[index]
        if self._best is not None:
            if self._check(trainer, pl_module, stage, float(stage.epochs), backoff=False) != "better":
                self._best.restore(pl_module)
            record["selected_point"] = self._best.point
            record["checks"] = self._best.trail
            self._best = None
        self._unfreeze()
        scores = self._score(trainer, pl_module)
        record.update(scores)
        self.stages_finished = index + 1
        self._log(trainer, {f"afm/{record['name']}_{k}": v for k, v in scores.items()})

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
        self._log(trainer, {f"afm/{stage.name}_check_{k}": v for k, v in self._best.trail[-1].items()
                            if k.startswith("val_")})
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
                          to_device=lambda b: self._to_device(trainer, b), keep_predictions=True)
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
    def _spectrum(stats: compress.OutputStatistics, rank: int) -> dict[str, Any]:
        """Variance kept at ``rank`` and the components needed for 90/95/99 % (the paper's Table 11)."""
        return {"kept_variance": compress.kept_variance(stats.cov, rank),
                **compress.explained_variance(stats.cov).to_dict()}

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               splits: Sequence[str] | None = None) -> dict[str, float]:
        """``{"val_auc", "val_logloss", "test_auc", "test_logloss"}`` for the splits (default: the configured
        ones) that exist."""
        out: dict[str, float] = {}
        for split in self.eval_splits if splits is None else splits:
            loader = self._eval_loader(trainer, split)
            if loader is None:
                continue
            scores = evaluate(pl_module, loader, self.forward_fn, self.label_fn,
                              to_device=lambda b: self._to_device(trainer, b))
            out[f"{split}_auc"] = scores["auc"]
            out[f"{split}_logloss"] = scores["logloss"]
        return out

    @staticmethod
    def _eval_loader(trainer: pl.Trainer, split: str):
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
                source = trainer.fit_loop.epoch_loop.val_loop._data_source
                loaders = source.dataloader() if source.is_defined() else None
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
            loader = trainer.fit_loop._data_source.dataloader()
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        if isinstance(loader, dict):
            loader = next(iter(loader.values()))
        return loader

    @staticmethod
    def _to_device(trainer: pl.Trainer, batch: Any) -> Any:
        return trainer.strategy.batch_to_device(batch)

    def _targets(self, pl_module: nn.Module, stage: CompressionStage) -> list[str]:
        types = (nn.Linear,) if stage.kind == "mlp" else (nn.Embedding,)
        return compress.resolve_targets(pl_module, stage.target_patterns, types)

    @staticmethod
    def _check_ranks(pl_module: nn.Module, stage: CompressionStage, names: list[str]) -> None:
        if stage.method == "ttd":
            return  # a TT-rank is not bounded by the table's width
        for name in names:
            module = pl_module.get_submodule(name)
            width = min(module.out_features, module.in_features) if isinstance(module, nn.Linear) else module.embedding_dim
            if stage.rank > width:
                raise ValueError(
                    f"stage {stage.name!r}: rank {stage.rank} is larger than {name!r} allows "
                    f"({type(module).__name__} of width {width}); choose a rank in 1..{width}")

    def _should_fold(self, pl_module: nn.Module, stage: EmbeddingStage) -> bool:
        can_fold = bool(getattr(type(pl_module), "MLP_READS_EMBEDDINGS", False)) and hasattr(pl_module, "embeddings")
        if stage.fold is True and not can_fold:
            raise ValueError(
                f"stage {stage.name!r}: fold=True, but {type(pl_module).__name__}'s MLP does not read the "
                "embeddings directly (an interaction layer sits in between); use fold='auto' or False")
        return can_fold if stage.fold == "auto" else bool(stage.fold)

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and max_epochs < self.total_epochs:
            plan = " + ".join([f"{self.baseline_epochs} baseline"] + [f"{s.epochs} {s.name}" for s in self.stages])
            raise MisconfigurationException(
                f"AFMCompressionCallback needs {self.total_epochs} epochs ({plan}) but the trainer has "
                f"max_epochs={max_epochs}; set Trainer(max_epochs={self.total_epochs}) "
                f"(Hydra: trainer.max_epochs={self.total_epochs})")

    def _check_stages(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """What can be checked before any work: targets exist, ranks fit, the batch size can change."""
        for stage in self.stages[self.stages_started:]:
            self._check_ranks(pl_module, stage, self._targets(pl_module, stage))
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

    def _apply_training_settings(self, trainer, pl_module, stage: CompressionStage, reload: bool,
                                 new_optimizer: bool = False) -> None:
        if stage.dropout is not None:
            for module in pl_module.modules():
                if isinstance(module, nn.Dropout):
                    module.p = float(stage.dropout)
        if new_optimizer:
            self._build_optimizer(trainer, pl_module, stage, lr=stage.lr)
        else:
            self._freeze(pl_module, stage)
        if stage.batch_size is not None and trainer.datamodule is not None:
            trainer.datamodule.batch_size = int(stage.batch_size)
            if reload:
                # Make the fit loop ask the datamodule for a new train dataloader at the next epoch.
                trainer.fit_loop._combined_loader = None

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
        from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
        from torch.nn.parallel import DistributedDataParallel

        strategy = trainer.strategy
        launcher = getattr(strategy, "launcher", None)
        if isinstance(launcher, _MultiProcessingLauncher):
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
            strategy.model = strategy._setup_model(pl_module)
            if hasattr(strategy, "_register_ddp_hooks"):
                strategy._register_ddp_hooks()

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isnan(float(v))}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)


def _has_batches(loader: Any) -> bool:
    try:
        return len(loader) > 0
    except TypeError:
        return True
