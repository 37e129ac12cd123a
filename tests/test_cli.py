"""The Hydra application: configs compose, and a run writes its summary and checkpoint."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from lightning_afm.cli import run
from lightning_afm.models import MODELS

TINY_DATA = ["data.num_rows=6000", "data.vocab_sizes=[5,20,50,200]", "data.num_numeric=2", "data.batch_size=200",
             "data.eval_batch_size=1000", "model.embedding_dim=8", "model.mlp_hidden=[32,32,32]", "model.lr=1e-3"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_config_composes(model, compose_app):
    cfg = compose_app([f"model={model}"])
    assert cfg.model._target_.split(".")[-1] == MODELS[model].__name__


@pytest.mark.parametrize("data", ["synthetic", "criteo", "avazu", "csv"])
def test_every_data_config_composes(data, compose_app):
    cfg = compose_app([f"data={data}"])
    assert "_target_" in cfg.data


@pytest.mark.parametrize("option", ["none", "afm", "afm_mlp", "afm_emb", "svd", "svd_mlp", "svd_emb", "ttd_emb",
                                    "ttd_svd_emb", "scratch", "scratch_mlp", "qr_emb", "pq_emb"])
def test_every_compression_config_composes(option, compose_app):
    cfg = compose_app([f"compression={option}"])
    if option == "none":
        assert cfg.compression is None
    else:
        from lightning_afm.callbacks.factory import build_compression_callback

        callback = build_compression_callback(cfg.compression)
        assert cfg.trainer.max_epochs >= callback.total_epochs
        if option.startswith("ttd"):  # TT-Rec's selection; random init unless the TT-SVD variant
            stage = callback.stages[0]
            assert (stage.ttd_min_rows, stage.ttd_lr) == (100_000, True)
            assert stage.ttd_init == ("svd" if option == "ttd_svd_emb" else "random")


def test_compression_ranks_are_overridable(compose_app):
    cfg = compose_app(["compression=afm", "compression.mlp.rank=32", "compression.emb.rank=4"])
    assert (cfg.compression.mlp.rank, cfg.compression.emb.rank) == (32, 4)


def test_paper_settings_for_criteo_and_avazu(compose_app):
    criteo = compose_app(["data=criteo", "compression=afm"])
    assert criteo.data.batch_size == 1000 and criteo.data.test_fraction == 0.1
    assert criteo.model.embedding_dim == 16 and list(criteo.model.mlp_hidden) == [400, 400, 400]
    assert criteo.compression.mlp.batch_size == 20000 and criteo.compression.emb.batch_size == 10000
    assert (criteo.compression.mlp.rank, criteo.compression.emb.rank) == (64, 2)
    avazu = compose_app(["data=avazu", "model=dcn", "compression=afm"])
    assert avazu.data.batch_size == 500 and avazu.data.test_fraction == 0.2
    assert avazu.model.embedding_dim == 50 and list(avazu.model.mlp_hidden) == [2000, 2000, 2000]
    assert avazu.compression.mlp.batch_size == 10000 and avazu.compression.emb.batch_size == 5000
    assert (avazu.compression.mlp.rank, avazu.compression.emb.rank) == (320, 8)
    assert compose_app(["data=avazu", "compression=svd_emb"]).compression.emb.rank == 8


def test_run_writes_summary_and_a_loadable_checkpoint(tmp_path, compose_app):
    cfg = compose_app(TINY_DATA + ["trainer.max_epochs=1", f"+output_dir={tmp_path}", "logger=csv",
                                "trainer.enable_progress_bar=false"])
    summary = run(cfg)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("model", "data", "params", "test_auc", "test_logloss", "val_auc", "train_samples_per_s", "wall_s"):
        assert on_disk[key] is not None, key
    assert on_disk["model"] == "deepfm" and on_disk["data"] == "synthetic"
    assert 0.5 < summary["test_auc"] <= 1.0
    assert (tmp_path / "summary.md").read_text().startswith("# deepfm on synthetic")
    model = MODELS["deepfm"].load_from_checkpoint(tmp_path / "last.ckpt")
    assert sum(p.numel() for p in model.parameters()) == summary["params"]


def test_run_with_afm_compression_records_stages(tmp_path, compose_app):
    cfg = compose_app(TINY_DATA + ["compression=afm", "compression.mlp.rank=8", "compression.emb.rank=2",
                                f"+output_dir={tmp_path}", "logger=csv", "trainer.enable_progress_bar=false",
                                "compression.progress=false"])
    summary = run(cfg)
    names = [s["name"] for s in summary["stages"]]
    assert names == ["mlp", "emb"]
    for stage in summary["stages"]:
        for key in ("method", "rank", "params", "pre_finetune_test_auc", "pre_finetune_test_logloss",
                    "test_auc", "test_logloss"):
            assert stage[key] is not None, key
    assert summary["stages"][-1]["params"] == summary["params"] < summary["baseline_params"]
    assert summary["baseline_test_auc"] > 0.5

    # The compressed checkpoint loads in a fresh model and predicts exactly like the trained one.
    model = MODELS["deepfm"].load_from_checkpoint(tmp_path / "last.ckpt")
    assert model.mlp_reads_codes
    batch = {"categorical": torch.zeros(4, 4, dtype=torch.long), "numeric": torch.rand(4, 2)}
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert "afm_compression_plan" in state
    assert torch.isfinite(model.eval()(batch["categorical"], batch["numeric"])).all()


def test_criteo_sample_experiment_composes(compose_app):
    cfg = compose_app(["experiment=criteo_sample", "compression=afm"])
    assert cfg.data._target_.endswith("CriteoDataModule") and cfg.data.path.endswith("criteo_sample_10k.txt")
    assert cfg.model.lr == 1e-3 and cfg.compression.mlp.batch_size == 2048
