"""The run's settings and final test AUC as logger hyperparameters (TensorBoard's HParams view).

A rank sweep then compares in one table: one row per run with its model, data, seed and, per
compression stage, the method and the rank it ended with (the embedding rank may have grown),
against ``hp_metric`` = the final test AUC.

A stage with ``rank="auto"`` logs its rank as the string ``"auto"``; the ranks a budget chose,
the variance each keeps, and the budget's outcome (parameters, and for a latency budget the
measured milliseconds) go to the loggers as metrics ``budget/...`` (:func:`budget_metrics`).
"""

from __future__ import annotations

from typing import Any, Mapping

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig


def run_hparams(cfg: DictConfig, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{name: value}`` of the settings that tell runs of a sweep apart."""
    params: dict[str, Any] = {
        "model": summary.get("model"),
        "data": summary.get("data"),
        "seed": int(cfg.seed),
        "lr": float(cfg.model.get("lr")) if cfg.get("model") and cfg.model.get("lr") is not None else None,
        "compression": "none",
        "params": summary.get("params"),
    }
    compression = cfg.get("compression") or {}
    if compression:
        params["compression/baseline_epochs"] = compression.get("baseline_epochs")
    methods = []
    for stage in summary.get("stages") or []:
        name = stage.get("name", "stage")
        methods.append(f"{name}:{stage.get('method')}")
        params[f"compression/{name}/method"] = stage.get("method")
        params[f"compression/{name}/rank"] = stage.get("rank")
    if methods:
        params["compression"] = ",".join(methods)
    return {k: v for k, v in params.items() if v is not None}


def budget_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The budget's choices as flat metrics: ``budget/rank/<target>``, ``budget/kept_variance/<target>``,
    ``budget/params`` and, for a latency budget, ``budget/latency_ms`` (measured) and
    ``budget/latency_budget_ms``. Empty without a budget."""
    budget = summary.get("budget") or {}
    out: dict[str, float] = {}
    for name, rank in (budget.get("ranks") or {}).items():
        out[f"budget/rank/{name}"] = float(rank)
    for name, kept in (budget.get("kept_variance") or {}).items():
        out[f"budget/kept_variance/{name}"] = float(kept)
    for key in ("params", "latency_ms", "latency_budget_ms"):
        if budget.get(key) is not None:
            out[f"budget/{key}"] = float(budget[key])
    return out


def log_run_hparams(trainer: pl.Trainer, cfg: DictConfig, summary: Mapping[str, Any]) -> None:
    """Log :func:`run_hparams` with ``hp_metric`` (the final test AUC) and :func:`budget_metrics` to
    every logger of ``trainer``."""
    metrics = {}
    if summary.get("test_auc") is not None:
        metrics["hp_metric"] = float(summary["test_auc"])
    metrics.update(budget_metrics(summary))
    params = run_hparams(cfg, summary)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)  # the HParams view pairs them
        else:
            logger.log_hyperparams(params)
            if metrics:
                logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
