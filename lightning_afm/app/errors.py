"""How the app reports problems: a sentence for the user's mistakes, a traceback for ours.

Errors in the user's input or configuration (a missing file, a malformed row, an impossible
rank, a GPU that is not there) are printed as one message without a traceback, and the app
exits with status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback too. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Callable, TypeVar

from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_afm.data.errors import DataError

log = logging.getLogger("lightning_afm")

T = TypeVar("T")


class ConfigError(ValueError):
    """The app's configuration or command line asks for something that cannot be done."""


# Raised for the user's input or settings. ValueError and TypeError come from argument checks
# throughout the package (every one of them says what was wrong); OSError from files and disks.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, MisconfigurationException, ValueError, TypeError, OSError)

# Lightning and torch messages that say nothing actionable to a user of this app.
NOISE = (
    r".*isinstance\(treespec, LeafSpec\).*",                 # torch pytree deprecation, inside Lightning
    r".*weights_only.*",                                      # torch.load default notices
    r".*litlogger.*", r".*LitLogger.*",                       # Lightning's cloud-logger tip
    r".*does not have many workers.*",                        # our loaders batch in the dataset
    r".*`IterableDataset` has `__len__` defined.*",           # ours is sharded by the datamodule
    r".*smaller than the logging interval.*",                 # small data or large finetune batches: expected
)


# Lightning info lines (logged through its rank-zero logger) that are advertising, not information.
LOG_NOISE = ("litlogger", "LitLogger")


class _DropLogNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(word in message for word in LOG_NOISE)


def filter_noise() -> None:
    """Silence the warnings in ``NOISE`` and the log lines in ``LOG_NOISE``; everything else shows."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLogNoise) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLogNoise())


def user_error_cause(err: BaseException) -> BaseException | None:
    """The user-facing error behind ``err`` (Hydra's InstantiationException wraps the real one)."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__  # type: ignore[assignment]
        seen += 1
    return None


def run_reporting_errors(task: Callable[[], T]) -> T:
    """Run ``task``; on a user error print its message (no traceback) and exit with status 1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return task()
    try:
        return task()
    except Exception as err:
        cause = user_error_cause(err)
        if cause is None:
            raise
        message = str(cause) or type(cause).__name__
        print(f"lightning-afm: error: {message}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
