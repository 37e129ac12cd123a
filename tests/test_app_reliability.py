"""The app loses nothing: per-epoch checkpoints, resume, compressing a saved baseline, unique run
folders, undefined AUCs reported as null, and user errors as a sentence rather than a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lightning_afm.cli as cli
from lightning_afm.app.errors import ConfigError
from lightning_afm.app.rundirs import swept_dirname, unique_dir
from lightning_afm.callbacks.checkpointing import AtomicCheckpointIO, RandomStateCheckpoint

TINY = ["data.num_rows=6000", "data.vocab_sizes=[5,20,50,200]", "data.num_numeric=2", "data.batch_size=200",
        "data.eval_batch_size=1000", "model.embedding_dim=8", "model.mlp_hidden=[32,32,32]", "model.lr=1e-3",
        "logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
# Dropout on, so that resuming exactly needs the random state in the checkpoint.
AFM = ["compression=afm", "compression.mlp.rank=8", "compression.emb.rank=2", "compression.progress=false",
       "model.dropout=0.3"]


class _CrashAtEpoch(pl.Callback):
    """Stands in for a kill or a preemption at the start of an epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _run_crashing_at(monkeypatch, cfg, epoch):
    real = cli.build_callbacks
    monkeypatch.setattr(cli, "build_callbacks", lambda c: [*real(c), _CrashAtEpoch(epoch)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.run(cfg)
    monkeypatch.setattr(cli, "build_callbacks", real)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["paper", "guarded"])
def test_a_crashed_compression_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, protocol, compose_app):
    # The embedding stage finetunes 2 epochs and the crash comes after its first: the resumed fit
    # continues inside the stage (its optimizer, random state and, under the guarded protocol,
    # the best state seen so far all come from the checkpoint).
    common = TINY + AFM + [f"protocol={protocol}", "compression.emb.epochs=2", "trainer.max_epochs=4"]
    whole = cli.run(compose_app(common + [f"+output_dir={tmp_path / 'whole'}"]))

    crashed = tmp_path / "crashed"
    _run_crashing_at(monkeypatch, compose_app(common + [f"+output_dir={crashed}"]), epoch=3)
    last = crashed / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (crashed / "summary.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=True)["callbacks"]["AFMCompressionCallback"]
    assert state["stages_started"] == 2 and state["stages_finished"] == 1
    assert (state["best"] is not None) == (protocol == "guarded")

    resumed = cli.run(compose_app(common + [f"+output_dir={tmp_path / 'resumed'}", f"ckpt_path={last}"]))
    assert resumed["resumed_from"] == str(last)
    assert resumed["test_auc"] == pytest.approx(whole["test_auc"], abs=1e-6)
    assert resumed["test_logloss"] == pytest.approx(whole["test_logloss"], abs=1e-6)
    assert resumed["params"] == whole["params"]
    assert [s["name"] for s in resumed["stages"]] == ["mlp", "emb"]
    assert resumed["stages"][-1].get("checks") == whole["stages"][-1].get("checks")


@pytest.mark.slow
def test_resume_true_finds_the_unfinished_run_of_the_same_config(tmp_path, monkeypatch, compose_app):
    common = TINY + ["trainer.max_epochs=3", "model.dropout=0.3"]
    whole = cli.run(compose_app(common + [f"+output_dir={tmp_path / 'a' / 'b' / 'whole'}"]))
    crashed = tmp_path / "outputs" / "day" / "t1"
    _run_crashing_at(monkeypatch, compose_app(common + [f"+output_dir={crashed}"]), epoch=1)
    # the app keeps its config in .hydra/config.yaml when Hydra runs it; write it as Hydra would
    (crashed / ".hydra").mkdir()
    from omegaconf import OmegaConf
    OmegaConf.save(compose_app(common), crashed / ".hydra" / "config.yaml")

    resumed = cli.run(compose_app(common + ["resume=true", f"+output_dir={tmp_path / 'outputs' / 'day' / 't2'}"]))
    assert resumed["resumed_from"] == str(crashed / "checkpoints" / "last.ckpt")
    assert resumed["test_auc"] == pytest.approx(whole["test_auc"], abs=1e-6)

    with pytest.raises(ConfigError, match="no unfinished run of this configuration"):
        cli.run(compose_app(common + ["resume=true", "seed=5", f"+output_dir={tmp_path / 'outputs' / 'day' / 't3'}"]))


@pytest.mark.slow
def test_a_saved_baseline_is_compressed_from_the_command_line(tmp_path, compose_app):
    base = cli.run(compose_app(TINY + ["trainer.max_epochs=1", f"+output_dir={tmp_path / 'base'}"]))
    cfg = compose_app(TINY + AFM + [f"baseline={base['checkpoint']}", f"+output_dir={tmp_path / 'afm'}"])
    summary = cli.run(cfg)
    # no baseline epoch: the compression starts from the loaded weights, whose test AUC it reports
    assert summary["baseline_test_auc"] == pytest.approx(base["test_auc"], abs=1e-6)
    assert summary["epochs"] == 2 and summary["params"] < base["params"]
    assert summary["baseline_checkpoint"] == base["checkpoint"]

    with pytest.raises(ConfigError, match="already compressed"):
        cli.run(compose_app(TINY + AFM + [f"baseline={summary['checkpoint']}", f"+output_dir={tmp_path / 'x'}"]))
    with pytest.raises(ConfigError, match="no compression is configured"):
        cli.run(compose_app(TINY + [f"baseline={base['checkpoint']}", f"+output_dir={tmp_path / 'y'}"]))
    with pytest.raises(ConfigError, match="other data"):
        cli.run(compose_app(TINY + AFM + ["data.vocab_sizes=[5,20,50,300]", f"baseline={base['checkpoint']}",
                                       f"+output_dir={tmp_path / 'z'}"]))


def test_epoch_checkpoints_are_written_and_can_be_switched_off(tmp_path, compose_app):
    on = cli.run(compose_app(TINY + ["trainer.max_epochs=1", f"+output_dir={tmp_path / 'on'}"]))
    ckpt = torch.load(tmp_path / "on" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 24 and "torch" in ckpt["callbacks"]["RandomStateCheckpoint"]
    assert on["checkpoint"]
    cli.run(compose_app(TINY + ["trainer.max_epochs=1", "trainer.enable_checkpointing=false",
                             f"+output_dir={tmp_path / 'off'}"]))
    assert not (tmp_path / "off" / "checkpoints").exists()


def test_a_finished_run_folder_is_never_overwritten(tmp_path, compose_app):
    cli.run(compose_app(TINY + ["trainer.max_epochs=1", f"+output_dir={tmp_path}"]))
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        cli.run(compose_app(TINY + ["trainer.max_epochs=1", f"+output_dir={tmp_path}"]))
    assert (tmp_path / "summary.json").read_text() == before


def test_unique_dir_claims_a_new_folder_for_each_run_in_the_same_second(tmp_path):
    first = unique_dir(str(tmp_path / "12-00-00"))
    assert unique_dir(str(tmp_path / "12-00-00")) == first  # Hydra resolves the run dir more than once
    # another process (simulated by a fresh claim table) gets the next free name
    import lightning_afm.app.rundirs as rundirs
    rundirs._claimed.clear()
    second = unique_dir(str(tmp_path / "12-00-00"))
    assert first != second and Path(second).name == "12-00-00-2" and Path(second).is_dir()


def test_two_app_processes_started_together_write_separate_folders(tmp_path):
    cmd = [sys.executable, "-m", "lightning_afm", *TINY, "trainer.max_epochs=1", "save_checkpoint=false",
           "hydra.run.dir=${afm_unique:" + str(tmp_path / "same") + "}"]
    env = {**os.environ, "LIGHTNING_AFM_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    folders = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("same"))
    assert folders == ["same", "same-2"]
    for name in folders:
        assert json.loads((tmp_path / name / "summary.json").read_text())["test_auc"] is not None


def test_multirun_folders_are_named_after_the_swept_keys_only():
    argv = ["-m", "model=dcn,deepfm", "data.seed=range(2)", "seed=0", "data=criteo", "data.path=/x/train.txt"]
    job = ["model=dcn", "data.seed=1", "seed=0", "data=criteo", "data.path=/x/train.txt"]
    assert swept_dirname(job, argv) == "data.seed=1,model=dcn"
    assert swept_dirname(job, ["-m", "seed=0"]) == ""
    # 26 swept categorical columns stayed within a file name's limit
    many = [f"data.categorical.{i}=c{i}" for i in range(26)]
    name = swept_dirname(many, [f"data.categorical.{i}=c{i},x" for i in range(26)])
    assert len(name) <= 120 and name.startswith("data.categorical.0=c0")


def test_a_sweep_writes_folders_named_after_swept_keys(tmp_path):
    cmd = [sys.executable, "-m", "lightning_afm", "-m", *TINY, "trainer.max_epochs=1", "save_checkpoint=false",
           "trainer.enable_checkpointing=false", "data.num_rows=3000", "seed=1,2",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**os.environ, "LIGHTNING_AFM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0_seed=1", "1_seed=2"]


def test_a_split_with_one_class_reports_a_null_auc_with_a_warning(tmp_path, compose_app):
    cfg = compose_app(TINY + ["trainer.max_epochs=1", f"+output_dir={tmp_path}", "data.base_rate=1e-7"])
    with pytest.warns(UserWarning, match="the (val|test) split holds only non-clicks"):
        summary = cli.run(cfg)
    assert summary["test_auc"] is None and summary["val_auc"] is None
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["test_auc"] is None and on_disk["test_logloss"] is not None


@pytest.mark.parametrize("args, message", [
    (["trainer=gpu"], "sees no CUDA GPU"),
    (["ckpt_path=/nonexistent/last.ckpt"], "does not exist"),
    (["model.lr=-1"], "lr must be >= 0"),
])
def test_user_errors_print_a_sentence_not_a_traceback(tmp_path, args, message):
    if args == ["trainer=gpu"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cmd = [sys.executable, "-m", "lightning_afm", *TINY, *args, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["LIGHTNING_AFM_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "HYDRA_FULL_ERROR=1" in proc.stderr
    if args == ["trainer=gpu"]:
        assert not (tmp_path / "cache").exists()  # refused before any data preparation


def test_a_checkpoint_write_that_fails_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    callback = RandomStateCheckpoint()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = callback.state_dict()
    torch.save(state, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    callback.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_a_failing_test_step_keeps_the_trained_model(tmp_path, monkeypatch, compose_app):
    from lightning_afm.models.deepfm import DeepFM

    def broken(self, batch, batch_idx):
        raise RuntimeError("test step failed")

    monkeypatch.setattr(DeepFM, "test_step", broken)
    with pytest.raises(RuntimeError, match="test step failed"):
        cli.run(compose_app(TINY + ["trainer.max_epochs=1", f"+output_dir={tmp_path}"]))
    assert (tmp_path / "last.ckpt").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.undo()
    assert DeepFM.load_from_checkpoint(tmp_path / "last.ckpt") is not None


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_the_run_settings_and_final_auc_reach_the_logger_as_hparams(tmp_path, logger, compose_app):
    overrides = [o for o in TINY if not o.startswith("logger=")]
    summary = cli.run(compose_app(overrides + AFM + [f"logger={logger}", f"+output_dir={tmp_path}"]))
    if logger == "csv":
        import csv as csv_module

        import yaml
        (hparams,) = tmp_path.rglob("hparams.yaml")
        saved = yaml.safe_load(hparams.read_text())
        assert saved["compression"] == "mlp:afm,emb:afm" and saved["compression/emb/rank"] == 2
        (metrics,) = tmp_path.rglob("metrics.csv")
        rows = [r for r in csv_module.DictReader(metrics.open()) if r.get("hp_metric")]
        assert float(rows[-1]["hp_metric"]) == pytest.approx(summary["test_auc"], abs=1e-6)
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        found = {}
        for events in tmp_path.rglob("events.out.tfevents.*"):
            acc = EventAccumulator(str(events))
            acc.Reload()
            if "hp_metric" in acc.Tags().get("scalars", []):
                found["hp_metric"] = acc.Scalars("hp_metric")[-1].value
            for event in EventFileLoader(str(events)).Load():  # the HParams view's own records
                if any(v.metadata.plugin_data.plugin_name == "hparams" for v in event.summary.value):
                    found["hparams"] = True
        assert found.get("hparams") and found["hp_metric"] == pytest.approx(summary["test_auc"], abs=1e-6)


def test_auto_ranks_reach_the_logger_as_the_string_auto_and_the_chosen_ranks_as_metrics(tmp_path, compose_app):
    import csv as csv_module

    import yaml

    overrides = TINY + ["compression=afm_auto", "compression.progress=false", "compression.budget.ratio=2",
                        "compression.budget.multiple=4", f"+output_dir={tmp_path}"]
    summary = cli.run(compose_app(overrides))
    (hparams,) = tmp_path.rglob("hparams.yaml")
    saved = yaml.safe_load(hparams.read_text())
    assert saved["compression/mlp/rank"] == "auto" and saved["compression/emb/rank"] == "auto"
    (metrics,) = tmp_path.rglob("metrics.csv")
    rows = [r for r in csv_module.DictReader(metrics.open()) if r.get("budget/params")]
    assert len(rows) == 1 and float(rows[0]["budget/params"]) == summary["budget"]["params"]
    for name, rank in summary["budget"]["ranks"].items():
        assert float(rows[0][f"budget/rank/{name}"]) == rank
        assert 0 < float(rows[0][f"budget/kept_variance/{name}"]) <= 1
