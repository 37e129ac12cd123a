"""lightning-afm: low-rank compression of CTR models (Atomic Feature Mimicking) for PyTorch Lightning.

The Lightning-facing names load lazily, so ``import lightning_afm.compress`` stays free of Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AFMCompressionCallback": "lightning_afm.callbacks.afm_compression",
    "MLPStage": "lightning_afm.callbacks.stages",
    "EmbeddingStage": "lightning_afm.callbacks.stages",
    "Schema": "lightning_afm.data.schema",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_afm' has no attribute {name!r}")
