"""Every use of Lightning's private API, in one place, behind a version check.

The compression callback needs a few things Lightning keeps private: the fit loop's data sources
(to read the training data at fit start, before the loop has built its dataloaders), the cached
training loader (to rebuild it with a stage's batch size), the launcher type (to refuse
strategies that train in spawned processes) and the DDP wrapper set-up (to re-wrap a model whose
parameters changed). Private names change between Lightning releases without notice, so:

* :data:`SUPPORTED` is the range this package is tested with; :func:`check_lightning_version`
  (called when an ``AFMCompressionCallback`` is made) raises an error naming it outside it, unless
  ``LIGHTNING_AFM_SKIP_VERSION_CHECK=1`` (for trying a newer Lightning at one's own risk);
* each accessor below checks that the attribute exists, and otherwise raises an error that names
  the Lightning version and the supported range rather than an ``AttributeError`` deep in a fit.
"""

from __future__ import annotations

import os
from typing import Any

import lightning
import lightning.pytorch as pl
from packaging.version import Version

#: ``(lowest, first unsupported)``: the Lightning versions whose private API this module reads.
SUPPORTED = ("2.2", "2.7")
SKIP_ENV = "LIGHTNING_AFM_SKIP_VERSION_CHECK"


class UnsupportedLightningError(RuntimeError):
    """The installed Lightning is outside :data:`SUPPORTED`, or lacks a private attribute we read."""


def supported_range() -> str:
    return f"lightning>={SUPPORTED[0]},<{SUPPORTED[1]}"


def check_lightning_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedLightningError` when ``version`` (default: the installed one) is outside
    :data:`SUPPORTED` and ``LIGHTNING_AFM_SKIP_VERSION_CHECK`` is not set."""
    version = version or lightning.__version__
    if os.environ.get(SKIP_ENV) == "1":
        return
    if not Version(SUPPORTED[0]) <= Version(Version(version).base_version) < Version(SUPPORTED[1]):
        raise UnsupportedLightningError(
            f"lightning-afm's compression callback reads Lightning internals and supports {supported_range()}; "
            f"lightning {version} is installed. Install a supported version (pip install '{supported_range()}'), "
            f"or set {SKIP_ENV}=1 to try this one at your own risk.")


def _get(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``path="a.b"``, with an error naming the version where an attribute is gone."""
    for name in path.split("."):
        if not hasattr(obj, name):
            raise UnsupportedLightningError(
                f"Lightning {lightning.__version__} has no {path!r} (missing {name!r}), which the compression "
                f"callback needs; it is tested with {supported_range()}")
        obj = getattr(obj, name)
    return obj


def _loaders_of(source: Any) -> Any:
    """What a Lightning ``_DataLoaderSource`` gives, or None when it holds nothing."""
    return source.dataloader() if source.is_defined() else None


def train_source_loaders(trainer: pl.Trainer) -> Any:
    """The training dataloader(s) the fit will use, asked from its data source (built anew, before the
    fit loop has built its own), or None."""
    return _loaders_of(_get(trainer, "fit_loop._data_source"))


def val_source_loaders(trainer: pl.Trainer) -> Any:
    """The validation dataloader(s), from the data source, before the first validation has built them."""
    return _loaders_of(_get(trainer, "fit_loop.epoch_loop.val_loop._data_source"))


def reset_train_dataloader(trainer: pl.Trainer) -> None:
    """Make the fit loop rebuild its training dataloader at the next epoch (after a batch size change)."""
    _get(trainer, "fit_loop._combined_loader")
    trainer.fit_loop._combined_loader = None


def trains_in_spawned_processes(strategy: Any) -> bool:
    """Whether ``strategy`` runs the fit in processes it spawns (``ddp_spawn``, ``ddp_fork``, notebooks)."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(getattr(strategy, "launcher", None), _MultiProcessingLauncher)


def rewrap_ddp(strategy: Any, module: Any) -> None:
    """Wrap ``module`` in a fresh ``DistributedDataParallel`` the way the DDP strategy does at set-up."""
    strategy.model = _get(strategy, "_setup_model")(module)
    if hasattr(strategy, "_register_ddp_hooks"):
        strategy._register_ddp_hooks()
