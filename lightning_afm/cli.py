"""The Hydra application: ``lightning-afm`` (same as ``python -m lightning_afm``).

``run(cfg)`` does the work and returns the summary, so tests and recipes can call it on a
composed config; ``main`` is the ``@hydra.main`` entry point around it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_afm.callbacks.throughput import TrainingThroughput
from lightning_afm.models import count_parameters
from lightning_afm.summary import write_summary

log = logging.getLogger(__name__)


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
            return float(value.item() if hasattr(value, "item") else value)
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, test and summarise one configuration; returns the summary dict."""
    start = time.perf_counter()
    out = _output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    schema = datamodule.schema
    model = instantiate(cfg.model, schema=schema.to_dict(), _convert_="all")

    callbacks = build_callbacks(cfg)
    logger = instantiate(cfg.logger, save_dir=str(out)) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(out),
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=datamodule)
    metrics = dict(trainer.callback_metrics)  # val metrics: trainer.test replaces callback_metrics
    trainer.test(model, datamodule=datamodule, verbose=True)
    metrics.update(trainer.callback_metrics)

    ckpt_path = None
    if cfg.get("save_checkpoint", True):
        ckpt_path = out / "last.ckpt"
        trainer.save_checkpoint(str(ckpt_path))

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
    }
    for callback in callbacks:
        if hasattr(callback, "summary"):
            summary.update(callback.summary())
    summary["wall_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_global_zero:
        json_path, _ = write_summary(summary, out)
        log.info("summary written to %s", json_path)
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    run(cfg)


if __name__ == "__main__":
    main()
