"""Build the compression callback from the Hydra ``compression`` group.

Each block names the class it builds with Hydra's ``_target_``, so a user's own stage or
callback subclass is one override away (``compression.mlp._target_=my_pkg.MyMLPStage``)::

    _target_: lightning_afm.callbacks.AFMCompressionCallback
    baseline_epochs: 1
    mlp: {_target_: lightning_afm.callbacks.MLPStage, method: afm, rank: 64, relu: true, ...}
    emb: {_target_: lightning_afm.callbacks.EmbeddingStage, method: afm, rank: 2, fold: auto, ...}

The stages run in the order ``mlp``, then ``emb`` (the paper compresses the MLP first); a
``null`` block is no stage. A block without ``_target_`` (a plain dict from Python) builds the
key's default class. Keys are checked against the target's fields before anything is built, so
a typo is named with the keys the class takes instead of surfacing as a ``TypeError``.
"""

from __future__ import annotations

import inspect
from dataclasses import fields, is_dataclass
from typing import Any, Mapping

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_afm.callbacks.afm_compression import AFMCompressionCallback
from lightning_afm.callbacks.stages import CompressionStage, EmbeddingStage, MLPStage

#: The stage blocks, in the order their stages run, with the class a block without ``_target_`` builds.
STAGE_DEFAULTS: dict[str, type[CompressionStage]] = {"mlp": MLPStage, "emb": EmbeddingStage}
TARGET = "_target_"


def _target_class(where: str, target: Any, default: type, base: type) -> type:
    """The class ``target`` names (``default`` when None); it must be ``base`` or a subclass."""
    if target is None:
        return default
    try:
        cls = get_class(str(target))
    except Exception as err:  # Hydra raises ImportError or ValueError depending on the part that fails
        raise ValueError(f"{where}.{TARGET}: cannot import {target!r} ({err}); give a dotted path to a class, "
                         f"e.g. {default.__module__}.{default.__qualname__}") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{where}.{TARGET}: {target!r} is not a {base.__name__} (or a subclass of it)")
    return cls


def _accepted_keys(cls: type) -> list[str]:
    """The keyword arguments ``cls`` takes: a dataclass's fields, else its ``__init__``'s parameters."""
    if is_dataclass(cls):
        return sorted(f.name for f in fields(cls) if f.init)
    params = inspect.signature(cls.__init__).parameters
    return sorted(name for name, p in params.items()
                  if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _build(where: str, cls: type, block: Mapping[str, Any]) -> Any:
    """``cls(**block)``, with unknown keys and the class's own ValueErrors named by config path."""
    allowed = _accepted_keys(cls)
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; a {cls.__name__} takes {allowed}")
    try:
        return cls(**block)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def build_compression_callback(cfg: DictConfig | Mapping[str, Any] | None) -> AFMCompressionCallback | None:
    """An :class:`AFMCompressionCallback` (or the subclass ``_target_`` names) for the config,
    or ``None`` when it configures no stage."""
    if cfg is None:
        return None
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    callback_type = _target_class("compression", data.pop(TARGET, None), AFMCompressionCallback,
                                  AFMCompressionCallback)
    stages = []
    for key, default in STAGE_DEFAULTS.items():
        block = data.pop(key, None)
        if block:
            block = dict(block)
            stage_type = _target_class(f"compression.{key}", block.pop(TARGET, None), default, CompressionStage)
            stages.append(_build(f"compression.{key}", stage_type, block))
    if not stages:
        return None
    if "eval_splits" in data and data["eval_splits"] is not None:
        data["eval_splits"] = tuple(data["eval_splits"])
    # null: the callback's default; a nested ``_target_`` block (e.g. a ``forward_fn`` with
    # ``_partial_: true``) is built by Hydra as usual
    kwargs = {k: instantiate(v) if isinstance(v, dict) and TARGET in v else v
              for k, v in data.items() if v is not None}
    allowed = [k for k in _accepted_keys(callback_type) if k != "stages"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"compression config has unknown keys {unknown}; allowed: "
                         f"{sorted([*STAGE_DEFAULTS, TARGET, *allowed])}")
    try:
        return callback_type(stages, **kwargs)
    except ValueError as err:
        raise ValueError(f"compression: {err}") from err
