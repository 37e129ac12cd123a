"""LightningDataModules: synthetic data, Criteo, Avazu and any CSV/Parquet CTR table.

All share :class:`CTRDataModule`: after ``prepare_data()`` and ``setup()`` it
exposes ``.schema`` (build the model from it) and serves the splits as
:class:`BatchStream` s wrapped in ``DataLoader(batch_size=None)``:

* the train loader reshuffles every epoch (from ``seed`` and the trainer's
  epoch) and reads ``self.batch_size`` whenever it is built or iterated, so a
  callback may set ``dm.batch_size`` and have the trainer reload it;
* every loader is sharded over DDP ranks (disjoint, complete, equal batch counts);
* :meth:`statistics_dataloader` streams the training split once, in order,
  for the compression statistics pass.

The file-based modules encode their file once into a cache (see
:mod:`.pipeline`) in ``prepare_data`` and memory-map it in ``setup``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from .batching import BatchStream, EncodedSplit, rank_and_world
from .cache import load_split
from .encoder import CHECKPOINT_KEY, Encoder
from .errors import DataConfigError
from .pipeline import EncodeOptions, PreprocessResult, encode_arrays, preprocess
from .readers import TableSource, avazu_source, criteo_source, table_source
from .schema import Schema
from .split import SPLIT_NAMES, split_assignment
from .synthetic import SyntheticConfig, binary_auc, iter_synthetic, make_truth

log = logging.getLogger(__name__)


class CTRDataModule(pl.LightningDataModule):
    """Serves encoded CTR splits in batches; subclasses say where the splits come from.

    Args:
        batch_size: training batch size (paper: 1000 Criteo, 500 Avazu). May be
            changed between epochs; the next train loader uses the new value.
        eval_batch_size: batch size of the val/test/predict/statistics loaders
            (default: ``batch_size``).
        test_fraction, val_fraction: shares of all rows for test and validation
            (``val_fraction=0``: no validation loader).
        seed: the split seed and the shuffle seed (for synthetic data also the generator's).
        split_seed: the seed of the train/val/test split alone, when it should differ from
            ``seed`` (e.g. the paper's Table 13 divides the data with 5 seeds, line 1202-1203,
            while the synthetic data stay the same table); ``None``: ``seed``.
        shuffle: reshuffle the training rows every epoch.
        pin_memory: pin batches (for GPU training).
    """

    name = "ctr"

    def __init__(
        self,
        batch_size: int = 1000,
        eval_batch_size: int | None = None,
        test_fraction: float = 0.1,
        val_fraction: float = 0.0,
        seed: int = 2020,
        shuffle: bool = True,
        pin_memory: bool = False,
        split_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else None
        self.test_fraction = float(test_fraction)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.split_seed = self.seed if split_seed is None else int(split_seed)
        self.shuffle = bool(shuffle)
        self.pin_memory = bool(pin_memory)
        self.schema: Schema | None = None
        self._splits: dict[str, EncodedSplit] = {}
        self._passes_without_trainer = 0
        if self.batch_size < 1 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise DataConfigError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")

    # -- what subclasses provide -------------------------------------------------------------
    def _load(self) -> tuple[Schema, dict[str, EncodedSplit]]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- LightningDataModule -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.schema is None:
            self.schema, self._splits = self._load()
            sizes = {k: len(v) for k, v in self._splits.items()}
            log.info("%s data: %s rows per split, %d categorical + %d numeric fields", self.name, sizes, self.schema.num_categorical, self.schema.num_numeric)

    def data_report(self) -> dict:
        """What happened to the input's rows, for a run's ``summary.json`` (see :meth:`PreprocessResult.data_report`).

        Generated data reads no file and skips nothing: the rows per split only.
        """
        if self.schema is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare_data() and setup() first")
        sizes = {name: len(split) for name, split in self._splits.items()}
        return {
            "source": self.name,
            "rows_encoded": sum(sizes.values()),
            "split_rows": sizes,
            "rows_skipped": 0,
            "skipped": {"total": 0, "by_reason": {}, "first": []},
        }

    def split(self, name: str) -> EncodedSplit:
        """The encoded rows of ``"train"``, ``"val"`` or ``"test"``."""
        if self.schema is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare_data() and setup() first")
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
        return self._splits[name]

    def num_rows(self, name: str) -> int:
        return len(self.split(name))

    @property
    def effective_eval_batch_size(self) -> int:
        return int(self.eval_batch_size or self.batch_size)

    def _rank_world(self) -> tuple[int, int]:
        return rank_and_world(self.trainer)

    def _train_epoch(self) -> int:
        """The trainer's epoch; without a trainer, the number of training passes started so far."""
        if self.trainer is not None:
            return int(self.trainer.current_epoch)
        epoch = self._passes_without_trainer
        self._passes_without_trainer += 1
        return epoch

    def _loader(self, split: EncodedSplit, batch_size, shuffle: bool) -> DataLoader:
        stream = BatchStream(split, batch_size, shuffle=shuffle, seed=self.seed, epoch=self._train_epoch, rank_world=self._rank_world)
        return DataLoader(stream, batch_size=None, num_workers=0, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split("train"), lambda: self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        split = self.split("val")
        if len(split) == 0:
            return []  # Lightning skips validation when given no loaders
        return self._loader(split, lambda: self.effective_eval_batch_size, shuffle=False)

    def test_dataloader(self):
        split = self.split("test")
        if len(split) == 0:
            return []
        return self._loader(split, lambda: self.effective_eval_batch_size, shuffle=False)

    def predict_dataloader(self):
        return self.test_dataloader()

    def statistics_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The training split once, in order, sharded over ranks: every row exactly once.

        For the compression statistics pass; ``batch_size`` defaults to the eval batch size.
        """
        size = int(batch_size) if batch_size is not None else self.effective_eval_batch_size
        return self._loader(self.split("train"), size, shuffle=False)


def _split_from_cache(directory: Path) -> EncodedSplit:
    arrays = load_split(directory, mmap=True)
    return EncodedSplit(arrays["categorical"], arrays["numeric"], arrays["label"])


class _FileDataModule(CTRDataModule):
    """A module whose rows come from a file, encoded once into the cache."""

    def __init__(
        self,
        path: str | Path,
        cache_dir: str | Path | None = None,
        min_count: int = 1,
        log_buckets: bool = False,
        on_bad_rows: str = "error",
        progress: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if path is None or str(path) in ("", "???"):
            raise DataConfigError(f"{type(self).__name__} needs the path of the data file (data.path=...)")
        self.path = Path(str(path)).expanduser()
        self.cache_dir = Path(str(cache_dir)).expanduser() if cache_dir else None
        self.options = EncodeOptions(
            min_count=int(min_count),
            log_buckets=bool(log_buckets),
            test_fraction=self.test_fraction,
            val_fraction=self.val_fraction,
            seed=self.split_seed,
            on_bad_rows=str(on_bad_rows),
        )
        self.progress = bool(progress)
        self.preprocess_result: PreprocessResult | None = None

    def source(self) -> TableSource:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.preprocess_result = preprocess(self.source(), self.options, self.cache_dir, progress=self.progress)

    def encoder(self) -> Encoder:
        """The frozen preprocessing of this data (vocabularies, numeric ranges, reader settings): what
        serving needs to encode new raw rows exactly as these were (:mod:`.encoder`)."""
        if self.preprocess_result is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare_data() or setup() first")
        return Encoder.from_cache(self.preprocess_result.path)

    def state_dict(self) -> dict:
        """The encoder, which Lightning then stores in every checkpoint (plain types and Arrow IPC bytes).

        Rebuilt at each save from the cache (a copy of the vocabularies, not kept in memory between saves).
        """
        if self.preprocess_result is None:
            return {}
        return {CHECKPOINT_KEY: self.encoder().to_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to restore on resume: the cache, keyed by the file and options, is the state."""

    def data_report(self) -> dict:
        """Rows read, encoded per split and skipped (count, reasons, the first lines) for ``summary.json``.

        Available after ``prepare_data()`` (or ``setup()``), also when the cache was reused.
        """
        if self.preprocess_result is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare_data() or setup() first")
        return self.preprocess_result.data_report()

    def _load(self) -> tuple[Schema, dict[str, EncodedSplit]]:
        if self.preprocess_result is None:  # another process prepared it, or setup() without prepare_data()
            self.preprocess_result = preprocess(self.source(), self.options, self.cache_dir, progress=self.progress)
        result = self.preprocess_result
        return result.schema, {name: _split_from_cache(result.path / name) for name in SPLIT_NAMES}


class CriteoDataModule(_FileDataModule):
    """Criteo ``train.txt`` (Kaggle Display Advertising Challenge), with the paper's defaults.

    26 categorical fields with full training vocabularies (``min_count=1``), 13
    integer fields min-max scaled, a random 90/10 split with seed 2020, batch 1000.

    Args:
        path: the ``train.txt`` file.
        cache_dir: where encoded caches live (default ``$LIGHTNING_AFM_CACHE`` or
            ``~/.cache/lightning_afm``).
        min_count, log_buckets, on_bad_rows: see :class:`EncodeOptions`.
        progress: show progress bars while encoding.
        **kwargs: :class:`CTRDataModule` arguments.
    """

    name = "criteo"

    def __init__(self, path: str | Path, batch_size: int = 1000, test_fraction: float = 0.1, seed: int = 2020, **kwargs) -> None:
        super().__init__(path, batch_size=batch_size, test_fraction=test_fraction, seed=seed, **kwargs)

    def source(self) -> TableSource:
        return criteo_source(self.path)


class AvazuDataModule(_FileDataModule):
    """Avazu ``train.csv`` with the paper's defaults: 22 categorical fields, 80/20 split, seed 2020, batch 500."""

    name = "avazu"

    def __init__(self, path: str | Path, batch_size: int = 500, test_fraction: float = 0.2, seed: int = 2020, **kwargs) -> None:
        super().__init__(path, batch_size=batch_size, test_fraction=test_fraction, seed=seed, **kwargs)

    def source(self) -> TableSource:
        return avazu_source(self.path)


class CSVDataModule(_FileDataModule):
    """Any CTR table as CSV (with a header row) or Parquet, configured by column lists.

    Example (Hydra): ``data=csv data.path=/x/table.csv data.label=click
    data.categorical=[site,device] data.numeric=[price] "data.sep=';'"``

    Args:
        path: the ``.csv`` / ``.parquet`` file.
        label: the 0/1 label column.
        categorical: categorical columns (each gets a vocabulary).
        numeric: numeric columns (min-max scaled; missing -> 0).
        sep: CSV delimiter.
        file_format: ``"csv"`` or ``"parquet"``; default from the file suffix.
        **kwargs: :class:`_FileDataModule` / :class:`CTRDataModule` arguments.
    """

    name = "csv"

    def __init__(
        self,
        path: str | Path,
        label: str = "label",
        categorical: Sequence[str] = (),
        numeric: Sequence[str] = (),
        sep: str = ",",
        file_format: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(path, **kwargs)
        self.label = str(label)
        self.categorical = [str(c) for c in (categorical or ())]
        self.numeric = [str(c) for c in (numeric or ())]
        self.sep = str(sep)
        self.file_format = file_format
        # "csv" or "parquet", as read: summaries and reports name the format the run used
        self.name = getattr(self.source(), "kind", "csv")  # a bad column list fails here, at construction

    def source(self) -> TableSource:
        return table_source(self.path, self.label, self.categorical, self.numeric, sep=self.sep, file_format=self.file_format)


class SyntheticDataModule(CTRDataModule):
    """The built-in default data: a synthetic CTR table with a hidden ground truth (see :mod:`.synthetic`).

    Generated straight to arrays in ``setup`` (deterministic in ``seed``, so
    every DDP rank builds the same table), then encoded like a file: vocabularies
    and min/max from the training split, rare values -> OOV.

    Args:
        num_rows: rows in all splits together.
        vocab_sizes: values per categorical field.
        num_numeric: numeric (count-like) fields, at most 5 distinct shapes, repeated.
        zipf_exponent, interaction_rank, interaction_share, base_rate, signal: the ground truth
            (see :class:`SyntheticConfig`).
        min_count: values seen fewer times in training map to OOV.
        **kwargs: :class:`CTRDataModule` arguments (defaults here: val 0.1, test 0.1).
    """

    name = "synthetic"

    def __init__(
        self,
        num_rows: int = 1_000_000,
        vocab_sizes: Sequence[int] | None = None,
        num_numeric: int = 5,
        zipf_exponent: float = 1.1,
        interaction_rank: int = 4,
        interaction_share: float = 0.6,
        base_rate: float = 0.22,
        signal: float = 1.0,
        min_count: int = 1,
        batch_size: int = 1000,
        test_fraction: float = 0.1,
        val_fraction: float = 0.1,
        seed: int = 2020,
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, **kwargs)
        defaults = SyntheticConfig()
        numeric = tuple(defaults.numeric[j % len(defaults.numeric)] for j in range(int(num_numeric)))
        self.config = SyntheticConfig(
            num_rows=int(num_rows),
            vocab_sizes=tuple(int(v) for v in vocab_sizes) if vocab_sizes is not None else defaults.vocab_sizes,
            numeric=numeric,
            zipf_exponent=float(zipf_exponent),
            interaction_rank=int(interaction_rank),
            interaction_share=float(interaction_share),
            base_rate=float(base_rate),
            signal=float(signal),
            seed=int(seed),
        )
        self.min_count = int(min_count)
        self.true_logit: dict[str, np.ndarray] = {}

    def _load(self) -> tuple[Schema, dict[str, EncodedSplit]]:
        truth = make_truth(self.config)
        chunks = list(iter_synthetic(self.config, truth))
        categorical = np.concatenate([c.categorical for c in chunks])
        numeric = np.concatenate([c.numeric for c in chunks])
        label = np.concatenate([c.label for c in chunks])
        logit = np.concatenate([c.logit for c in chunks])
        assignment = split_assignment(len(label), self.test_fraction, self.val_fraction, self.split_seed)
        names = [f"C{i + 1}" for i in range(categorical.shape[1])]
        numeric_names = [f"I{j + 1}" for j in range(numeric.shape[1])]
        schema, arrays = encode_arrays(categorical, numeric, label, assignment, names, numeric_names, self.min_count)
        splits = {name: EncodedSplit(**a) for name, a in arrays.items()}
        self.true_logit = {name: logit[assignment == s] for s, name in enumerate(SPLIT_NAMES)}
        schema.extra["source"] = "synthetic"
        schema.extra["ground_truth_auc"] = {
            name: binary_auc(splits[name].label, self.true_logit[name]) for name in SPLIT_NAMES if len(splits[name])
        }
        return schema, splits

    def ground_truth_auc(self, split: str = "test") -> float:
        """AUC of the hidden true logit on a split: the ceiling a model can approach."""
        return binary_auc(self.split(split).label, self.true_logit[split])
