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
    callback = AFMCompressionCallback([EmbeddingStage(rank=2, method="ttd", targets=["user"], epochs=1,
                                                     ttd_min_rows=1)],
                                      baseline_epochs=1, progress=False)
    _trainer(callback, max_epochs=2).fit(model, train_dataloaders=train, val_dataloaders=val)
    assert isinstance(model.user, TTEmbedding) and model.user.tt_rank == 2
    assert callback.history[0]["method"] == "ttd"


# -- issue 12: nothing lost, nothing silent ------------------------------------------------------

def _quiet_trainer(callbacks, max_epochs, **kwargs):
    kwargs.setdefault("logger", False)
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kwargs)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    state = model.state_dict()
    return set(state) == set(before) and all(torch.equal(before[k], v) for k, v in state.items())


@pytest.mark.parametrize("loader", ["no rows", "drop_last"])
def test_an_empty_training_loader_fails_before_anything_changes(loader):
    x, y = torch.zeros(0 if loader == "no rows" else 50, 2, dtype=torch.long), torch.zeros(0 if loader == "no rows" else 50)
    train = DataLoader(TensorDataset(x, y), batch_size=100, drop_last=loader == "drop_last")
    model = TinyCTR()
    before = _state(model)
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"])], baseline_epochs=1, progress=False)
    with pytest.raises(MisconfigurationException, match=r"training dataloader is empty \(0 batches from \d+ rows"):
        _quiet_trainer([callback], max_epochs=2).fit(model, train_dataloaders=train)
    assert _unchanged(model, before) and callback.history == []


def test_limit_train_batches_zero_is_refused():
    train, _ = _loaders()
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"])], progress=False)
    with pytest.raises(MisconfigurationException, match="limit_train_batches=0"):
        _quiet_trainer([callback], max_epochs=2, limit_train_batches=0).fit(TinyCTR(), train_dataloaders=train)


def test_fold_true_on_a_module_that_cannot_fold_fails_at_fit_start_with_nothing_changed():
    train, val = _loaders()
    model = TinyCTR()
    before = _state(model)
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"]),
                                       EmbeddingStage(rank=2, targets=["user", "item"], fold=True)],
                                      baseline_epochs=1, progress=False)
    trainer = _quiet_trainer([callback], max_epochs=3)
    with pytest.raises(ValueError, match=r"stage 'emb': fold=True, but TinyCTR's MLP does not read .* fold='auto'"):
        trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    # Raised in on_fit_start: no epoch trained, no module swapped, nothing in the plan.
    assert trainer.global_step == 0 and _unchanged(model, before) and len(callback.plan) == 0


def test_two_stages_on_the_same_linear_fail_at_fit_start():
    train, _ = _loaders()
    model = TinyCTR()
    before = _state(model)
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"]), MLPStage(rank=2, targets=["net.0", "net.2"], name="all")],
                                      baseline_epochs=1, progress=False)
    trainer = _quiet_trainer([callback], max_epochs=3)
    with pytest.raises(ValueError, match=r"stages 'mlp' and 'all' both target 'net\.2'.*disjoint"):
        trainer.fit(model, train_dataloaders=train)
    assert trainer.global_step == 0 and _unchanged(model, before)


def test_every_stage_is_checked_at_fit_start_not_when_it_comes():
    train, _ = _loaders()
    later = EmbeddingStage(rank=2, targets=["user"])
    later.method = "pca"  # changed after it was made: caught at fit start, before the first stage's swap
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"]), later], baseline_epochs=0, progress=False)
    model = TinyCTR()
    with pytest.raises(ValueError, match=r"EmbeddingStage\('emb'\): method must be one of"):
        _quiet_trainer([callback], max_epochs=2).fit(model, train_dataloaders=train)
    assert isinstance(model.net[2], nn.Linear)
    wrong_type = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"]), EmbeddingStage(rank=2, targets=["net.0"])],
                                        baseline_epochs=0, progress=False)
    with pytest.raises(ValueError, match=r"stage 'emb': target 'net\.0' matches no Embedding .*\['user', 'item'\]"):
        _quiet_trainer([wrong_type], max_epochs=2).fit(model, train_dataloaders=train)
    assert isinstance(model.net[2], nn.Linear)


