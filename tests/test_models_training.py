"""Every model through a short Lightning fit on a tiny in-memory data set, checkpoints, metrics."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from lightning_afm.data.schema import Schema
from lightning_afm.models import MODELS, DeepFM, build_model

SCHEMA = Schema.from_vocab_sizes([20, 15, 10, 8], numeric=2)
SMALL = dict(embedding_dim=4, mlp_hidden=[16, 16], dropout=0.1, lr=1e-3)


def toy_data(rows: int, seed: int) -> dict[str, torch.Tensor]:
    """A learnable signal: the label depends on fields C1, C2 and the first numeric value."""
    effects = np.random.default_rng(123)  # fixed ground truth, shared by every split
    a, b = effects.normal(size=20), effects.normal(size=15)
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(0, v, rows) for v in SCHEMA.vocab_sizes], axis=1)
    num = rng.random((rows, 2)).astype(np.float32)
    logit = 2.0 * (a[cat[:, 0]] + b[cat[:, 1]]) + 3.0 * (num[:, 0] - 0.5)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return {
        "categorical": torch.from_numpy(cat),
        "numeric": torch.from_numpy(num),
        "label": torch.from_numpy(label),
        "logit": torch.from_numpy(logit),
    }


def loader(data: dict[str, torch.Tensor], batch_size: int, shuffle: bool = False) -> torch.utils.data.DataLoader:
    """Batches as dicts of slices (no per-row __getitem__), like the real DataModule."""
    n = len(data["label"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)) if shuffle else torch.arange(n)
    batches = [
        {k: data[k][order[i : i + batch_size]] for k in ("categorical", "numeric", "label")}
        for i in range(0, n, batch_size)
    ]
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(max_epochs=1, logger=False, enable_checkpointing=False, accelerator="cpu", devices=1,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


@pytest.fixture(scope="module")
def splits() -> dict[str, dict[str, torch.Tensor]]:
    return {"train": toy_data(4096, seed=1), "val": toy_data(1024, seed=2)}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("name", sorted(MODELS))
def test_short_fit_logs_metrics_and_checkpoint_round_trips(name, splits, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, SCHEMA, **SMALL)
    t = trainer(limit_train_batches=6, limit_val_batches=2)
    t.fit(model, loader(splits["train"], 256, shuffle=True), loader(splits["val"], 256))
    metrics = t.callback_metrics
    for key in ("train_loss_epoch", "train_auc", "train_logloss", "val_loss", "val_auc", "val_logloss"):
        assert key in metrics and torch.isfinite(metrics[key]), key

    path = tmp_path / f"{name}.ckpt"
    t.save_checkpoint(path)
    loaded = MODELS[name].load_from_checkpoint(path)
    assert type(loaded) is type(model) and loaded.hparams == model.hparams
    batch = next(iter(loader(splits["val"], 64)))
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected = model.predict_step(batch, 0)
        got = loaded.predict_step(batch, 0)
    assert got.shape == (64,) and bool(((got >= 0) & (got <= 1)).all())
    assert torch.equal(got, expected)


def test_deepfm_learns_the_toy_signal(splits):
    torch.manual_seed(0)
    model = DeepFM(SCHEMA, **SMALL)

    class EpochLosses(L.Callback):
        losses: list[float] = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.losses.append(float(trainer.callback_metrics["train_loss_epoch"]))

    record = EpochLosses()
    t = trainer(max_epochs=4, callbacks=[record])
    t.fit(model, loader(splits["train"], 256, shuffle=True), loader(splits["val"], 512))
    val = splits["val"]
    oracle_auc = roc_auc_score(val["label"].numpy(), val["logit"].numpy())
    assert record.losses[-1] < record.losses[0] - 0.02, record.losses
    assert float(t.callback_metrics["val_auc"]) > oracle_auc - 0.05, (float(t.callback_metrics["val_auc"]), oracle_auc)


def test_test_metrics_equal_sklearn_on_predictions(splits):
    torch.manual_seed(0)
    model = DeepFM(SCHEMA, **SMALL)
    t = trainer(limit_train_batches=4)
    t.fit(model, loader(splits["train"], 256))
    val = loader(splits["val"], 200)  # uneven last batch on purpose
    result = t.test(model, val, verbose=False)[0]
    probs = torch.cat(t.predict(model, val)).double().numpy()
    labels = splits["val"]["label"].numpy()
    assert result["test_logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-5)
    assert result["test_auc"] == pytest.approx(roc_auc_score(labels, probs), rel=1e-5)


def test_batch_norm_model_fits_and_reloads(splits, tmp_path):
    torch.manual_seed(0)
    model = build_model("dcn", SCHEMA, batch_norm=True, **SMALL)
    t = trainer(limit_train_batches=3, limit_val_batches=1)
    t.fit(model, loader(splits["train"], 128), loader(splits["val"], 128))
    path = tmp_path / "bn.ckpt"
    t.save_checkpoint(path)
    loaded = MODELS["dcn"].load_from_checkpoint(path).eval()
    batch = next(iter(loader(splits["val"], 32)))
    with torch.no_grad():
        assert torch.equal(loaded.predict_step(batch, 0), model.eval().predict_step(batch, 0))
