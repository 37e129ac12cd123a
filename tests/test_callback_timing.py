"""The callback's train-split figures (the paper's Table 15) and its stage wall times (Table 16)."""

import math
import time

import lightning.pytorch as pl
import pytest
import torch

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.callbacks.afm_compression import STAGE_TIME_KEYS
from lightning_afm.callbacks.evaluation import evaluate
from lightning_afm.callbacks.factory import build_compression_callback
from lightning_afm.data import SyntheticDataModule
from lightning_afm.models import DeepFM


def _datamodule():
    # 3,200 training rows: 16 training batches of 200, 4 statistics / eval batches of 1,000 (the last 200)
    return SyntheticDataModule(num_rows=4000, vocab_sizes=[5, 20, 60, 200], num_numeric=2, batch_size=200,
                               eval_batch_size=1000, val_fraction=0.1, test_fraction=0.1, seed=1)


def _model(dm):
    dm.prepare_data()
    dm.setup("fit")
    return DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=[32, 32, 32], lr=3e-3)


def _fit(callback, callbacks=(), max_epochs=3):
    pl.seed_everything(0)
    dm = _datamodule()
    model = _model(dm)
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[callback, *callbacks], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    started = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return model, dm, time.perf_counter() - started


def _scores(model, batches):
    scores = evaluate(model, batches)
    return scores["auc"], scores["logloss"]


def test_the_train_split_is_scored_in_eval_mode_on_every_training_row():
    callback = AFMCompressionCallback([MLPStage(rank=4), EmbeddingStage(rank=2)], baseline_epochs=1,
                                      eval_splits=("train", "val", "test"), progress=False)
    model, dm, _ = _fit(callback)
    mlp, emb = callback.history
    for record in (mlp, emb):
        for key in ("train_auc", "train_logloss", "pre_finetune_train_auc", "pre_finetune_train_logloss"):
            assert math.isfinite(record[key]), key
    # the last stage's after-finetune figures are the final model's, on the statistics loader's rows
    assert (emb["train_auc"], emb["train_logloss"]) == pytest.approx(_scores(model, dm.statistics_dataloader()))
    # a model fitted on these rows scores better on them than on the held-out test rows
    assert emb["train_logloss"] < emb["test_logloss"]
    summary = callback.summary()
    assert math.isfinite(summary["baseline_train_auc"]) and math.isfinite(summary["baseline_train_logloss"])


def test_train_eval_rows_scores_the_first_whole_batches_reaching_it():
    callback = AFMCompressionCallback([MLPStage(rank=4)], baseline_epochs=1, eval_splits=("train",),
                                      train_eval_rows=1500, progress=False)
    model, dm, _ = _fit(callback, max_epochs=2)
    (record,) = callback.history
    first_two = list(dm.statistics_dataloader())[:2]  # 2,000 rows: the first batches holding >= 1,500
    assert (record["train_auc"], record["train_logloss"]) == pytest.approx(_scores(model, first_two))
    assert record["train_auc"] != pytest.approx(_scores(model, dm.statistics_dataloader())[0])
    assert "val_auc" not in record and "test_auc" not in record


def test_train_split_and_row_cap_come_from_the_compression_config():
    callback = build_compression_callback({"eval_splits": ["train", "test"], "train_eval_rows": 5000,
                                           "mlp": {"rank": 4}})
    assert callback.eval_splits == ("train", "test") and callback.train_eval_rows == 5000


@pytest.mark.parametrize("kwargs, message", [
    ({"eval_splits": ("train", "holdout")}, r"'train', 'val', 'test' only, got \['holdout'\]"),
    ({"train_eval_rows": 0}, "train_eval_rows must be a positive integer"),
    ({"train_eval_rows": 2.5}, "train_eval_rows must be a positive integer"),
])
def test_bad_split_settings_fail_when_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AFMCompressionCallback([MLPStage(rank=4)], **kwargs)