def test_a_non_numeric_stage_setting_names_the_stage_and_field():
    from lightning_afm.callbacks.factory import build_compression_callback

    with pytest.raises(ValueError, match=r"MLPStage\('mlp'\): lr must be a number or None, got 'fast'"):
        MLPStage(rank=4, lr="fast")
    with pytest.raises(ValueError, match=r"compression\.emb: EmbeddingStage\('emb'\): weight_decay must be a number"):
        build_compression_callback({"emb": {"rank": 2, "weight_decay": "lots"}})
    with pytest.raises(ValueError, match=r"compression\.mlp has unknown keys \['lrr'\]"):
        build_compression_callback({"mlp": {"rank": 2, "lrr": 1e-3}})
    assert MLPStage(rank=4, lr="1e-3").lr == 1e-3  # YAML 1.1 reads 1e-3 as text: taken as its number


@pytest.mark.parametrize("method", ["afm", "svd"])
def test_nan_weights_say_the_baseline_diverged(method):
    train, _ = _loaders()
    model = TinyCTR()
    with torch.no_grad():
        model.net[2].weight[0, 0] = float("nan")
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"], method=method)], baseline_epochs=0,
                                      progress=False)
    with pytest.raises(ValueError, match=r"stage 'mlp': .*NaN or Inf \('net\.2\.weight'\).*diverged.*learning rate"):
        _quiet_trainer([callback], max_epochs=1).fit(model, train_dataloaders=train)
    assert isinstance(model.net[2], nn.Linear)


def test_non_finite_statistics_name_the_stage_layer_and_likely_cause():
    train, _ = _loaders()
    model = TinyCTR()
    with torch.no_grad():
        model.net[0].weight.fill_(1e30)  # finite weights whose outputs overflow float32 further on
    callback = AFMCompressionCallback([MLPStage(rank=4, targets=["net.2"])], baseline_epochs=0, progress=False)
    with pytest.raises(ValueError, match=r"stage 'mlp': .*net\.2.*NaN or Inf.*input features.*learning rate"):
        _quiet_trainer([callback], max_epochs=1).fit(model, train_dataloaders=train)
    assert isinstance(model.net[2], nn.Linear)


def test_early_stopping_waits_for_the_end_of_the_schedule():
    from lightning.pytorch.callbacks import EarlyStopping

    pl.seed_everything(0)
    train, val = _loaders()
    callback = AFMCompressionCallback([MLPStage(rank=8, targets=["net.2"]), EmbeddingStage(rank=4, targets=["user", "item"])],
                                      baseline_epochs=1, progress=False)
    # Asks to stop at its first check (val_loss is far below 10), and checks twice per epoch, so
    # unheld it would cut the baseline epoch in half.
    stopper = EarlyStopping(monitor="val_loss", stopping_threshold=10.0)
    trainer = _quiet_trainer([callback, stopper], max_epochs=6, val_check_interval=0.5)
    with pytest.warns(UserWarning, match=r"held off a request to stop .* EarlyStopping starts afresh"):
        trainer.fit(TinyCTR(), train_dataloaders=train, val_dataloaders=val)
    assert [r["finished"] for r in callback.history] == [True, True]
    assert all(r["val_auc"] is not None and r["pre_finetune_val_auc"] is not None for r in callback.history)
    assert trainer.global_step >= 3 * 30, "the three scheduled epochs ran in full"
    assert trainer.current_epoch < 6, "after the schedule, EarlyStopping stops the fit"
    assert trainer.fit_loop.min_epochs in (None, 0), "the trainer's own min_epochs comes back"
    for record in callback.history:  # the README's print loop
        print(record["name"], record["params_before"], "->", record["params"],
              "val AUC after swap %.4f, after finetune %.4f" % (record["pre_finetune_val_auc"], record["val_auc"]))


