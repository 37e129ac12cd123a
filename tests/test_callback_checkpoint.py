"""Compressed checkpoints: load in a fresh process with identical predictions; resume inside a finetune."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.compress import LowRankEmbedding, LowRankLinear
from lightning_afm.models import DeepFM


def _model(dm):
    dm.prepare_data()
    dm.setup("fit")
    return DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=[32, 32, 32], lr=3e-3)


def _callback():
    return AFMCompressionCallback([MLPStage(rank=4, lr=3e-3, batch_size=400), EmbeddingStage(rank=2, dropout=0.0)],
                                  baseline_epochs=1, progress=False)


def _trainer(callbacks, max_epochs=3, **kwargs):
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", **kwargs)


def test_compressed_checkpoint_loads_in_a_fresh_process_with_identical_predictions(tiny_synthetic,
                                                                                   same_predictions_in_fresh_process):
    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    trainer = _trainer([_callback()], enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    assert isinstance(model.mlp[1].linear, LowRankLinear) and model.mlp_reads_codes
    same_predictions_in_fresh_process(trainer, model, dm)


def test_resume_inside_the_mlp_finetune_continues_with_the_compressed_structure(tmp_path, tiny_synthetic):
    pl.seed_everything(0)
    dm = tiny_synthetic()
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True,
                            filename="{epoch}")
    # Stop after epoch 1 (the MLP finetune). The checkpoint of epoch 0 holds the baseline it validated;
    # resuming from it starts the MLP stage at fit start (the stage was due at epoch 1).
    _trainer([_callback(), saver], max_epochs=3, max_steps=18 + 9).fit(_model(dm), datamodule=dm)
    assert (tmp_path / "epoch=0.ckpt").exists()

    dm = tiny_synthetic()
    fresh = _model(dm)
    callback = _callback()
    trainer = _trainer([callback], enable_checkpointing=False)
    trainer.fit(fresh, datamodule=dm, ckpt_path=tmp_path / "epoch=0.ckpt")
    assert [r["name"] for r in callback.history] == ["mlp", "emb"]
    assert callback.stages_finished == 2 and trainer.current_epoch == 3
    assert isinstance(fresh.mlp[2].linear, LowRankLinear)
    assert isinstance(fresh.embeddings.C1, LowRankEmbedding) and fresh.mlp_reads_codes
    # The MLP stage's batch size and lr came back from the checkpoint / stage settings.
    assert callback.history[0]["rank"] == 4 and "test_auc" in callback.history[1]


class _OutputsAtSave(pl.Callback):
    """Stores in every checkpoint the model's logits on a fixed batch at the moment it is saved."""

    def __init__(self, batch):
        self.batch = batch

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        was_training = pl_module.training
        with torch.no_grad():
            checkpoint["logits_at_save"] = pl_module.eval()(self.batch["categorical"], self.batch["numeric"])
        pl_module.train(was_training)


def test_every_checkpoint_of_a_compressing_fit_loads_its_own_structure(tmp_path, tiny_synthetic):
    from lightning_afm.callbacks.evaluation import evaluate

    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    batch = next(iter(dm.test_dataloader()))
    saver = ModelCheckpoint(dirpath=tmp_path, monitor="val_auc", mode="max", save_top_k=-1,
                            filename="{epoch}-{stage:.0f}-{val_auc:.4f}")
    callback = AFMCompressionCallback([MLPStage(rank=4, lr=3e-3), EmbeddingStage(rank=2)], baseline_epochs=1,
                                      progress=False)
    trainer = _trainer([callback, saver, _OutputsAtSave(batch)])
    trainer.fit(model, datamodule=dm)
    scores = {k: float(v) for k, v in saver.best_k_models.items()}
    history = [dict(r) for r in callback.history]
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    # The stage in the name is the structure inside: epoch 0 is the baseline, then one stage per epoch.
    assert [n.split("-")[:2] for n in names] == [["epoch=0", "stage=0"], ["epoch=1", "stage=1"], ["epoch=2", "stage=2"]]

    # "best" may be any stage's file; the final (most compressed) model takes its structure.
    trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    for name in names:
        path = tmp_path / name
        saved = torch.load(path, map_location="cpu", weights_only=True)
        fresh = DeepFM.load_from_checkpoint(path).eval()
        with torch.no_grad():
            assert torch.equal(fresh(batch["categorical"], batch["numeric"]), saved["logits_at_save"]), name
        stage = int(name.split("-")[1].split("=")[1])
        assert isinstance(fresh.mlp[1].linear, LowRankLinear) == (stage >= 1)
        assert fresh.mlp_reads_codes == (stage >= 2)
        # ... and the score in the name is that of the weights inside.
        val = evaluate(fresh, dm.val_dataloader())
        assert val["auc"] == pytest.approx(scores[str(path)], abs=1e-5), name
        # The fit's own model (fully compressed now) loads every stage's file too.
        trainer.test(model, datamodule=dm, ckpt_path=path, verbose=False)
        with torch.no_grad():
            assert torch.equal(model.eval()(batch["categorical"], batch["numeric"]), saved["logits_at_save"]), name
    assert callback.history == history, "a test call's checkpoint does not rewrite the fit's records"


