"""The Hydra application: ``lightning-afm`` (same as ``python -m lightning_afm``).

``run(cfg)`` does the work and returns the summary, so tests and recipes can call it on a
composed config; ``main`` is the ``@hydra.main`` entry point around it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lightning_afm.app.errors import ConfigError, filter_noise, run_reporting_errors
from lightning_afm.app.hparams import log_run_hparams
from lightning_afm.app.resume import apply_baseline, load_baseline_weights, resume_checkpoint
from lightning_afm.app.rundirs import register_resolvers
from lightning_afm.callbacks.best_weights import BestWeights
from lightning_afm.callbacks.checkpointing import AtomicCheckpointIO, RandomStateCheckpoint
from lightning_afm.callbacks.throughput import TrainingThroughput
from lightning_afm.data.encoder import ENCODER_DIR
from lightning_afm.models import count_parameters
from lightning_afm.runtime import reuse_freed_memory
from lightning_afm.summary import write_summary

log = logging.getLogger(__name__)

register_resolvers()


def _output_dir(cfg: DictConfig) -> Path:
    """Hydra's run directory when Hydra runs us; else ``cfg.output_dir`` (tests, notebooks)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    raise ValueError("no output directory: run through Hydra, or set output_dir in the config")


def metric(metrics: dict[str, Any], split: str, name: str) -> float | None:
    """Look up a logged metric (``test_auc`` or ``test/auc``) as a float, or None if absent."""
    for key in (f"{split}_{name}", f"{split}/{name}"):
        if key in metrics:
            value = metrics[key]
            value = float(value.item() if hasattr(value, "item") else value)
            return None if math.isnan(value) else value  # an undefined AUC is null, not NaN
    return None


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The compression callback (if the ``compression`` group configures one) and the throughput meter."""
    callbacks: list[pl.Callback] = [TrainingThroughput()]
    compression = cfg.get("compression")
    if compression:
        from lightning_afm.callbacks.factory import build_compression_callback

        callback = build_compression_callback(compression)
        if callback is not None:
            callbacks.insert(0, callback)
    return callbacks


def early_stopping_callbacks(cfg: DictConfig, datamodule: pl.LightningDataModule) -> list[pl.Callback]:
    """Lightning's ``EarlyStopping`` and :class:`BestWeights` from the ``early_stopping`` block.

    None when the block is null (the paper's data configs: a fixed epoch count) or when a
    compression config runs: its schedule (baseline epochs, then one epoch per stage) fixes the
    epochs, and stopping inside it would skip stages. Train the baseline with early stopping
    first (``compression=none``), then compress its ``last.ckpt`` with ``baseline=PATH``.
    """
    block = cfg.get("early_stopping")
    if not block:
        return []
    if cfg.get("compression"):
        log.info("early_stopping is off: the compression config fixes the epochs (baseline epochs, then its "
                 "stages). To compress an early-stopped model, train it with compression=none, then pass "
                 "its last.ckpt as baseline=PATH")
        return []
    if hasattr(datamodule, "num_rows") and datamodule.num_rows("val") == 0:
        raise ConfigError("early_stopping needs a validation split, and this data has none: set "
                          "data.val_fraction above 0 (e.g. 0.05), or early_stopping=null for a fixed epoch count "
                          "(trainer.max_epochs)")
    monitor, mode = str(block.get("monitor", "val_auc")), str(block.get("mode", "max"))
    callbacks: list[pl.Callback] = [EarlyStopping(monitor=monitor, mode=mode, patience=int(block.get("patience", 2)),
                                                  min_delta=float(block.get("min_delta", 0.0)), strict=True)]
    if block.get("restore_best", True):
        callbacks.append(BestWeights(monitor=monitor, mode=mode))
    return callbacks


def check_accelerator(cfg: DictConfig) -> None:
    """Refuse a GPU trainer on a machine without one before any data is read."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use trainer=cpu, or install a CUDA build of torch")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but MPS is not available here; use trainer=cpu")


