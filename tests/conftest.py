"""Fixtures shared by the test files: composing the app's (and the benchmark's) Hydra config,
and a tiny synthetic DataModule; a tiny AFM-compressed Criteo run of the app (serving and export).

Each test file used to carry its own copy of these; they live here so that a change of the
config layout or of the DataModule's arguments is made once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
import torch
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
def fit_budgeted() -> Callable[..., object]:
    """``fit_budgeted(dm, model, budget)``: fit ``model`` with auto-rank MLP and embedding stages under
    ``budget`` (one baseline epoch, 3 in all, on the CPU); returns the callback."""
    import lightning.pytorch as pl

    from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage

    def fit(dm, model, budget):
        callback = AFMCompressionCallback([MLPStage(rank="auto"), EmbeddingStage(rank="auto")], baseline_epochs=1,
                                          progress=False, budget=budget)
        trainer = pl.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", enable_checkpointing=False)
        trainer.fit(model, datamodule=dm)
        return callback

    return fit


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test, restored afterwards (tiny models' SVDs and eigendecompositions
    run several times slower with 2 threads on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def compose_bench(compose_app) -> Callable[..., DictConfig]:
    """``compose_bench(overrides)``: the benchmark's config (``lightning-afm-bench``)."""
    return lambda overrides=(): compose_app(overrides, config_name="bench")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def criteo_afm_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny DeepFM trained and AFM-compressed by the app on 3,000 Criteo sample rows:
    ``(run folder, cache folder, the 3,000-row raw file)``."""
    sample = SHARED_DATA / "criteo_sample_10k.txt"
    if not sample.exists():
        pytest.skip("the shared data samples are not here")
    from lightning_afm.cli import run

    tmp = tmp_path_factory.mktemp("criteo_afm_run")
    data = tmp / "criteo_3k.txt"
    data.write_text("".join(sample.open().readlines()[:3000]))
    with initialize_config_module(config_module="lightning_afm.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=criteo_sample", f"data.path={data}", f"data.cache_dir={tmp / 'cache'}", "data.progress=false",
            "model.embedding_dim=4", "model.mlp_hidden=[16,16,16]", "compression=afm", "compression.mlp.rank=4",
            "compression.emb.rank=2", "compression.progress=false", f"+output_dir={tmp / 'run'}",
            "trainer.enable_progress_bar=false", "logger=csv"])
    summary = run(cfg)
    return tmp / "run", Path(summary["data_report"]["cache"]), data


@pytest.fixture
def same_predictions_in_fresh_process(tmp_path) -> Callable[..., None]:
    """``check(trainer, model, dm)``: the fit's checkpoint, loaded by ``DeepFM.load_from_checkpoint`` in a
    fresh process, predicts the test batch exactly as ``model`` does."""
    import subprocess
    import sys
    import textwrap

    import torch

    def check(trainer, model, dm) -> None:
        ckpt = tmp_path / "compressed.ckpt"
        trainer.save_checkpoint(ckpt)
        batch = next(iter(dm.test_dataloader()))
        torch.save({"categorical": batch["categorical"], "numeric": batch["numeric"]}, tmp_path / "batch.pt")
        with torch.no_grad():
            expected = model.eval()(batch["categorical"], batch["numeric"])
        script = textwrap.dedent(f"""
            import torch
            from lightning_afm.models import DeepFM
            model = DeepFM.load_from_checkpoint({str(ckpt)!r}).eval()
            batch = torch.load({str(tmp_path / 'batch.pt')!r})
            with torch.no_grad():
                torch.save(model(batch["categorical"], batch["numeric"]), {str(tmp_path / 'out.pt')!r})
        """)
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        assert torch.equal(torch.load(tmp_path / "out.pt"), expected)

    return check
