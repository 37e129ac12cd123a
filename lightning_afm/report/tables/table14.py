"""Table 14: compression against training the small model from scratch.

Runs: ``compression=afm_mlp`` and ``afm`` (baseline epoch, AFM MLP + finetune[, AFM EMB +
finetune]) and ``compression=scratch_mlp`` and ``scratch`` (the same final structures built from
random weights at fit start, trained for as many epochs): the paper's four lines (line
1214-1218). A run is "from scratch" when all its stages use method ``random``; the rows pair
by structure (MLP, or MLP + EMB). All are scored by the run's final test.
"""

from __future__ import annotations

from typing import Any

from lightning_afm.report.common import Context, TableReport, baseline, group
from lightning_afm.report.format import (
    METHOD_TITLES,
    MISSING,
    fmt_mean,
    fmt_params,
    fmt_signed,
    markdown_table,
    mean_std,
    model_title,
)
from lightning_afm.report.runs import Run

TITLE = "Table 14: compression against training the small model from scratch"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression", "trainer.max_epochs")
SCRATCH = "From scratch"
# The notes every build of this table carries (what the columns and rows are); build adds per-panel ones.
NOTES = (
    "Test AUC / logloss of each run's final model. Epochs: all training epochs of the run (AFM: the baseline "
    "epoch and each stage's finetune). From scratch trains with the baseline's settings (lr, dropout, batch "
    "size, no weight decay) for the epochs shown: as many as the AFM pipeline, and (table14 recipe) one, as "
    "the baseline; more epochs with these settings may overfit, as a second plain epoch of the baseline does.",
    "From scratch: the structure AFM ends with (same ranks, same fold), built at fit start with fresh weights "
    "(compression=scratch_mlp / scratch: method random, baseline_epochs 0); the code tables start at the "
    "replaced tables' scale (the model's embedding initialisation), the factor Linears at PyTorch's default. "
    "MLP rows: only the MLP compressed (the paper's first two lines, compression=afm_mlp against scratch_mlp); "
    "MLP + EMB rows: both (its last two lines, compression=afm against scratch). ΔAUC: against the "
    "compressed model of the same structure.",
)


def structure(run: Run) -> str:
    """What a run compressed, in stage order: ``"MLP"``, ``"EMB"`` or ``"MLP + EMB"``."""
    return " + ".join(dict.fromkeys(str(s.get("kind", s.get("name", "?"))).upper() for s in run.stages))


def is_scratch(run: Run) -> bool:
    return bool(run.stages) and all(s.get("method") == "random" for s in run.stages)


def approach(run: Run) -> str:
    """``"AFM MLP + EMB (compress + finetune)"``, ``"From scratch MLP (same structure)"``, ... or ``"Baseline only"``."""
    if not run.stages:
        return "Baseline only"
    if is_scratch(run):
        return f"{SCRATCH} {structure(run)} (same structure)"
    methods = list(dict.fromkeys(str(s.get("method")) for s in run.stages))
    return " + ".join(METHOD_TITLES.get(m, m) for m in methods) + f" {structure(run)} (compress + finetune)"


def build(runs: list[Run], context: Context) -> TableReport:
    sections: list[str] = []
    notes = list(NOTES)
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        rows = []
        compressed = [r for r in members if r.stages and not is_scratch(r)]
        bases = {r.summary.get("seed"): baseline(r) for r in compressed if baseline(r)["test_auc"] is not None}
        if bases:
            epochs = sorted({r.value("compression.baseline_epochs") for r in compressed} - {None})
            rows.append(["Baseline (uncompressed)", fmt_params(mean_std(b["params"] for b in bases.values())[0]),
                         "/".join(map(str, epochs)) or MISSING,
                         fmt_mean([b["test_auc"] for b in bases.values()]),
                         fmt_mean([b["test_logloss"] for b in bases.values()]), MISSING])
        # one row per approach and number of epochs (scratch may run for 1 epoch like the baseline and for
        # as many as the AFM pipeline), the MLP-only structure first, compressed before scratch
        by_approach = group(members, lambda r: (approach(r), r.summary.get("epochs")))
        first = {key: rs[0] for key, rs in by_approach.items()}
        keys = sorted(by_approach, key=lambda k: (len(structure(first[k])), structure(first[k]), is_scratch(first[k]),
                                                  k[0], k[1] if isinstance(k[1], int) else -1))
        reference: dict[str, float | None] = {}
        params_of: dict[tuple[str, bool], set[Any]] = {}
        for key in keys:
            name, epochs = key
            rs, shape, scratch = by_approach[key], structure(first[key]), is_scratch(first[key])
            auc = mean_std(r.summary.get("test_auc") for r in rs)[0]
            params = mean_std(r.summary.get("params") for r in rs)[0]
            params_of.setdefault((shape, scratch), set()).add(params)
            if not scratch and shape not in reference:
                reference[shape] = auc
            delta = MISSING
            if scratch and auc is not None and reference.get(shape) is not None:
                delta = fmt_signed(auc - reference[shape])
            rows.append([name, fmt_params(params), MISSING if epochs is None else str(epochs),
                         fmt_mean([r.summary.get("test_auc") for r in rs]),
                         fmt_mean([r.summary.get("test_logloss") for r in rs]), delta])
        headers = ["Approach", "Params", "Epochs", "Test AUC", "Test logloss", "ΔAUC scratch - compressed"]
        sections.append(f"## {model_title(model)} on {data}\n\n" + markdown_table(headers, rows))
        for (shape, scratch), values in params_of.items():
            other = params_of.get((shape, not scratch))
            if scratch and other and values != other:
                notes.append(f"{model_title(model)} on {data}, {shape}: the scratch model has "
                             f"{', '.join(f'{p:,.0f}' for p in sorted(values))} parameters, the compressed one "
                             f"{', '.join(f'{p:,.0f}' for p in sorted(other))}: the structures differ "
                             "(check the ranks and targets of both runs).")
    return TableReport(TITLE, sections, notes)
