"""Data: raw CTR tables -> encoded arrays + :class:`Schema`; synthetic data; LightningDataModules.

Public API (imported lazily, so ``lightning_afm.data.pipeline`` runs without
loading torch or Lightning)::

    Schema, CategoricalField                       the contract with the models
    CTRDataModule                                  base DataModule (batching, DDP shards, reshuffle)
    SyntheticDataModule, CriteoDataModule,
    AvazuDataModule, CSVDataModule                 the four sources (conf/data/*.yaml)
    preprocess, EncodeOptions, PreprocessResult    file -> cache
    criteo_source, avazu_source, table_source,
    CsvSource, ParquetSource, TableSpec            readers
    SyntheticConfig, make_synthetic, make_truth,
    write_criteo_format, binary_auc                synthetic data
    Encoder, EncodedRows                           raw rows -> model inputs, saved with the model (serving)
    EncodedSplit, BatchStream, batch_plan,
    num_batches                                    batching
    DataError, DataConfigError, CacheError, MalformedRowError  errors
"""

from __future__ import annotations

import importlib

from .errors import CacheError, DataConfigError, DataError, MalformedRowError
from .schema import CATEGORICAL, LABEL, NUMERIC, CategoricalField, Schema

_LAZY = {
    "CTRDataModule": "datamodule",
    "SyntheticDataModule": "datamodule",
    "CriteoDataModule": "datamodule",
    "AvazuDataModule": "datamodule",
    "CSVDataModule": "datamodule",
    "preprocess": "pipeline",
    "encode_arrays": "pipeline",
    "EncodeOptions": "pipeline",
    "PreprocessResult": "pipeline",
    "criteo_source": "readers",
    "avazu_source": "readers",
    "table_source": "readers",
    "CsvSource": "readers",
    "ParquetSource": "readers",
    "TableSpec": "readers",
    "BadRows": "readers",
    "SyntheticConfig": "synthetic",
    "make_synthetic": "synthetic",
    "make_truth": "synthetic",
    "write_criteo_format": "synthetic",
    "binary_auc": "synthetic",
    "EncodedSplit": "batching",
    "BatchStream": "batching",
    "batch_plan": "batching",
    "num_batches": "batching",
    "split_assignment": "split",
    "default_cache_dir": "cache",
    "Encoder": "encoder",
    "EncodedRows": "encoder",
}

__all__ = [
    "CATEGORICAL", "LABEL", "NUMERIC", "CategoricalField", "Schema",
    "CacheError", "DataConfigError", "DataError", "MalformedRowError", *_LAZY,
]  # fmt: skip


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