class _SlowValidation(pl.Callback):
    """Sleeps in every fit validation (not the sanity check) and a little in every training batch."""

    def __init__(self, validation_s=0.5, batch_s=0.01):
        self.validation_s, self.batch_s = validation_s, batch_s
        self.validations = 0
        self.batches = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validations += 1
            time.sleep(self.validation_s)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches[trainer.current_epoch] = self.batches.get(trainer.current_epoch, 0) + 1
        time.sleep(self.batch_s)


def test_every_stage_records_its_wall_times_and_the_epochs_leave_validation_out():
    slow = _SlowValidation()
    callback = AFMCompressionCallback([MLPStage(rank=4), EmbeddingStage(rank=2, method="svd")], baseline_epochs=1,
                                      progress=False)
    _, _, wall = _fit(callback, [slow])
    mlp, emb = callback.history
    assert set(STAGE_TIME_KEYS) <= set(mlp) and set(mlp) == set(emb)
    assert mlp["rank_search_s"] is None and emb["rank_search_s"] is None  # no grow_rank
    for record in (mlp, emb):
        for key in ("statistics_s", "swap_s", "finetune_s", "eval_s"):
            assert record[key] >= 0, (record["name"], key)
        assert record["swap_s"] > 0 and record["eval_s"] > 0
        # the epoch's training holds its batches (and their sleeps), not the half-second validation
        assert slow.batch_s * slow.batches[record["start_epoch"]] <= record["finetune_s"] < wall
    assert mlp["statistics_s"] > 0  # AFM reads the training data; SVD reads the weights only
    summary = callback.summary()
    assert summary["baseline_epoch_s"] >= slow.batch_s * slow.batches[0] and summary["baseline_eval_s"] > 0
    assert slow.validations == 3
    stage_s = sum(r[k] for r in (mlp, emb) for k in ("statistics_s", "swap_s", "finetune_s", "eval_s"))
    # everything timed happened inside the fit, and none of it was a validation
    baseline_s = summary["baseline_epoch_s"] + summary["baseline_eval_s"]
    assert baseline_s + stage_s < wall - slow.validations * slow.validation_s


def test_select_best_checks_count_as_evaluation_not_training():
    callback = AFMCompressionCallback([MLPStage(rank=4, select="best", checks=4)], baseline_epochs=1, progress=False)
    checks = []
    original = callback._check

    def timed_check(*args, **kwargs):
        time.sleep(1.0)
        checks.append(1)
        return original(*args, **kwargs)

    callback._check = timed_check
    _fit(callback, max_epochs=2)
    (record,) = callback.history
    assert len(checks) == 4  # 3 inside the epoch (16 batches, 4 checks) and the last at its end
    assert record["eval_s"] >= 1.0 * len(checks)
    assert record["finetune_s"] < 3.0  # the 3 in-epoch checks' 3 s of sleep are not training


def test_baseline_epochs_zero_has_no_baseline_training_time_and_epoch_times_survive_a_checkpoint():
    callback = AFMCompressionCallback([MLPStage(rank=4, method="svd")], baseline_epochs=0, progress=False)
    _fit(callback, max_epochs=1)
    summary = callback.summary()
    assert summary["baseline_epoch_s"] is None and summary["baseline_eval_s"] > 0
    assert callback.history[0]["statistics_s"] < callback.history[0]["finetune_s"]
    restored = AFMCompressionCallback([MLPStage(rank=4, method="svd")], baseline_epochs=0, progress=False)
    restored.load_state_dict(callback.state_dict())
    assert restored._epoch_s == callback._epoch_s and set(restored._epoch_s) == {0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_times_on_a_gpu_wait_for_the_device():
    callback = AFMCompressionCallback([MLPStage(rank=4)], baseline_epochs=1, eval_splits=("train", "test"),
                                      progress=False)
    pl.seed_everything(0)
    dm = _datamodule()
    model = _model(dm)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="gpu", devices=1)
    trainer.fit(model, datamodule=dm)
    (record,) = callback.history
    assert all(record[k] > 0 for k in ("statistics_s", "swap_s", "finetune_s", "eval_s"))
    assert math.isfinite(record["train_auc"])
