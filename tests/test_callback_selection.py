"""select="best": the finetune keeps its best state by the validation split; lr_backoff; frozen tables."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.callbacks.selection import (
    BestState,
    check_batches,
    compare,
    midranks,
    paired_auc_difference,
    paired_logloss_difference,
)
from test_callback_user_module import TinyCTR, _loaders, _trainer


def test_check_batches_spreads_checks_inside_the_epoch():
    assert check_batches(100, 4) == [25, 50, 75]
    assert check_batches(30, 1) == []
    assert check_batches(3, 10) == [1, 2]  # never the last batch: the epoch end is the last check
    assert check_batches(1, 4) == []


def test_compare_needs_the_monitor_up_and_the_other_metric_no_worse():
    def s(auc, logloss):
        return {"val_auc": auc, "val_logloss": logloss}

    assert compare("val_auc", s(0.71, 0.50), s(0.70, 0.50)) == "better"
    assert compare("val_auc", s(0.70, 0.50), s(0.70, 0.50)) == "tie"
    assert compare("val_auc", s(0.72, 0.51), s(0.70, 0.50)) == "worse", "an AUC gain with a worse logloss is no gain"
    assert compare("val_logloss", s(0.70, 0.40), s(0.70, 0.41)) == "better"
    assert compare("val_logloss", s(0.69, 0.40), s(0.70, 0.41)) == "worse"
    assert compare("val_auc", s(0.5, 0.7), None) == "better"
    assert compare("val_auc", s(float("nan"), 0.5), s(0.5, 0.7)) == "worse"


def _scores(labels, logits):
    from sklearn.metrics import log_loss, roc_auc_score

    p = 1 / (1 + np.exp(-logits))
    return {"val_auc": roc_auc_score(labels, p), "val_logloss": log_loss(labels, p),
            "logits": torch.tensor(logits), "labels": torch.tensor(labels, dtype=torch.float32)}


def test_compare_tells_a_real_gain_from_noise_on_the_same_rows():
    rng = np.random.default_rng(0)
    n = 4000
    truth = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(np.float32)
    old = truth + rng.normal(scale=1.0, size=n)
    noisy = old + rng.normal(scale=0.02, size=n)  # a different model by noise only
    gained = 0.5 * old + 0.5 * truth  # truly closer to the truth
    assert compare("val_auc", _scores(labels, noisy), _scores(labels, old)) == "tie"
    assert compare("val_auc", _scores(labels, gained), _scores(labels, old)) == "better"
    assert compare("val_auc", _scores(labels, old), _scores(labels, gained)) == "worse"
    # without the significance test the noise alone would decide
    plain = {k: v for k, v in _scores(labels, noisy).items() if k.startswith("val_")}
    assert compare("val_auc", plain, {k: v for k, v in _scores(labels, old).items() if k.startswith("val_")}) != "tie"


def _delong_by_pairs(labels, a, b):
    """DeLong's variance of AUC(a) - AUC(b) written out pair by pair (the reference)."""
    pos, neg = labels > 0.5, labels <= 0.5

    def psi(x, y):
        return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])

    ka, kb = psi(a[pos], a[neg]), psi(b[pos], b[neg])
    v10 = ka.mean(1) - kb.mean(1)
    v01 = ka.mean(0) - kb.mean(0)
    return (ka.mean() - kb.mean()), np.sqrt(v10.var(ddof=1) / pos.sum() + v01.var(ddof=1) / neg.sum())


def test_paired_differences_match_references():
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = (rng.random(300) < 0.3).astype(np.float64)
    a = np.round(rng.normal(size=300) + labels, 1)  # rounded: ties inside and across classes
    b = np.round(rng.normal(size=300) + 0.5 * labels, 1)
    np.testing.assert_allclose(midranks(torch.tensor(a)).numpy(), rankdata(a))
    delta, se = paired_auc_difference(torch.tensor(labels), torch.tensor(a), torch.tensor(b))
    ref_delta, ref_se = _delong_by_pairs(labels, a, b)
    assert delta == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b), abs=1e-12)
    assert delta == pytest.approx(ref_delta, abs=1e-12) and se == pytest.approx(ref_se, rel=1e-9)
    d_ll, se_ll = paired_logloss_difference(torch.tensor(labels), torch.tensor(a), torch.tensor(b))
    per_row = (np.logaddexp(0, -a) * labels + np.logaddexp(0, a) * (1 - labels)
               - np.logaddexp(0, -b) * labels - np.logaddexp(0, b) * (1 - labels))
    assert d_ll == pytest.approx(per_row.mean(), rel=1e-9) and se_ll == pytest.approx(per_row.std(ddof=1) / np.sqrt(300), rel=1e-9)


