"""Compressed checkpoints: load in a fresh process with identical predictions; resume inside a finetune."""

import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.compress import LowRankEmbedding, LowRankLinear
from lightning_afm.data import SyntheticDataModule
from lightning_afm.models import DeepFM


def _datamodule():
    return SyntheticDataModule(num_rows=4000, vocab_sizes=[5, 20, 60, 200], num_numeric=2, batch_size=200,
                               eval_batch_size=1000, val_fraction=0.1, test_fraction=0.1, seed=1)


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


def test_compressed_checkpoint_loads_in_a_fresh_process_with_identical_predictions(tmp_path):
    pl.seed_everything(0)
    dm = _datamodule()
    model = _model(dm)
    trainer = _trainer([_callback()], enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    assert isinstance(model.mlp[1].linear, LowRankLinear) and model.mlp_reads_codes
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


def test_resume_inside_the_mlp_finetune_continues_with_the_compressed_structure(tmp_path):
    pl.seed_everything(0)
    dm = _datamodule()
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True,
                            filename="{epoch}")
    # Stop after epoch 1 (the MLP finetune): the checkpoint of epoch 0 already holds the MLP swap.
    _trainer([_callback(), saver], max_epochs=3, max_steps=18 + 9).fit(_model(dm), datamodule=dm)
    assert (tmp_path / "epoch=0.ckpt").exists()

    dm = _datamodule()
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
