"""Checkpoints a fit can resume from exactly: atomic files, and the random state inside them.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file beside the target and
  renames it into place, so a kill or a full disk during the write leaves the previous
  ``last.ckpt`` intact instead of a truncated one.
* :class:`RandomStateCheckpoint` puts the random generators' states (Python, numpy, torch CPU
  and CUDA) into every checkpoint and restores them on resume. Lightning saves the weights,
  optimizer and loop counters but not these, so a resumed fit with dropout drew other masks
  than the uninterrupted fit; with them, resuming at an epoch boundary gives the same result.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear whole or not at all (temporary file + rename).

    Local paths only (``os.replace`` is atomic within one file system); other URLs fall back to
    Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        target = Path(path)
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class RandomStateCheckpoint(pl.Callback):
    """Save the random generators' states in checkpoints and restore them when a fit resumes.

    The states are plain tensors and lists (``torch.load(weights_only=True)`` reads them). A
    checkpoint written at the end of an epoch then resumes into the same dropout masks and the
    same shuffles as the fit that wrote it would have drawn next.
    """

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state: dict[str, Any] = {
            "python": _to_plain(random.getstate()),
            "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                      "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                      "cached_gaussian": float(numpy_state[4])},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if "python" in state_dict:
            random.setstate(_from_plain(state_dict["python"]))
        if "numpy" in state_dict:
            n = state_dict["numpy"]
            np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                                 n["cached_gaussian"]))
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _to_plain(value: Any) -> Any:
    """Python's RNG state (nested tuples of ints) as nested lists, which ``weights_only`` loads."""
    return [_to_plain(v) for v in value] if isinstance(value, tuple) else value


def _from_plain(value: Any) -> Any:
    return tuple(_from_plain(v) for v in value) if isinstance(value, list) else value
