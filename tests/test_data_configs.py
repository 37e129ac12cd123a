"""The Hydra configs of the data group: each instantiates its DataModule with the paper's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import lightning_afm
from lightning_afm.data import AvazuDataModule, CriteoDataModule, CSVDataModule, SyntheticDataModule

CONF = Path(lightning_afm.__file__).parent / "conf" / "data"


def _load(name: str, **overrides):
    """The ``data`` node of a data config (the files are ``@package _global_``: they also set
    ``finetune.*`` and, where the paper differs per dataset, ``model.*``)."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    return OmegaConf.merge(cfg.data, overrides)


def test_every_data_config_exists():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == ["avazu", "criteo", "csv", "synthetic"]


def test_synthetic_config():
    dm = instantiate(_load("synthetic", num_rows=2000))
    assert isinstance(dm, SyntheticDataModule)
    assert (dm.batch_size, dm.val_fraction, dm.test_fraction, dm.seed) == (1000, 0.1, 0.1, 2020)
    assert len(dm.config.vocab_sizes) == 16 and len(dm.config.numeric) == 5


def test_criteo_and_avazu_paper_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_AFM_CACHE", str(tmp_path / "cache"))
    criteo = instantiate(_load("criteo", path=str(tmp_path / "train.txt")))
    assert isinstance(criteo, CriteoDataModule)
    assert (criteo.batch_size, criteo.test_fraction, criteo.seed, criteo.options.min_count) == (1000, 0.1, 2020, 1)
    assert criteo.cache_dir == tmp_path / "cache"  # tests never write to the home directory
    avazu = instantiate(_load("avazu", path=str(tmp_path / "train.csv")))
    assert isinstance(avazu, AvazuDataModule) and (avazu.batch_size, avazu.test_fraction, avazu.seed) == (500, 0.2, 2020)


def test_path_is_required():
    with pytest.raises(MissingMandatoryValue):
        instantiate(_load("criteo"))
    with pytest.raises(MissingMandatoryValue):
        instantiate(_load("csv", path="x.csv"))  # label too


def test_cache_dir_defaults_to_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("LIGHTNING_AFM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _load("criteo").cache_dir == f"{tmp_path}/.cache/lightning_afm"


@pytest.mark.parametrize(
    "name, finetune, model",
    [
        ("synthetic", (10000, 5000), {"lr": 1e-3}),
        ("criteo", (20000, 10000), {"weight_decay": 1e-3, "l2_reg": 1e-5, "l2": "full"}),  # paper line 1086-1100
        ("avazu", (10000, 5000), {"embedding_dim": 50, "mlp_hidden": [2000, 2000, 2000],
                                  "weight_decay": 1e-3, "l2_reg": 1e-5, "l2": "full"}),
        ("csv", (10000, 5000), {"lr": 1e-3, "dropout": 0.2}),  # its own: README, "Your own table"
    ],
)
def test_global_keys_set_by_data_configs(name, finetune, model):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert (cfg.finetune.mlp_batch_size, cfg.finetune.emb_batch_size) == finetune
    assert (OmegaConf.to_container(cfg.model) if "model" in cfg else {}) == model


def test_composed_with_the_application_config(tmp_path):
    if not (CONF.parent / "config.yaml").is_file():
        pytest.skip("the application's config.yaml is not there")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose("config", overrides=["data=avazu", f"data.path={tmp_path}/train.csv", "data.batch_size=250"])
    assert cfg.data._target_ == "lightning_afm.data.AvazuDataModule" and cfg.data.batch_size == 250
    assert cfg.model.embedding_dim == 50 and cfg.finetune.emb_batch_size == 5000
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose("config", overrides=["data.num_rows=500"])
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, SyntheticDataModule) and dm.config.num_rows == 500


def test_csv_config_with_column_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_AFM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "t.csv").write_text("click;site;device;price\n" + "1;a;x;3.5\n0;b;y;1\n" * 5)
    cfg = _load("csv", path=str(tmp_path / "t.csv"), label="click", categorical=["site", "device"], numeric=["price"], sep=";", test_fraction=0.2)
    dm = instantiate(cfg)
    assert isinstance(dm, CSVDataModule) and dm.categorical == ["site", "device"] and dm.numeric == ["price"]
    dm.prepare_data()
    dm.setup()
    # 10 rows: 2 test (test_fraction 0.2), 1 validation (the config's 5 %, for finetune.select=best), 7 train
    assert dm.schema.vocab_sizes == [3, 3] and (dm.num_rows("train"), dm.num_rows("val"), dm.num_rows("test")) == (7, 1, 2)


@pytest.mark.parametrize("name", ["criteo", "avazu"])
def test_paper_data_configs_train_with_the_papers_weight_decay_and_l2(tmp_path, name):
    from hydra import compose, initialize_config_dir

    from lightning_afm.data.schema import Schema

    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose("config", overrides=[f"data={name}", f"data.path={tmp_path}/train", "model.embedding_dim=4",
                                           "model.mlp_hidden=[8]"])
    model = instantiate(cfg.model, schema=Schema.from_vocab_sizes([5, 6], numeric=1))
    assert (model.hparams.l2, model.hparams.l2_reg) == ("full", 1e-5)
    optimizer = model.configure_optimizers()  # the baseline's Adam: every parameter decays
    assert isinstance(optimizer, torch.optim.Adam)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    # the shared sample's experiment keeps its own (and the README's figures on it)
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=criteo_sample"])
    assert (cfg.model.weight_decay, cfg.model.l2) == (0.0, "rows")
