"""The compression callback on a user's own LightningModule (plain nn.Linear / nn.Embedding)."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage


class TinyCTR(pl.LightningModule):
    """Two categorical fields, an MLP of width 32, logits out: a typical hand-written CTR model."""

    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.user = nn.Embedding(50, 8)
        self.item = nn.Embedding(40, 8)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(torch.cat([self.user(x[:, 0]), self.item(x[:, 1])], dim=1)).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.binary_cross_entropy_with_logits(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _loaders(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, 50, (n,), generator=g), torch.randint(0, 40, (n,), generator=g)], dim=1)
    effect_u, effect_i = torch.randn(50, generator=g), torch.randn(40, generator=g)
    p = torch.sigmoid(2 * effect_u[x[:, 0]] * effect_i[x[:, 1]] + effect_u[x[:, 0]])
    y = torch.bernoulli(p, generator=g)
    train = DataLoader(TensorDataset(x[:3000], y[:3000]), batch_size=100, shuffle=True)
    val = DataLoader(TensorDataset(x[3000:], y[3000:]), batch_size=500)
    return train, val


def _trainer(callback, max_epochs):
    return pl.Trainer(max_epochs=max_epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


def test_mlp_and_embedding_stages_on_a_user_module():
    pl.seed_everything(0)
    train, val = _loaders()
    model = TinyCTR()
    callback = AFMCompressionCallback(
        [MLPStage(rank=8, targets=["net.2"], lr=1e-2), EmbeddingStage(rank=4, targets=["user", "item"])],
        baseline_epochs=2, progress=False)
    _trainer(callback, max_epochs=4).fit(model, train_dataloaders=train, val_dataloaders=val)

    mlp, emb = callback.history
    # net.2 (32x32 + 32 = 1056) -> 8x32 + 8 + 32x8 + 32 = 552; tables 90x8 -> 90x4 + two 4->8 projections.
    assert mlp["params_before"] - mlp["params"] == 1056 - 552
    assert emb["params_before"] - emb["params"] == 90 * 8 - (90 * 4 + 2 * (4 * 8 + 8))
    assert model.net[2].rank == 8 and model.user.code_dim == 4
    base = callback.baseline["val_auc"]
    assert base > 0.6, "the tiny model should learn its toy signal"
    # AFM right after the swap keeps the baseline's quality (no finetune yet).
    assert abs(mlp["pre_finetune_val_auc"] - base) < 0.02
    for record in (mlp, emb):
        assert set(record) >= {"pre_finetune_val_auc", "pre_finetune_val_logloss", "val_auc", "val_logloss", "layers"}


def test_baseline_epochs_zero_compresses_at_fit_start():
    train, val = _loaders()
    model = TinyCTR()
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.0"], epochs=1)], baseline_epochs=0, progress=False)
    _trainer(callback, max_epochs=1).fit(model, train_dataloaders=train, val_dataloaders=val)
    assert model.net[0].rank == 4
    assert callback.history[0]["start_epoch"] == 0


def test_too_few_epochs_says_what_to_set():
    train, _ = _loaders()
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"]), EmbeddingStage(rank=2, targets=["user"])])
    with pytest.raises(MisconfigurationException, match=r"max_epochs=3"):
        _trainer(callback, max_epochs=2).fit(TinyCTR(), train_dataloaders=train)


def test_targets_that_match_nothing_list_what_exists_and_change_nothing():
    train, _ = _loaders()
    model = TinyCTR()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = AFMCompressionCallback([MLPStage(rank=4)], baseline_epochs=0)  # default targets mlp.1.linear...
    with pytest.raises(ValueError, match=r"net\.0"):
        _trainer(callback, max_epochs=1).fit(model, train_dataloaders=train)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rank_larger_than_the_layer_fails_before_training():
    train, _ = _loaders()
    model = TinyCTR()
    callback = AFMCompressionCallback([MLPStage(rank=33, targets=["net.2"])])
    with pytest.raises(ValueError, match=r"rank 33 .*1\.\.32"):
        _trainer(callback, max_epochs=2).fit(model, train_dataloaders=train)
    assert isinstance(model.net[2], nn.Linear)


def test_bad_stage_settings_fail_when_made():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        MLPStage(rank=0)
    with pytest.raises(ValueError, match="method must be one of"):
        EmbeddingStage(rank=2, method="pca")
    with pytest.raises(ValueError, match="at least one stage"):
        AFMCompressionCallback([])


def test_ttd_stage_replaces_tables_with_tensor_train_cores():
    from lightning_afm.compress import TTEmbedding

    train, val = _loaders()
    model = TinyCTR()
    callback = AFMCompressionCallback([EmbeddingStage(rank=2, method="ttd", targets=["user"], epochs=1)],
                                      baseline_epochs=1, progress=False)
    _trainer(callback, max_epochs=2).fit(model, train_dataloaders=train, val_dataloaders=val)
    assert isinstance(model.user, TTEmbedding) and model.user.tt_rank == 2
    assert callback.history[0]["method"] == "ttd"
