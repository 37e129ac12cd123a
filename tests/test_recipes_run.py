"""The recipes end to end: table6 in small mode on a tiny override set, and the recipes' argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TABLES = ["table2", "table4", "table6", "table7", "table8", "table11", "table13", "table14", "table15", "table16",
          "table17", "pareto"]
TINY = ["data.num_rows=3000", "data.vocab_sizes=[5,20,50,200]", "data.num_numeric=2", "data.batch_size=200",
        "data.eval_batch_size=1000", "model.embedding_dim=8", "model.mlp_hidden=[32,32,32]",
        "compression.mlp.rank=4", "finetune.mlp_batch_size=1000"]


def _env():
    # the recipes find lightning-afm next to this interpreter (the venv running the tests)
    return {**os.environ, "LIGHTNING_AFM_BIN": str(Path(sys.executable).parent)}


def _recipe(name, *args, timeout=300):
    return subprocess.run(["bash", str(RECIPES / f"{name}.sh"), *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout, cwd=ROOT)


def test_every_table_has_an_executable_recipe_with_help_and_a_readme_row():
    readme = (RECIPES / "README.md").read_text()
    for table in TABLES:
        path = RECIPES / f"{table}.sh"
        assert path.is_file() and os.access(path, os.X_OK), path
        done = _recipe(table, "--help")
        assert done.returncode == 0 and f"recipes/{table}.sh small" in done.stdout, done.stderr
        assert f"recipes/{table}.sh full" in done.stdout
        assert f"| `recipes/{table}.sh` |" in readme


@pytest.mark.parametrize("args, message", [
    ((), "say which mode"),
    (("full",), "full mode needs the data"),
    (("full", "criteo=/nonexistent/train.txt"), "no such file: /nonexistent/train.txt"),
    (("small", "colour=blue"), "unknown argument 'colour=blue'"),
])
def test_recipe_arguments_are_checked_before_any_run(args, message):
    done = _recipe("table4", *args)
    assert done.returncode == 2 and message in done.stderr


def test_a_recipe_never_replaces_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "notes.txt").write_text("mine")
    done = _recipe("table6", "small", f"out={tmp_path}", "--", *TINY)
    assert done.returncode == 2 and "is not a sweep of this recipe" in done.stderr
    assert (tmp_path / "synthetic" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_table6_small_runs_its_sweep_and_writes_the_table(tmp_path):
    # a stale sweep of an earlier run: replaced, not mixed with the new jobs
    (tmp_path / "synthetic" / "7").mkdir(parents=True)
    (tmp_path / "synthetic" / "multirun.yaml").write_text("hydra: {}\n")
    (tmp_path / "synthetic" / "7" / "summary.json").write_text("{}")
    done = _recipe("table6", "small", f"out={tmp_path}", "--", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = sorted(tmp_path.glob("synthetic/*/summary.json"))
    assert [s.parent.name for s in summaries] == ["0", "1"]
    overrides = [(s.parent / ".hydra" / "overrides.yaml").read_text() for s in summaries]
    assert all("compression.mlp.relu=true" in o.lower() for o in overrides)
    assert ["relu_init=shift" in o for o in overrides] == [True, False]
    assert ["relu_init=plain" in o for o in overrides] == [False, True]
    (no_relu,) = tmp_path.glob("synthetic_no_relu/*/summary.json")
    assert "compression.mlp.relu=false" in (no_relu.parent / ".hydra" / "overrides.yaml").read_text().lower()
    markdown = (tmp_path / "table6.md").read_text()
    assert done.stdout.strip() == markdown.strip()
    for variant in ("| AFM with ReLU | MLP |", "| AFM with ReLU, plain (the paper's) | MLP |", "| AFM without ReLU | MLP |",
                    "| Baseline | 1 epoch |"):
        assert variant in markdown
    assert "3,000 generated rows" in markdown and "Command: `recipes/table6.sh small" in markdown
    record = json.loads((tmp_path / "recipe.json").read_text())
    assert record["command"].startswith("recipes/table6.sh small") and record["wall_s"] >= 0


@pytest.mark.slow
def test_pareto_small_compares_uniform_and_auto_from_one_baseline_and_times_them(tmp_path):
    tiny = [o for o in TINY if not o.startswith("compression.")] + ["finetune.emb_batch_size=1000"]
    done = subprocess.run(["bash", str(RECIPES / "pareto.sh"), "small", f"out={tmp_path}", "--", *tiny],
                          capture_output=True, text=True, env={**_env(), "SEEDS": "0", "RATIOS": "2 1000"},
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio 1000 is left out" in done.stderr  # under the smallest structure: neither structure runs
    (uniform,) = tmp_path.glob("synthetic_uniform_2x/*/summary.json")
    (auto,) = tmp_path.glob("synthetic_auto_2x/*/summary.json")
    assert not list(tmp_path.glob("*1000x*"))
    base = tmp_path / "synthetic_baseline" / "s0" / "last.ckpt"
    for summary in (uniform, auto):
        record = json.loads(summary.read_text())
        assert record["baseline_checkpoint"] == str(base)
        assert json.loads((summary.parent / "latency.json").read_text())["batch"] == 10_000
    # the uniform run ends at the count pareto_ranks priced for it, at or under half the baseline's
    uniform_record = json.loads(uniform.read_text())
    line = next(ln for ln in done.stderr.splitlines() if "2x: uniform MLP" in ln)
    assert f"({uniform_record['params']} parameters)" in line
    assert uniform_record["params"] <= uniform_record["baseline_params"] / 2
    assert json.loads(auto.read_text())["params"] <= uniform_record["baseline_params"] / 2
    markdown = (tmp_path / "pareto.md").read_text()
    assert "| uniform | 2x |" in markdown and "| auto | 2x |" in markdown and "| baseline |" in markdown
    assert (tmp_path / "pareto.png").stat().st_size > 0


SAMPLE = ROOT.parent / "shared" / "data" / "criteo_sample_10k.txt"


@pytest.mark.skipif(not SAMPLE.is_file(), reason="the shared Criteo sample is not next to the repository")
def test_pareto_sample_runs_on_the_criteo_sample_with_split_and_model_seeds_together(tmp_path):
    tiny = ["model.embedding_dim=4", "model.mlp_hidden=[16,16,16]", "+trainer.limit_train_batches=5"]
    done = subprocess.run(["bash", str(RECIPES / "pareto.sh"), "sample", f"out={tmp_path}", "--", *tiny],
                          capture_output=True, text=True, env={**_env(), "SEEDS": "1", "RATIOS": "1000"},
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio 1000 is left out" in done.stderr  # only the baseline runs
    summary = json.loads((tmp_path / "sample_baseline" / "s1" / "summary.json").read_text())
    assert summary["seed"] == 1 and summary["data"] == "criteo"
    config = OmegaConf.load(tmp_path / "sample_baseline" / "s1" / ".hydra" / "config.yaml")
    assert config.data.seed == 1 and config.data.path.endswith("criteo_sample_10k.txt")  # the split follows the seed
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["command"].startswith("recipes/pareto.sh sample")
    assert "| baseline |" in (tmp_path / "pareto.md").read_text()
