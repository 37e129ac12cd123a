"""Where a fit starts from: a checkpoint to resume (``ckpt_path=`` / ``resume=true``) or a
trained baseline to compress (``baseline=PATH``).

Resuming restores everything (weights, optimizer, epoch, the compression plan and stage, the
random state) and continues the same schedule. Compressing a baseline loads only its weights
into a fresh model and runs the compression stages from epoch 0: a plain checkpoint's
optimizer and loop state belong to another schedule, which is why ``trainer.fit(ckpt_path=
baseline)`` is not the route for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_afm.app.errors import ConfigError
from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Keys that may differ between a run and the run it resumes.
RESUME_FREE_KEYS = ("resume", "ckpt_path", "output_dir")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (our checkpoints hold plain types only), with errors
    that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist (or is not a file); give the path of a .ckpt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors, truncated files, foreign objects
        raise ConfigError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "It is truncated, not a Lightning checkpoint, or holds objects other than tensors and plain "
            "types (only those are loaded, for safety).") from err


def comparable_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config without the keys that may change on resume (resolved, ``hydra`` dropped)."""
    data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict)
    for key in (*RESUME_FREE_KEYS, "hydra"):
        data.pop(key, None)
    return data


def find_resumable_run(cfg: DictConfig, output_dir: Path) -> Path:
    """The newest ``checkpoints/last.ckpt`` of an unfinished run with this configuration.

    Runs live in ``outputs/DATE/TIME[-N]/``; each keeps its config in ``.hydra/config.yaml``.
    A run is unfinished when it has a last checkpoint but no ``summary.json``. The search starts
    two levels above this run's folder (``outputs/``).
    """
    root = output_dir.parent.parent
    wanted = comparable_config(cfg)
    candidates = []
    for ckpt in root.glob(f"*/*/{LAST_CHECKPOINT.as_posix()}"):
        run_dir = ckpt.parent.parent
        if run_dir == output_dir or (run_dir / "summary.json").exists():
            continue
        saved = run_dir / ".hydra" / "config.yaml"
        if saved.is_file() and comparable_config(OmegaConf.load(saved)) == wanted:
            candidates.append(ckpt)
    if not candidates:
        raise ConfigError(
            f"resume=true found no unfinished run of this configuration under {root} (a run folder with "
            f"{LAST_CHECKPOINT} and no summary.json, whose .hydra/config.yaml matches these settings). "
            "Give the checkpoint directly with ckpt_path=PATH, or drop resume=true to start afresh.")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> Path | None:
    """The checkpoint the fit resumes from, or None for a fresh fit."""
    if cfg.get("ckpt_path") and cfg.get("resume"):
        raise ConfigError("give either ckpt_path=PATH or resume=true, not both")
    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path))
        load_checkpoint(path)  # fail now, with the file's name, rather than inside Lightning
        return path
    if cfg.get("resume"):
        path = find_resumable_run(cfg, output_dir)
        log.info("resuming from %s", path)
        return path
    return None


def apply_baseline(cfg: DictConfig) -> None:
    """With ``baseline=PATH``: no baseline epochs (the schedule starts compressing at epoch 0).

    ``trainer.max_epochs`` shrinks by the baseline epochs it no longer needs.
    """
    if not cfg.get("baseline"):
        return
    if cfg.get("ckpt_path") or cfg.get("resume"):
        raise ConfigError("baseline=PATH starts a new compression from a trained model; it cannot be combined "
                          "with ckpt_path= or resume=true (those continue an earlier run)")
    compression = cfg.get("compression")
    if not compression or not (compression.get("mlp") or compression.get("emb")):
        raise ConfigError("baseline=PATH compresses a trained model, but no compression is configured; "
                          "add compression=afm (or svd, afm_mlp, afm_emb...)")
    skipped = int(compression.get("baseline_epochs", 1) or 0)
    with open_dict(cfg):
        compression.baseline_epochs = 0
        max_epochs = cfg.trainer.get("max_epochs")
        if max_epochs is not None and max_epochs > 0:
            cfg.trainer.max_epochs = max(1, int(max_epochs) - skipped)


def load_baseline_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a trained, uncompressed checkpoint's weights into ``model`` (same class, schema, sizes)."""
    checkpoint = load_checkpoint(path)
    if PLAN_CHECKPOINT_KEY in checkpoint:
        raise ConfigError(
            f"baseline={path} is already compressed (it carries a compression plan); give the checkpoint of a "
            "plain model, e.g. the last.ckpt of a compression=none run, or load this one with "
            "ckpt_path= to resume it")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"baseline={path} has no state_dict; give a Lightning checkpoint (.ckpt) of the model")
    saved = checkpoint.get("hyper_parameters") or {}
    mine = dict(getattr(model, "hparams", {}))
    if saved.get("schema") and mine.get("schema") and saved["schema"] != mine["schema"]:
        raise ConfigError(
            f"baseline={path} was trained on other data: its schema (fields and vocabulary sizes) differs from "
            "this run's. Use the same data config (data=..., data.path=..., min_count, seed) as the baseline run.")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: another embedding width, MLP or vocabulary
        raise ConfigError(
            f"baseline={path} does not fit model {type(model).__name__}: {str(err).splitlines()[-1].strip()}. "
            "Give a checkpoint of the same model, settings and data as this run.") from err
    if missing or unexpected:
        raise ConfigError(
            f"baseline={path} does not fit model {type(model).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. Give a checkpoint of the same model and settings (model=..., embedding_dim, mlp_hidden).")
    log.info("loaded baseline weights from %s", path)