def test_best_state_keeps_a_copy_that_later_updates_do_not_touch():
    model = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    best = BestState("val_logloss")
    assert best.offer(model, {"val_auc": 0.7, "val_logloss": 0.50}, point=0.0, lr=1e-3) == "better"
    with torch.no_grad():
        model.weight.mul_(3.0)  # in place, as an optimizer step is
    assert best.offer(model, {"val_auc": 0.8, "val_logloss": 0.55}, point=0.5, lr=1e-3) == "worse"
    best.restore(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [c["verdict"] for c in best.trail] == ["better", "worse"] and best.point == 0.0
    with pytest.raises(ValueError, match="monitor must be one of"):
        BestState("train_loss")


def _harmful_finetune(select, **stage):
    """An MLP stage whose finetune lr (5.0) wrecks the model, so its best point is the swap itself."""
    pl.seed_everything(0)
    train, val = _loaders()
    model = TinyCTR()
    callback = AFMCompressionCallback(
        [MLPStage(rank=8, targets=["net.2"], lr=5.0, select=select, checks=3, **stage)], baseline_epochs=2,
        progress=False)
    _trainer(callback, max_epochs=3).fit(model, train_dataloaders=train, val_dataloaders=val)
    return model, callback.history[0]


def test_select_best_keeps_the_swapped_model_when_the_finetune_only_hurts():
    _, last = _harmful_finetune("last")
    model, best = _harmful_finetune("best")
    assert last["val_auc"] < last["pre_finetune_val_auc"] - 0.02, "the harmful finetune must hurt under select='last'"
    assert best["selected_point"] == 0.0
    assert best["val_auc"] == pytest.approx(best["pre_finetune_val_auc"], abs=1e-6)
    assert best["val_logloss"] == pytest.approx(best["pre_finetune_val_logloss"], abs=1e-6)
    # the swap, two checks inside the epoch, the epoch end
    assert [c["point"] for c in best["checks"]] == [0.0, pytest.approx(1 / 3, abs=0.01), pytest.approx(2 / 3, abs=0.01), 1.0]
    assert model.net[2].rank == 8  # still the compressed structure


def test_lr_backoff_goes_back_to_the_best_state_at_a_smaller_rate():
    _, record = _harmful_finetune("best", lr_backoff=0.1)
    lrs = [c["lr"] for c in record["checks"]]
    assert lrs[0] == pytest.approx(5.0)
    # every check below the best divides the rate by 10 from there on
    assert lrs[-1] < lrs[0] and all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert record["val_auc"] >= record["pre_finetune_val_auc"] - 1e-6


def test_select_best_needs_validation_data():
    train, _ = _loaders()
    callback = AFMCompressionCallback([MLPStage(rank=8, targets=["net.2"], select="best")], baseline_epochs=1,
                                      progress=False)
    with pytest.raises(MisconfigurationException, match="val_fraction"):
        _trainer(callback, max_epochs=2).fit(TinyCTR(), train_dataloaders=train)


def test_freeze_embeddings_keeps_every_table_during_the_finetune_and_frees_them_after():
    pl.seed_everything(0)
    train, val = _loaders()
    seen = {}

    class Watch(pl.Callback):
        """Placed before the compression callback, so its epoch end sees the tables before the next swap."""

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # the MLP finetune
                seen["start"] = pl_module.user.weight.detach().clone()
            if trainer.current_epoch == 2:  # the embedding finetune
                seen["trainable"] = [p.requires_grad for p in pl_module.parameters()]

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                seen["end"] = pl_module.user.weight.detach().clone()

    callback = AFMCompressionCallback(
        [MLPStage(rank=8, targets=["net.2"], lr=1e-2, freeze_embeddings=True),
         EmbeddingStage(rank=4, targets=["user", "item"], lr=1e-2)], baseline_epochs=1, progress=False)
    trainer = pl.Trainer(max_epochs=3, callbacks=[Watch(), callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(TinyCTR(), train_dataloaders=train, val_dataloaders=val)
    assert torch.equal(seen["start"], seen["end"]), "the MLP finetune must not move a frozen table"
    assert all(seen["trainable"]), "every table trains again in the next stage"


def test_stage_settings_are_checked_when_made():
    with pytest.raises(ValueError, match="select must be one of"):
        MLPStage(rank=4, select="first")
    with pytest.raises(ValueError, match="checks must be an integer >= 1"):
        MLPStage(rank=4, select="best", checks=0)
    with pytest.raises(ValueError, match="needs select='best'"):
        MLPStage(rank=4, lr_backoff=0.1)
    with pytest.raises(ValueError, match=r"lr_backoff must be in \(0, 1\)"):
        EmbeddingStage(rank=2, select="best", lr_backoff=2.0)
    with pytest.raises(ValueError, match="monitor must be one of"):
        MLPStage(rank=4, monitor="train_loss")
    with pytest.raises(ValueError, match="significance must be >= 0"):
        MLPStage(rank=4, select="best", significance=-1.0)


@pytest.mark.parametrize("relu_init", ["shift", "plain"])
def test_relu_init_reaches_the_factorisation(relu_init):
    """relu_init="plain" is the paper's Table 6 ReLU (eigh's signs, no bias shift); the plan records it."""
    pl.seed_everything(0)
    train, val = _loaders()
    callback = AFMCompressionCallback([MLPStage(rank=8, targets=["net.2"], relu_init=relu_init, epochs=0)],
                                      baseline_epochs=1, progress=False)
    model = TinyCTR()
    _trainer(callback, max_epochs=1).fit(model, train_dataloaders=train, val_dataloaders=val)
    assert callback.plan.entries[0].flags["relu_init"] == relu_init
    if relu_init == "shift":  # the shift keeps every kept coefficient's mean at >= 3 std: none is cut
        assert callback.history[0]["pre_finetune_val_auc"] == pytest.approx(callback.baseline["val_auc"], abs=5e-3)
    with pytest.raises(ValueError, match="relu_init must be one of"):
        MLPStage(rank=4, relu_init="none")


def test_grow_rank_doubles_the_embedding_rank_until_the_swap_keeps_validation():
    """Tables of width 8 trained on a signal that needs them: rank 1 loses, so the stage grows it."""
    pl.seed_everything(0)
    train, val = _loaders(n=6000)
    model = TinyCTR(lr=3e-2)
    callback = AFMCompressionCallback(
        [EmbeddingStage(rank=1, targets=["user", "item"], grow_rank=True, epochs=0)], baseline_epochs=3, progress=False)
    _trainer(callback, max_epochs=3).fit(model, train_dataloaders=train, val_dataloaders=val)
    record = callback.history[0]
    search = record["rank_search"]
    assert [s["rank"] for s in search] == [1, 2, 4][: len(search)]
    assert search[0]["verdict_against_unswapped"] == "worse", "rank 1 must lose here, or the test shows nothing"
    assert record["rank"] == search[-1]["rank"] > 1 and model.user.code_dim == record["rank"]
    # the search is timed apart from the statistics pass; a stage without finetune epochs trains for 0 s
    assert record["rank_search_s"] > 0 and record["statistics_s"] > 0 and record["finetune_s"] == 0.0
    if search[-1]["verdict_against_unswapped"] != "worse":
        # the hooks' projection is what the swap builds: the swapped model scores as its search did
        assert record["pre_finetune_val_auc"] == pytest.approx(search[-1]["val_auc"], abs=1e-5)
    with pytest.raises(ValueError, match="grow_rank needs method='afm'"):
        EmbeddingStage(rank=2, method="svd", grow_rank=True)


def test_compare_tolerance_forgives_small_losses_only():
    old = {"val_auc": 0.700, "val_logloss": 0.500}
    assert compare("val_auc", {"val_auc": 0.6996, "val_logloss": 0.5005}, old) == "worse"
    assert compare("val_auc", {"val_auc": 0.6996, "val_logloss": 0.5005}, old, tolerance=(0.0005, 0.001)) == "tie"
    assert compare("val_auc", {"val_auc": 0.6990, "val_logloss": 0.5005}, old, tolerance=(0.0005, 0.001)) == "worse"
    assert compare("val_auc", {"val_auc": 0.7000, "val_logloss": 0.5020}, old, tolerance=(0.0005, 0.001)) == "worse"