def test_a_user_module_reloads_an_earlier_stage_through_the_callback(tmp_path):
    from test_callback_user_module import TinyCTR, _loaders

    pl.seed_everything(0)
    train, val = _loaders()
    saver = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1, filename="{epoch}-{stage:.0f}")
    callback = AFMCompressionCallback([MLPStage(rank=8, targets=["net.2"]), EmbeddingStage(rank=4, targets=["user", "item"])],
                                      baseline_epochs=1, progress=False)
    model = TinyCTR()
    trainer = _trainer([callback, saver])
    trainer.fit(model, train, val)
    baseline = tmp_path / "epoch=0-stage=0.ckpt"
    trainer.validate(model, val, ckpt_path=baseline, verbose=False)  # TinyCTR knows nothing of plans
    assert isinstance(model.net[2], torch.nn.Linear) and isinstance(model.user, torch.nn.Embedding)
    state = torch.load(baseline, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # Outside the trainer call the module's hook is its own again.
    assert "on_load_checkpoint" not in vars(model)


class _RunsCode:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, tiny_synthetic):
    import pickle

    import pytest

    marker = tmp_path / "code_ran"
    dm = tiny_synthetic()
    model = _model(dm)
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": model.state_dict(), "afm_compression_plan": {"version": 1, "entries": []},
                "payload": _RunsCode(marker)}, crafted)
    for how in ("attribute", "argument"):
        trainer = _trainer([_callback()], enable_checkpointing=False)
        if how == "attribute":
            trainer.ckpt_path = crafted  # the callback used to torch.load this with weights_only=False in setup
        with pytest.raises(pickle.UnpicklingError):
            trainer.fit(model, datamodule=dm, ckpt_path=crafted if how == "argument" else None, weights_only=True)
        assert not marker.exists(), how


def test_fit_with_the_checkpoint_of_a_plain_model_compresses_it_like_loading_its_weights(tmp_path, tiny_synthetic):
    """``fit(model, ckpt_path=baseline.ckpt)`` with ``baseline_epochs=0``: the file's weights are the
    baseline; its optimizer (whose groups no longer match after the swap) and epoch counters are not used."""
    pl.seed_everything(0)
    dm = tiny_synthetic()
    path = tmp_path / "baseline.ckpt"
    trainer = _trainer([], max_epochs=1, enable_checkpointing=False)
    trainer.fit(_model(dm), datamodule=dm)  # a plain fit whose checkpoint is the baseline
    trainer.save_checkpoint(path)

    def compress(route):
        pl.seed_everything(1)
        callback = AFMCompressionCallback([MLPStage(rank=4, lr=3e-3), EmbeddingStage(rank=2)], baseline_epochs=0,
                                          progress=False)
        t = _trainer([callback], max_epochs=2, enable_checkpointing=False)
        if route == "ckpt_path":
            t.fit(_model(dm), datamodule=dm, ckpt_path=path)
        else:
            t.fit(DeepFM.load_from_checkpoint(path), datamodule=dm)
        return callback

    by_path, by_weights = compress("ckpt_path"), compress("load_from_checkpoint")
    assert [r["finished"] for r in by_path.history] == [True, True]
    assert by_path.baseline["test_auc"] == pytest.approx(by_weights.baseline["test_auc"], abs=1e-7)
    for a, b in zip(by_path.history, by_weights.history):
        assert a["test_auc"] == pytest.approx(b["test_auc"], abs=1e-6) and a["params"] == b["params"]
