"""recipes/estimate_full.py without timing anything: the settings it trains with and its run model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("estimate_full", ROOT / "recipes" / "estimate_full.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


estimate = _load()


@pytest.mark.parametrize("dataset", ["criteo", "avazu"])
def test_paper_settings_are_the_data_configs_full_mode_trains_with(dataset):
    # read independently of OmegaConf: the YAML file full mode composes
    model = yaml.safe_load((ROOT / "lightning_afm" / "conf" / "data" / f"{dataset}.yaml").read_text())["model"]
    settings = estimate.regularization(dataset, "paper")
    assert settings == {"weight_decay": model["weight_decay"], "l2_reg": model["l2_reg"], "l2": model["l2"]}
    assert settings["weight_decay"] == pytest.approx(1e-3) and settings["l2"] == "full"  # paper line 1086-1100
    assert estimate.regularization(dataset, "light") == {"weight_decay": 0.0, "l2": "rows"}


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="'paper' or 'light'"):
        estimate.regularization("criteo", "heavy")


def test_every_recipe_run_has_a_time_and_costs_what_its_epochs_do():
    per_row = {"base": 1e-4, "mlp": 2e-5, "emb": 3e-5, "scratch": 5e-5, "forward": 1e-5}
    for recipe, kinds in estimate.RECIPES.items():
        for kind in kinds:
            assert estimate.run_seconds(kind, "criteo", per_row) > 0, (recipe, kind)
    n_test = round(estimate.ROWS["criteo"] * 0.1)
    n_train = estimate.ROWS["criteo"] - n_test
    # table14's 1-epoch scratch run: one epoch of the compressed structure and one test evaluation
    assert estimate.run_seconds("scratch_1_epoch", "criteo", per_row) == pytest.approx(
        n_train * 5e-5 + n_test * 1e-5)
    # afm: baseline, two statistics passes (1.5 forwards each), two finetunes, six test evaluations
    assert estimate.run_seconds("afm", "criteo", per_row) == pytest.approx(
        n_train * (1e-4 + 2e-5 + 3e-5) + 2 * 1.5 * n_train * 1e-5 + 6 * n_test * 1e-5)
