"""Fixtures shared by the test files: composing the app's Hydra config, a tiny synthetic
DataModule and a quiet CPU trainer.

Each test file used to carry its own copy of these; they live here so that a change of the
config layout or of the DataModule's arguments is made once.
"""

from __future__ import annotations

from typing import Callable, Sequence

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from lightning_afm.data import SyntheticDataModule


@pytest.fixture
def compose_app() -> Callable[..., DictConfig]:
    """``compose_app(overrides, config_name="config")``: the app's config as Hydra composes it."""

    def compose_(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
        with initialize_config_module(config_module="lightning_afm.conf", version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    return compose_


@pytest.fixture
def tiny_synthetic() -> Callable[..., SyntheticDataModule]:
    """``tiny_synthetic(**overrides)``: a prepared 4,000-row synthetic DataModule (4 small fields, 2 numeric)."""

    def make(**overrides) -> SyntheticDataModule:
        settings = dict(num_rows=4000, vocab_sizes=[5, 20, 60, 200], num_numeric=2, batch_size=200,
                        eval_batch_size=1000, val_fraction=0.1, test_fraction=0.1, seed=1)
        settings.update(overrides)
        dm = SyntheticDataModule(**settings)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    return make


@pytest.fixture
def quiet_trainer() -> Callable[..., pl.Trainer]:
    """``quiet_trainer(callbacks=(), max_epochs=1, **kwargs)``: a CPU trainer without logger, bar or summary."""

    def make(callbacks: Sequence[pl.Callback] = (), max_epochs: int = 1, **kwargs) -> pl.Trainer:
        settings = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        enable_checkpointing=False)
        settings.update(kwargs)
        return pl.Trainer(max_epochs=max_epochs, callbacks=list(callbacks), **settings)

    return make


@pytest.fixture
def compose_bench(compose_app) -> Callable[..., DictConfig]:
    """``compose_bench(overrides)``: the benchmark's config (``lightning-afm-bench``)."""
    return lambda overrides=(): compose_app(overrides, config_name="bench")
