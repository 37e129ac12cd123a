"""AFMCompressionCallback under DDP: two CPU processes with gloo, Lightning's ``ddp`` strategy.

``callback_ddp_worker.py`` (next to this file) compresses one saved baseline DeepFM twice over:
the MLP stage at fit start and the embedding stage (with the fold) at the end of epoch 0, each
followed by a few finetune steps; every rank saves what it saw. The single-process reference
runs the same MLP stage from the same baseline in this process. The tests then check what the
issue asks of DDP: the statistics are summed over rank shards that cover every training row
once, every rank builds the same factors, they equal the single-process ones, and the new
parameters are synchronised while finetuning (a run without the DDP re-wrap shows that this
check catches parameters left out of DDP). The last test runs the Hydra app with
``trainer=ddp``, which Lightning relaunches as a second process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the worker module, whatever pytest's import mode
import callback_ddp_worker as worker  # noqa: E402
from lightning_afm.callbacks.afm_compression import AFMCompressionCallback  # noqa: E402
from lightning_afm.callbacks.stages import MLPStage  # noqa: E402

WORKER = Path(worker.__file__).resolve()
REPO = WORKER.parent.parent
WORLD = 2
STEPS = 4
TIMEOUT_S = 300  # a DDP hang fails the test instead of stalling the suite
#: DDP variables of an outer launcher must not leak into the runs started here.
DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
            "MASTER_ADDR", "MASTER_PORT", "PL_TRAINER_GPUS", "PL_GLOBAL_SEED")
#: `lightning-afm trainer=ddp compression=afm_mlp` on data and a model as small as the worker's.
CLI_OVERRIDES = [
    "trainer=ddp", "compression=afm_mlp", "data.num_rows=4000", "data.vocab_sizes=[3,8,16,32,64,100]",
    "data.num_numeric=2", "data.batch_size=200", "data.eval_batch_size=1000", "model.embedding_dim=8",
    "model.mlp_hidden=[32,32,32]", "model.lr=1e-2", "compression.mlp.rank=8", "finetune.mlp_batch_size=400",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


class _Background:
    """A command started now and waited for later, in its own process group (with the DDP rank
    Lightning starts from it), so that a hang or an interrupted session kills both ranks.

    The runs below overlap: most of each one is two Python processes importing Lightning one
    after the other, which leaves a core idle.
    """

    def __init__(self, command: list[str], log: Path) -> None:
        self.command = command
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, cwd=REPO, env=self._environment(), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    @staticmethod
    def _environment() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["OMP_NUM_THREADS"] = "1"
        return env

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait(self) -> str:
        """The run's output; the test fails with its end if the run failed or took too long."""
        try:
            code = self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        output = self.log.read_text(errors="replace")
        assert code == 0, f"{self.command} {'timed out' if code is None else f'exited with {code}'}:\n{output[-6000:]}"
        return output


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """A DeepFM trained one epoch on the tiny data: its layer outputs have a clear spectrum."""
    pl.seed_everything(0)
    dm = worker.make_datamodule()
    dm.setup("fit")
    model = worker.make_model(dm.schema)
    pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("baseline") / "baseline.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def runs(baseline, tmp_path_factory) -> Iterator[dict[str, tuple[_Background, Path]]]:
    """Starts the three two-process runs at once: ``ddp`` (both stages, ``STEPS`` finetune steps
    each), ``no_rewrap`` (the negative control) and ``cli`` (the Hydra app); ``name -> (run, folder)``."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("ddp", "no_rewrap", "cli")}

    def worker_command(out: Path, *options: str) -> list[str]:
        return [sys.executable, str(WORKER), "--baseline", str(baseline), "--out", str(out), "--devices", str(WORLD),
                *options]

    script = Path(sys.executable).with_name("lightning-afm")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "lightning_afm"]
    commands = {
        "ddp": worker_command(folders["ddp"], "--steps", str(STEPS), "--stages", "mlp,emb"),
        "no_rewrap": worker_command(folders["no_rewrap"], "--steps", "1", "--stages", "mlp", "--no-rewrap"),
        "cli": cli + CLI_OVERRIDES + [f"hydra.run.dir={folders['cli'] / 'run'}"],
    }
    started: dict[str, tuple[_Background, Path]] = {}
    try:
        for name, command in commands.items():
            started[name] = (_Background(command, folders[name] / "output.log"), folders[name])
        yield started
    finally:
        for run, _ in started.values():
            run.kill()


def _records(runs, name: str) -> list[dict]:
    run, folder = runs[name]
    run.wait()
    records = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["rank"] for r in records] == list(range(WORLD)) and all(r["world_size"] == WORLD for r in records)
    return records


@pytest.fixture(scope="module")
def single(baseline, runs, tmp_path_factory) -> dict:
    """The MLP stage in this process, one device, from the same baseline (while the runs go on)."""
    return worker.run(baseline, tmp_path_factory.mktemp("single"), devices=1, steps=1, stages=["mlp"])


@pytest.fixture(scope="module")
def ddp(runs) -> list[dict]:
    """The records of the two DDP ranks."""
    return _records(runs, "ddp")


def _assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different} differ"


def test_statistics_are_summed_over_shards_that_cover_every_training_row_once(single, ddp):
    train_rows = ddp[0]["train_rows"]
    assert train_rows == single["train_rows"] == 3200
    for index, stage in enumerate(("mlp", "emb")):
        per_rank = [record["stages"][index] for record in ddp]
        local = [s["local_rows"] for s in per_rank]
        # every rank read its own share (not all rows), and the shares add up to every row once
        assert sum(local) == train_rows and max(local) < train_rows, (stage, local)
        for name, stats in per_rank[0]["statistics"].items():
            # one output row per example for a Linear, one lookup per example for a field table
            assert stats["count"] == train_rows, (stage, name, stats["count"])
            other = per_rank[1]["statistics"][name]
            assert other["count"] == train_rows
            assert torch.equal(stats["mean"], other["mean"]) and torch.equal(stats["cov"], other["cov"]), name
    # The summed statistics are those of the whole training split read in one process. (The
    # outer-product sums run in float32 per batch, and the batches differ, so not bit for bit.)
    reference = single["stages"][0]["statistics"]
    assert reference.keys() == ddp[0]["stages"][0]["statistics"].keys() == set(worker.MLP_TARGETS)
    for name, stats in ddp[0]["stages"][0]["statistics"].items():
        assert reference[name]["count"] == stats["count"]
        torch.testing.assert_close(stats["mean"], reference[name]["mean"], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(stats["cov"], reference[name]["cov"], rtol=1e-5, atol=1e-8)


def test_every_rank_builds_identical_factors(ddp):
    """Compared at the swap, before the DDP re-wrap, whose broadcast from rank 0 would hide a difference."""
    mlp, emb = (ddp[0]["stages"][i]["at_swap"] for i in range(2))
    assert {"mlp.1.linear.first.weight", "mlp.1.linear.second.weight", "mlp.2.linear.first.bias"} <= mlp.keys()
    assert "mlp.1.linear.weight" not in mlp
    assert {"embeddings.C1.table.weight", "embeddings.C6.projection.weight"} <= emb.keys()
    assert emb["mlp.0.linear.weight"].shape[1] == 6 * 2 + 2  # folded: F fields x k codes + N numeric
    for index in range(2):
        _assert_states_equal(ddp[0]["stages"][index]["at_swap"], ddp[1]["stages"][index]["at_swap"],
                             f"model right after stage {index}'s swap")


def test_ddp_factors_equal_the_single_process_factors(single, ddp):
    distributed, reference = ddp[0]["stages"][0]["at_swap"], single["stages"][0]["at_swap"]
    assert distributed.keys() == reference.keys()
    for key, value in reference.items():
        if key.startswith(worker.MLP_TARGETS):
            # The statistics agree to ~1e-9 (above); the factors amplify that by 1 / eigengap where
            # the trailing kept eigenvalues crowd (~1e-5 seen). Factors from one rank's shard alone
            # are off by 7e-3 to 0.7 here.
            torch.testing.assert_close(distributed[key], value, rtol=1e-3, atol=1e-4, msg=key)
        else:  # untouched baseline weights
            assert torch.equal(distributed[key], value), key
    # The callback's evaluations are synced over the ranks' shards of the validation split:
    # the same figures as one process scoring the whole split.
    for record in ddp:
        assert record["baseline"]["val_auc"] == pytest.approx(single["baseline"]["val_auc"], abs=1e-6)
        assert record["baseline"]["val_logloss"] == pytest.approx(single["baseline"]["val_logloss"], rel=1e-6)
        mlp, ref = record["history"][0], single["history"][0]
        assert mlp["params"] == ref["params"] < mlp["params_before"] == ref["params_before"]
        assert mlp["pre_finetune_val_auc"] == pytest.approx(ref["pre_finetune_val_auc"], abs=1e-4)
        assert mlp["pre_finetune_val_logloss"] == pytest.approx(ref["pre_finetune_val_logloss"], rel=1e-4)


def test_new_parameters_are_synchronised_during_the_finetune(ddp):
    for record in ddp:
        for index, stage in enumerate(record["stages"]):
            assert stage["ddp_wraps_model"], f"stage {index}: the trainer's DDP wrapper is not around the model"
            assert stage["optimizer_covers_model"], f"stage {index}: optimizer params != the model's parameters"
        assert [s["name"] for s in record["history"]] == ["mlp", "emb"]
    # Each rank trained on its own shard; only synchronised gradients keep the replicas equal.
    final = [record["final_state"] for record in ddp]
    _assert_states_equal(final[0], final[1], "model after the finetunes")
    # ... and the new parameters did train (away from the factors they started from).
    for index, prefixes in enumerate([worker.MLP_TARGETS, ("embeddings.", "mlp.0.linear.")]):
        at_swap = ddp[0]["stages"][index]["at_swap"]
        new = [k for k in at_swap if k.startswith(prefixes)]
        unchanged = [k for k in new if torch.equal(final[0][k], at_swap[k])]
        assert new and not unchanged, f"stage {index}: {unchanged} did not change while finetuning"
    # Evaluations after each finetune are the same synced figures on every rank, and the wall times
    # (each rank times its own work) are rank 0's on every rank.
    assert ddp[0]["history"] == ddp[1]["history"]
    assert all(stage[key] > 0 for stage in ddp[0]["history"] for key in ("swap_s", "finetune_s", "eval_s"))
    assert ddp[0]["baseline"]["eval_s"] == ddp[1]["baseline"]["eval_s"] > 0


def test_without_the_rewrap_the_new_parameters_drift_apart(runs):
    """The negative control of the test above: its check sees parameters that DDP does not sync."""
    records = _records(runs, "no_rewrap")
    _assert_states_equal(records[0]["stages"][0]["at_swap"], records[1]["stages"][0]["at_swap"], "at the swap")
    final = [record["final_state"] for record in records]
    drifted = [k for k in final[0] if k.startswith(worker.MLP_TARGETS) and not torch.equal(final[0][k], final[1][k])]
    assert drifted, "without the re-wrap the factored layers should have trained apart on the two shards"


def test_spawned_ddp_strategies_are_refused_before_any_work():
    """ddp_spawn trains in child processes and copies the weights back with strict=False: the
    compressed modules would silently not reach the main process's model. (One device and
    strategy='ddp' pass the same check in the fits above.)"""
    callback = AFMCompressionCallback([MLPStage(rank=4)], baseline_epochs=0, progress=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match=r"spawned processes.*strategy='ddp'"):
        callback.on_fit_start(trainer, pl.LightningModule())
    assert callback.stages_started == 0


def test_hydra_app_runs_afm_mlp_under_ddp(runs):
    """`lightning-afm trainer=ddp compression=afm_mlp`: Lightning relaunches the Hydra app for rank 1;
    the run completes and rank 0 alone writes the summary."""
    run, folder = runs["cli"]
    run.wait()
    run_dir = folder / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2
    (stage,) = summary["stages"]
    assert stage["name"] == "mlp" and stage["rank"] == 8
    assert summary["params"] == stage["params"] < stage["params_before"] == summary["baseline_params"]
    for key in ("pre_finetune_test_auc", "test_auc"):
        assert 0.5 < stage[key] < 1.0, (key, stage[key])
    # rank 0 logs to the run's main log, rank 1 (relaunched) to its own: one summary, by rank 0
    logs = {p.name: p.read_text() for p in run_dir.glob("*.log")}
    rank1 = logs.pop("train_ddp_process_1.log", None)
    assert rank1 is not None and len(logs) == 1, f"expected rank 0's log and rank 1's, got {sorted(logs)}"
    assert next(iter(logs.values())).count("summary written") == 1
    assert "summary written" not in rank1
    assert "statistics pass" in rank1  # rank 1 did take part in the stage