def test_a_fit_cut_short_warns_and_keeps_every_record_key():
    train, val = _loaders()
    callback = AFMCompressionCallback([MLPStage(rank=8, targets=["net.2"], select="best", checks=2),
                                       EmbeddingStage(rank=4, targets=["user", "item"])],
                                      baseline_epochs=1, progress=False)
    # max_steps ends the fit halfway through the MLP finetune (30 batches an epoch).
    with pytest.warns(UserWarning, match=r"before the compression schedule did \(3 epochs\): 1 of 2 stages finished"):
        _quiet_trainer([callback], max_epochs=3, max_steps=45).fit(TinyCTR(), train_dataloaders=train,
                                                                   val_dataloaders=val)
    (record,) = callback.history
    assert record["selected_point"] is not None and record["rank_search"] is None
    full = AFMCompressionCallback([MLPStage(rank=8, targets=["net.2"])], baseline_epochs=1, progress=False)
    _quiet_trainer([full], max_epochs=2).fit(TinyCTR(), train_dataloaders=train, val_dataloaders=val)
    assert full.history[0]["selected_point"] is None and full.history[0]["checks"] is None
    assert set(full.history[0]) == set(record), "selected or not, searched or not: the same keys"


def test_compression_points_reach_the_csv_logger_in_schedule_order(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    train, val = _loaders()
    callback = AFMCompressionCallback([MLPStage(rank=8, targets=["net.2"]), EmbeddingStage(rank=4, targets=["user", "item"])],
                                      baseline_epochs=1, eval_splits=("val",), progress=False)
    logger = CSVLogger(tmp_path, name="run")
    _quiet_trainer([callback], max_epochs=3, logger=logger).fit(TinyCTR(), train_dataloaders=train,
                                                                 val_dataloaders=val)
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    points = sorted((int(r["step"]), r) for r in rows if r.get("compression/val_auc"))
    assert [step for step, _ in points] == [0, 1, 2, 3, 4]
    assert [float(r["compression/stage"]) for _, r in points] == [0, 1, 1, 2, 2]
    assert [float(r["compression/phase"]) for _, r in points] == [0, 1, 2, 1, 2]
    mlp, emb = callback.history
    assert float(points[1][1]["compression/val_auc"]) == pytest.approx(mlp["pre_finetune_val_auc"])
    assert float(points[4][1]["compression/val_auc"]) == pytest.approx(emb["val_auc"])
    assert float(points[4][1]["compression/params"]) == emb["params"]
    # `stage` per epoch, for ModelCheckpoint file names: the structure each epoch validated.
    stages = {int(r["epoch"]): float(r["stage"]) for r in rows if r.get("stage")}
    assert stages == {0: 0.0, 1: 1.0, 2: 2.0}


# -- the compression contract on a user's module ---------------------------------------------------

class ContractCTR(TinyCTR):
    """TinyCTR implementing the compression contract: default targets, and a fold of its tables."""

    def __init__(self, lr: float = 1e-2):
        super().__init__(lr)
        self.reads_codes = False

    def compression_layout(self):
        from lightning_afm.compress import ModelLayout

        return ModelLayout(mlp_targets=("net.2",), field_tables=("user", "item"), first_mlp_linear="net.0",
                           mlp_reads_embeddings=True, mlp_reads_codes=self.reads_codes)

    def set_mlp_reads_codes(self, reads_codes):
        self.reads_codes = reads_codes

    def forward(self, x):
        look = (lambda t, i: t.codes(i)) if self.reads_codes else (lambda t, i: t(i))
        return self.net(torch.cat([look(self.user, x[:, 0]), look(self.item, x[:, 1])], dim=1)).squeeze(-1)


def test_a_user_module_with_the_contract_gets_default_targets_and_the_fold():
    from lightning_afm.compress import LowRankEmbedding, LowRankLinear

    pl.seed_everything(0)
    train, val = _loaders()
    model = ContractCTR()
    callback = AFMCompressionCallback([MLPStage(rank=8), EmbeddingStage(rank=4, fold=True)], baseline_epochs=1,
                                      progress=False)
    _trainer(callback, max_epochs=3).fit(model, train_dataloaders=train, val_dataloaders=val)
    assert isinstance(model.net[2], LowRankLinear) and isinstance(model.net[0], nn.Linear)
    assert isinstance(model.user, LowRankEmbedding) and model.reads_codes
    assert model.net[0].in_features == 2 * 4  # the first Linear reads the two fields' 4-dim codes
    assert [e.kind for e in callback.plan] == ["linear", "embedding", "embedding", "fold"]
    assert callback.history[1]["val_auc"] > 0.6
