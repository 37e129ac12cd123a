"""data=csv's defaults: early stopping on the validation split, and the best epoch's weights restored."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn

from lightning_afm.app.errors import ConfigError
from lightning_afm.callbacks.best_weights import BestWeights
from lightning_afm.cli import early_stopping_callbacks, run
from lightning_afm.models import MODELS


def test_csv_composes_with_early_stopping_and_the_paper_datasets_keep_the_papers_settings(compose_app):
    cfg = compose_app(["data=csv"])
    assert (cfg.model.lr, cfg.model.dropout, cfg.trainer.max_epochs) == (1e-3, 0.2, 30)
    assert cfg.early_stopping.monitor == "val_auc" and cfg.early_stopping.mode == "max"
    assert cfg.early_stopping.patience == 2 and cfg.early_stopping.restore_best
    assert cfg.data.val_fraction == 0.05
    # the trainer group comes before the data group: a trainer choice keeps data=csv's epoch cap
    assert compose_app(["data=csv", "trainer=gpu"]).trainer.max_epochs == 30
    assert compose_app(["data=csv", "trainer.max_epochs=5"]).trainer.max_epochs == 5
    # a compression config's schedule fixes the epochs
    assert compose_app(["data=csv", "compression=afm"]).trainer.max_epochs == 3
    for data in ("criteo", "avazu", "synthetic"):
        paper = compose_app([f"data={data}"])
        assert paper.early_stopping is None and paper.trainer.max_epochs == 1, data
        assert paper.model.dropout == 0.5, data
    assert compose_app(["data=criteo"]).model.lr == 1e-4


class _Scripted(pl.LightningModule):
    """One weight set to the epoch number; the validation AUC follows a script."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.w = nn.Parameter(torch.zeros(1))
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.w.fill_(self.current_epoch + 1)

    def validation_step(self, batch, batch_idx):
        self.log("val_auc", self.script[self.current_epoch])
        self.log("val_logloss", 1.0 - self.script[self.current_epoch])

    def configure_optimizers(self):
        return None

    def train_dataloader(self):
        return [torch.zeros(1)]

    def val_dataloader(self):
        return [torch.zeros(1)]


def _fit(script, max_epochs, patience=2):
    best = BestWeights("val_auc", "max")
    model = _Scripted(script)
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[EarlyStopping("val_auc", mode="max", patience=patience), best],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model)
    return trainer, model, best


def test_early_stopping_stops_after_patience_and_restores_the_best_epochs_weights():
    trainer, model, best = _fit([0.6, 0.8, 0.7, 0.75, 0.9, 0.95], max_epochs=6)
    assert trainer.current_epoch == 4  # epoch 2 best, epochs 3 and 4 worse: stop
    assert model.w.item() == 2.0 and best.restored
    assert best.best_epoch == 2 and best.best_score == pytest.approx(0.8)
    assert best.best_metrics["val_logloss"] == pytest.approx(0.2)
    assert best.summary() == {"best_epoch": 2, "best_val_auc": pytest.approx(0.8), "best_weights_restored": True}


def test_the_last_epoch_best_keeps_its_weights():
    trainer, model, best = _fit([0.6, 0.7, 0.8], max_epochs=3)
    assert trainer.current_epoch == 3 and model.w.item() == 3.0
    assert best.best_epoch == 3 and not best.restored


def test_best_weights_survive_a_checkpoint_round_trip():
    _, _, best = _fit([0.6, 0.8, 0.7, 0.7], max_epochs=4)
    again = BestWeights()
    again.load_state_dict(best.state_dict())
    assert again.best_epoch == 2 and again.state_dict()["weights"]["w"].item() == 2.0


def test_early_stopping_needs_a_validation_split_and_yields_to_compression(tmp_path, compose_app):
    class _NoVal:
        def num_rows(self, split):
            return 0

    with pytest.raises(ConfigError, match="val_fraction"):
        early_stopping_callbacks(compose_app(["data=csv"]), _NoVal())
    assert early_stopping_callbacks(compose_app(["data=csv", "compression=afm"]), _NoVal()) == []
    assert early_stopping_callbacks(compose_app(["data=criteo"]), _NoVal()) == []
    kinds = [type(c) for c in early_stopping_callbacks(compose_app(["data=csv", "early_stopping.restore_best=false"]),
                                                       object())]
    assert kinds == [EarlyStopping]


def _tiny_csv(path, rows=3000, seed=0):
    """One field that carries the label and one wide field of noise that the model can memorise."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(0, 6, rows)
    noise = rng.integers(0, 1000, rows)
    label = (rng.random(rows) < 0.15 + 0.12 * signal).astype(int)
    lines = ["label,signal,noise"] + [f"{y},s{s},n{n}" for y, s, n in zip(label, signal, noise)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_run_stops_early_and_saves_and_tests_the_best_epoch(tmp_path, compose_app):
    table = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "run"
    # lr 1e-2 and no dropout memorise the noise field within a few epochs: validation AUC peaks, then falls
    cfg = compose_app(["data=csv", f"data.path={table}", "data.label=label", "data.categorical=[signal,noise]",
                    f"data.cache_dir={tmp_path / 'cache'}", "data.progress=false", "data.batch_size=100",
                    "data.val_fraction=0.2", "model.embedding_dim=8", "model.mlp_hidden=[32,32]", "model.lr=1e-2",
                    "model.dropout=0.0", "model.l2_reg=0", "early_stopping.patience=1", "trainer.max_epochs=25",
                    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"+output_dir={out}"])
    summary = run(cfg)
    assert summary["epochs"] < 25, "validation AUC kept rising on memorised noise"
    assert 1 <= summary["best_epoch"] < summary["epochs"] and summary["best_weights_restored"]
    assert summary["val_auc"] == pytest.approx(summary["best_val_auc"])
    assert (out / "checkpoints" / "last.ckpt").is_file()  # the per-epoch checkpoint still works
    # last.ckpt holds the best epoch's weights: validating it again gives the best check's AUC
    model = MODELS["deepfm"].load_from_checkpoint(out / "last.ckpt")
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="all")
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    again = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val_auc"]
    assert again == pytest.approx(summary["best_val_auc"], abs=1e-5)
    assert json.loads((out / "summary.json").read_text())["best_epoch"] == summary["best_epoch"]
