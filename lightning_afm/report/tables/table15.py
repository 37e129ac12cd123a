"""Table 15: the +AFM MLP finetune at several learning rates, train and test AUC and logloss.

Runs: ``compression=afm_mlp compression.mlp.lr=1e-2,5e-3,1e-3,5e-4,1e-4
compression.eval_splits=[train,val,test]`` (the paper's sweep for DeepFM on Criteo, line
1100-1106). The paper's point (line 1102-1104, 1107-1108): the model behaves the same on the
training and the test rows across learning rates, so the rate can be chosen by the training
figures alone, without a validation split. Each row is one rate: the figures of the MLP stage
after its finetune, the training rows scored in eval mode by the callback (``train_*``), the
test rows as every other table; seeds averaged.
"""

from __future__ import annotations

from pathlib import Path

from lightning_afm.report import plots
from lightning_afm.report.common import Context, StageRow, TableReport, group, stage_rows
from lightning_afm.report.format import MISSING, finite, fmt_mean, markdown_table, mean_std, model_title
from lightning_afm.report.runs import Run

TITLE = "Table 15: the +AFM MLP finetune at several learning rates (train and test)"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression", "compression.mlp.lr")
HEADERS = ["Learning rate", "Runs", "Train AUC", "Train logloss", "Test AUC", "Test logloss"]
# The notes every build of this table carries (what the columns and rows are); build adds per-panel ones.
NOTES = (
    "Each row: the +AFM MLP stage after its finetune epoch at that learning rate (the baseline epoch before it "
    "is the same in every run; its own figures in the first row, one run per seed). Train: the training rows "
    "scored in eval mode after the finetune (compression.eval_splits=[train,...]; all of them unless "
    "compression.train_eval_rows caps them); test: the test rows. The paper (line 1100-1108): the rate that "
    "does best on the training rows does best on the test rows, so the rate can be tuned on the training set alone.",
)


def mlp_stage(run: Run) -> StageRow | None:
    """The run's first MLP stage, or None."""
    return next((row for row in stage_rows(run) if row.record.get("kind") == "mlp"), None)


def learning_rate(run: Run) -> float | None:
    """The MLP finetune's learning rate: ``compression.mlp.lr`` of the run's config."""
    value = run.value("compression.mlp.lr")
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt_lr(lr: float | None) -> str:
    """``1e-2``, ``5e-3``: as the paper writes its rates."""
    if lr is None:
        return MISSING
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _best(by_lr: dict[float | None, list[StageRow]], key: str, higher: bool) -> float | None:
    """The rate with the best mean ``record[key]`` (None when no rate has it)."""
    means = {lr: mean_std(r.record.get(key) for r in rows)[0] for lr, rows in by_lr.items() if lr is not None}
    means = {lr: m for lr, m in means.items() if m is not None}
    if not means:
        return None
    return (max if higher else min)(means, key=means.get)


def build(runs: list[Run], context: Context) -> TableReport:
    sections: list[str] = []
    notes = list(NOTES)
    panels: list[tuple[str, dict[float | None, list[StageRow]]]] = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        by_lr: dict[float | None, list[StageRow]] = {}
        for run in members:
            row = mlp_stage(run)
            if row is not None:
                by_lr.setdefault(learning_rate(run), []).append(row)
        if not by_lr:
            sections.append(f"## {model_title(model)} on {data}\n\nNo MLP stage in these runs "
                            "(run compression=afm_mlp).")
            continue
        rows = []
        # The model every rate starts from (one per seed: the runs of a seed share their baseline epoch).
        bases = list({r.summary.get("seed"): r.summary for r in members
                      if r.summary.get("baseline_test_auc") is not None}.values())
        if bases:
            rows.append(["Baseline (no finetune)", str(len(bases))] + [
                fmt_mean([b.get(f"baseline_{key}") for b in bases])
                for key in ("train_auc", "train_logloss", "test_auc", "test_logloss")])
        # The paper's order: from the largest rate to the smallest.
        for lr, members_lr in sorted(by_lr.items(), key=lambda kv: -kv[0] if kv[0] is not None else float("inf")):
            rows.append([_fmt_lr(lr), str(len(members_lr))] + [
                fmt_mean([r.record.get(key) for r in members_lr])
                for key in ("train_auc", "train_logloss", "test_auc", "test_logloss")])
        sections.append(f"## {model_title(model)} on {data}\n\n" + markdown_table(HEADERS, rows))
        best_train, best_test = _best(by_lr, "train_auc", True), _best(by_lr, "test_auc", True)
        if best_train is None:
            notes.append(f"{model_title(model)} on {data}: the runs have no train figures; run them with "
                         "compression.eval_splits=[train,val,test] (recipes/table15.sh does).")
        elif best_test is not None:
            agree = "the same rate" if best_train == best_test else "different rates"
            notes.append(f"{model_title(model)} on {data}: best train AUC at lr {_fmt_lr(best_train)}, best test AUC "
                         f"at lr {_fmt_lr(best_test)}: {agree}.")
        panels.append((f"{model_title(model)} on {data}", by_lr))

    def figure(path: Path) -> None:
        fig, axes = plots.subplots(2 * len(panels), ncols=2)
        for i, (name, by_lr) in enumerate(panels):
            rates = sorted(lr for lr in by_lr if lr is not None)
            for ax, metric in zip(axes[2 * i: 2 * i + 2], ("auc", "logloss")):
                for split, style in (("train", "o-"), ("test", "s--")):
                    points = [(lr, mean_std(r.record.get(f"{split}_{metric}") for r in by_lr[lr])[0]) for lr in rates]
                    points = [(x, y) for x, y in points if y is not None]
                    if points:
                        ax.plot(*zip(*points), style, label=split)
                ax.set_xscale("log")
                ax.set_xlabel("learning rate of the MLP finetune")
                ax.set_ylabel("AUC" if metric == "auc" else "logloss")
                ax.set_title(name, fontsize=9)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        plots.save(fig, path, TITLE)

    has_points = any(finite(r.record.get("test_auc") for rows in by_lr.values() for r in rows) for _, by_lr in panels)
    return TableReport(TITLE, sections, notes, figure if has_points else None)