def epoch_checkpoint(out: Path) -> ModelCheckpoint:
    """``checkpoints/last.ckpt``, rewritten at the end of every training epoch.

    At the train epoch's end rather than after validation: the compression callback closes a
    stage there (before this callback, which Lightning runs last), so the file holds the state
    the next epoch starts from, and resuming from it continues exactly.
    """
    # No monitor and top-1: each epoch's file replaces the one before, under one name.
    return ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="last", monitor=None, save_top_k=1,
                           every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, test and summarise one configuration; returns the summary dict."""
    start = time.perf_counter()
    out = _output_dir(cfg)
    if (out / "summary.json").exists():
        raise ConfigError(f"{out} already holds a finished run (summary.json); give this run another folder "
                          "(hydra.run.dir=..., or output_dir=...) so that nothing is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    check_accelerator(cfg)
    apply_baseline(cfg)
    resume_from = resume_checkpoint(cfg, out)
    pl.seed_everything(int(cfg.seed), workers=True)
    # dense embedding gradients are re-allocated every training step; see runtime.py
    reuse_freed_memory()

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    if hasattr(datamodule, "encoder"):  # file data: new raw rows can be encoded from the run folder alone
        datamodule.encoder().save(out / ENCODER_DIR)
    schema = datamodule.schema
    model = instantiate(cfg.model, schema=schema.to_dict(), _convert_="all")
    if cfg.get("baseline"):
        load_baseline_weights(model, cfg.baseline)

    callbacks = build_callbacks(cfg) + early_stopping_callbacks(cfg, datamodule)
    checkpointing = bool(cfg.trainer.get("enable_checkpointing", True))
    if checkpointing:
        callbacks += [RandomStateCheckpoint(), epoch_checkpoint(out)]
    logger = instantiate(cfg.logger, save_dir=str(out)) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(out),
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    metrics = dict(trainer.callback_metrics)  # val metrics: trainer.test replaces callback_metrics
    best = next((c for c in callbacks if isinstance(c, BestWeights)), None)
    if best is not None and best.restored:
        metrics.update(best.best_metrics)  # the validation figures of the weights that are saved and tested

    # Saved before testing, so that a failing test step (a test split too small for the DDP
    # ranks, say) does not take the trained model with it.
    ckpt_path = None
    if cfg.get("save_checkpoint", True):
        ckpt_path = out / "last.ckpt"
        trainer.save_checkpoint(str(ckpt_path), weights_only=False)  # with callback states: resumable
    trainer.test(model, datamodule=datamodule, verbose=True)
    metrics.update(trainer.callback_metrics)

    throughput = next(c for c in callbacks if isinstance(c, TrainingThroughput))
    summary: dict[str, Any] = {
        "model": type(model).__name__.lower(),
        "data": datamodule.name if hasattr(datamodule, "name") else type(datamodule).__name__,
        "params": count_parameters(model),
        "test_auc": metric(metrics, "test", "auc"),
        "test_logloss": metric(metrics, "test", "logloss"),
        "val_auc": metric(metrics, "val", "auc"),
        "val_logloss": metric(metrics, "val", "logloss"),
        "train_samples_per_s": throughput.samples_per_s,
        "train_samples": throughput.samples,
        "epochs": int(trainer.current_epoch),
        "seed": int(cfg.seed),
        "wall_s": None,
        "output_dir": str(out),
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "resumed_from": str(resume_from) if resume_from else None,
        "baseline_checkpoint": str(cfg.baseline) if cfg.get("baseline") else None,
    }
    if hasattr(datamodule, "data_report"):
        summary["data_report"] = datamodule.data_report()
    for callback in callbacks:
        if hasattr(callback, "summary"):
            summary.update(callback.summary())
    summary["wall_s"] = round(time.perf_counter() - start, 2)
    if logger:
        log_run_hparams(trainer, cfg, summary)
    if trainer.is_global_zero:
        json_path, _ = write_summary(summary, out)
        log.info("summary written to %s", json_path)
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    filter_noise()

    def task() -> None:
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        run(cfg)

    run_reporting_errors(task)


if __name__ == "__main__":
    main()
