"""Build the compression callback from the Hydra ``compression`` group.

The group's config has an optional ``mlp`` and ``emb`` block (a ``null`` block is no stage),
in that order, plus the callback's own keys::

    baseline_epochs: 1
    mlp: {method: afm, rank: 64, relu: true, epochs: 1, lr: 1e-3, weight_decay: 1e-3, ...}
    emb: {method: afm, rank: 2, fold: auto, epochs: 1, ...}
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from lightning_afm.callbacks.afm_compression import AFMCompressionCallback
from lightning_afm.callbacks.stages import EmbeddingStage, MLPStage

STAGE_TYPES = {"mlp": MLPStage, "emb": EmbeddingStage}
CALLBACK_KEYS = ("baseline_epochs", "eval_splits", "train_eval_rows", "statistics_batch_size", "progress")


def _build_stage(key: str, stage_type: type, block: dict[str, Any]):
    """One stage from its config block; a key the stage does not have is named with the ones it has."""
    allowed = sorted(f.name for f in fields(stage_type))
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise ValueError(f"compression.{key} has unknown keys {unknown}; a {stage_type.__name__} takes {allowed}")
    try:
        return stage_type(**block)
    except ValueError as err:
        raise ValueError(f"compression.{key}: {err}") from err


def build_compression_callback(cfg: DictConfig | Mapping[str, Any] | None) -> AFMCompressionCallback | None:
    """An :class:`AFMCompressionCallback` for the config, or ``None`` when it configures no stage."""
    if cfg is None:
        return None
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    unknown = sorted(set(data) - set(STAGE_TYPES) - set(CALLBACK_KEYS))
    if unknown:
        raise ValueError(
            f"compression config has unknown keys {unknown}; allowed: {sorted(STAGE_TYPES) + list(CALLBACK_KEYS)}")
    stages = []
    for key, stage_type in STAGE_TYPES.items():
        block = data.get(key)
        if block:
            stages.append(_build_stage(key, stage_type, dict(block)))
    if not stages:
        return None
    kwargs = {k: data[k] for k in CALLBACK_KEYS if data.get(k) is not None}
    if "eval_splits" in kwargs:
        kwargs["eval_splits"] = tuple(kwargs["eval_splits"])
    return AFMCompressionCallback(stages, **kwargs)
