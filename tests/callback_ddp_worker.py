"""AFM compression of a tiny DeepFM under ``trainer.fit``, recording what the DDP tests compare.

Not a test module: ``tests/test_callback_ddp.py`` runs it as a script with ``--devices 2`` (two
CPU processes, gloo, Lightning's ``ddp`` strategy, which relaunches this script for rank 1) and
calls :func:`run` in-process with ``devices=1`` for the single-process reference.

The run loads a saved baseline and compresses it with ``baseline_epochs=0``:

* stage ``mlp`` (AFM, rank 8, ``mlp.1.linear`` and ``mlp.2.linear``) starts at fit start;
* stage ``emb`` (AFM, rank 2, every field table, folded into ``mlp.0.linear``), when asked for,
  starts at the end of epoch 0: the swap and DDP re-wrap in the middle of a fit.

Each stage finetunes ``steps`` steps (one epoch of ``limit_train_batches=steps``), followed by
Lightning's validation (through the DDP wrapper, in the fit). Every rank
writes ``<out>/rank<r>.pt``: a dict with ``stages``, one entry per stage started, holding

* ``statistics``: what the callback's statistics pass returned, ``{target: {"mean" [m],
  "cov" [m, m], "count"}}``, and ``local_rows``, the rows this rank fed it;
* ``at_swap``: the whole model state dict right after the swap (and fold), before the DDP
  re-wrap, whose broadcast from rank 0 would hide ranks that built different factors;
* ``optimizer_covers_model`` / ``ddp_wraps_model``: at the stage's first training step, whether
  the optimizer holds exactly the model's trainable parameters and DDP wraps this model;

and ``final_state`` (the model state dict after the fit), ``history`` and ``baseline`` (the
callback's records; under DDP their AUCs are synced over the ranks), ``train_rows``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import torch

from lightning_afm import compress
from lightning_afm.callbacks.afm_compression import AFMCompressionCallback
from lightning_afm.callbacks.stages import CompressionStage, EmbeddingStage, MLPStage
from lightning_afm.data import SyntheticDataModule
from lightning_afm.models import DeepFM

MLP_TARGETS = ("mlp.1.linear", "mlp.2.linear")
STAGES = ("mlp", "emb")


def make_datamodule() -> SyntheticDataModule:
    """4000 rows (3200 train, 400 val, 400 test), 6 small fields, 2 numeric; 200-row training batches."""
    return SyntheticDataModule(
        num_rows=4000, vocab_sizes=[3, 8, 16, 32, 64, 100], num_numeric=2,
        batch_size=200, eval_batch_size=1000, val_fraction=0.1, test_fraction=0.1, seed=7,
    )


def make_model(schema) -> DeepFM:
    """DeepFM, embedding 8, MLP 3 x 32, no dropout (so the ranks differ by their data only)."""
    return DeepFM(schema.to_dict(), embedding_dim=8, mlp_hidden=[32, 32, 32], dropout=0.0,
                  lr=1e-2, l2_reg=0.0, embedding_init_std=0.1, train_metrics=False)


def make_stages(names: Sequence[str]) -> list[CompressionStage]:
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
    stages = {"mlp": MLPStage(rank=8, targets=list(MLP_TARGETS), epochs=1, lr=1e-2),
              "emb": EmbeddingStage(rank=2, epochs=1, lr=1e-2)}
    return [stages[name] for name in STAGES if name in names]


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _StageStartRecorder(pl.Callback):
    """At the first training step after each swap: what the compression callback left in the trainer."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from torch.nn.parallel import DistributedDataParallel

        stage = self.record["stages"][-1] if self.record["stages"] else None
        if stage is None or "optimizer_covers_model" in stage:
            return
        optimized = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        stage["optimizer_covers_model"] = optimized == {id(p) for p in pl_module.parameters() if p.requires_grad}
        wrapper = trainer.strategy.model
        stage["ddp_wraps_model"] = isinstance(wrapper, DistributedDataParallel) and wrapper.module is pl_module


@contextlib.contextmanager
def recording(record: dict[str, Any]) -> Iterator[None]:
    """Wrap the ``compress`` functions the callback calls, to keep the statistics it computed and
    the model as it is right after each swap; the originals are put back on exit."""
    originals = {name: getattr(compress, name)
                 for name in ("collect_statistics", "compress_targets", "fold_into_first_linear")}

    def collect_statistics(model, names, batches, *args, **kwargs):
        rows = [0]

        def counted():
            for batch in batches:
                rows[0] += int(batch["label"].shape[0])
                yield batch

        stats = originals["collect_statistics"](model, names, counted(), *args, **kwargs)
        record["stages"].append({
            "local_rows": rows[0],
            "statistics": {name: {"mean": s.mean.clone(), "cov": s.cov.clone(), "count": int(s.count)}
                           for name, s in stats.items()},
        })
        return stats

    def compress_targets(model, *args, **kwargs):
        entries = originals["compress_targets"](model, *args, **kwargs)
        record["stages"][-1]["at_swap"] = state_copy(model)
        return entries

    def fold_into_first_linear(model, *args, **kwargs):
        entry = originals["fold_into_first_linear"](model, *args, **kwargs)
        record["stages"][-1]["at_swap"] = state_copy(model)
        return entry

    for name in originals:
        setattr(compress, name, locals()[name])
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(compress, name, function)


def run(baseline: str | Path, out: str | Path, devices: int, steps: int,
        stages: Sequence[str] = STAGES, rewrap: bool = True) -> dict[str, Any]:
    """Compress the baseline state dict on ``devices`` CPU processes; returns (and saves) this rank's record.

    ``rewrap=False`` skips the callback's DDP re-wrap: the negative control, in which the new
    parameters stay outside DDP's gradient synchronisation.
    """
    pl.seed_everything(0)
    dm = make_datamodule()
    dm.setup("fit")
    model = make_model(dm.schema)
    model.load_state_dict(torch.load(baseline, map_location="cpu", weights_only=True))

    callback = AFMCompressionCallback(make_stages(stages), baseline_epochs=0, eval_splits=("val",), progress=False)
    if not rewrap:
        callback._rewrap_for_ddp = lambda trainer, pl_module: None  # type: ignore[method-assign]
    record: dict[str, Any] = {"stages": []}
    distributed = dict(strategy="ddp", use_distributed_sampler=False) if devices > 1 else {}
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, max_epochs=callback.total_epochs, limit_train_batches=steps,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[callback, _StageStartRecorder(record)], **distributed,
    )
    with recording(record):
        trainer.fit(model, datamodule=dm)
    record.update(rank=trainer.global_rank, world_size=trainer.world_size, final_state=state_copy(model),
                  history=callback.history, baseline=callback.baseline, train_rows=dm.num_rows("train"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(record, out / f"rank{trainer.global_rank}.pt")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the baseline model's state dict (torch.save)")
    parser.add_argument("--out", required=True, help="folder for rank<r>.pt")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="finetune steps of each stage")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {STAGES}")
    parser.add_argument("--no-rewrap", action="store_true", help="negative control: skip the DDP re-wrap")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two processes on two cores
    run(args.baseline, args.out, args.devices, args.steps, args.stages.split(","), rewrap=not args.no_rewrap)


if __name__ == "__main__":
    main(sys.argv[1:])
