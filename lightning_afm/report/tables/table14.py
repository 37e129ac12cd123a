"""Table 14: compression against training the small model from scratch.

Runs: ``compression=afm`` (baseline epoch, AFM MLP + finetune, AFM EMB + finetune) and
``compression=scratch`` (the same final structure built from random weights at fit start,
trained for as many epochs). A run is "from scratch" when all its stages use method
``random``. Both are scored by the run's final test (``test_auc`` / ``test_logloss``).
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
SCRATCH = "From scratch (same structure)"


def approach(run: Run) -> str:
    """``"From scratch (same structure)"``, ``"AFM (compress + finetune)"``, ... or ``"Baseline only"``."""
    methods = list(dict.fromkeys(str(s.get("method")) for s in run.stages))
    if not methods:
        return "Baseline only"
    if methods == ["random"]:
        return SCRATCH
    return " + ".join(METHOD_TITLES.get(m, m) for m in methods) + " (compress + finetune)"


def build(runs: list[Run], context: Context) -> TableReport:
    sections: list[str] = []
    notes = [
        "Test AUC / logloss of each run's final model. Epochs: all training epochs of the run (AFM: the baseline "
        "epoch and each stage's finetune). From scratch trains with the baseline's settings (lr, dropout, batch "
        "size, no weight decay) for the epochs shown: as many as the AFM pipeline, and (table14 recipe) one, as "
        "the baseline; more epochs with these settings may overfit, as a second plain epoch of the baseline does.",
        "From scratch: the structure AFM ends with (same ranks, same fold), built at fit start with fresh weights "
        "(compression=scratch: method random, baseline_epochs 0); the code tables start at the replaced tables' "
        "scale (the model's embedding initialisation), the factor Linears at PyTorch's default.",
    ]
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        rows = []
        compressed = [r for r in members if r.stages and approach(r) != SCRATCH]
        bases = {r.summary.get("seed"): baseline(r) for r in compressed if baseline(r)["test_auc"] is not None}
        if bases:
            epochs = sorted({r.value("compression.baseline_epochs") for r in compressed} - {None})
            rows.append(["Baseline (uncompressed)", fmt_params(mean_std(b["params"] for b in bases.values())[0]),
                         "/".join(map(str, epochs)) or MISSING,
                         fmt_mean([b["test_auc"] for b in bases.values()]),
                         fmt_mean([b["test_logloss"] for b in bases.values()]), MISSING])
        # one row per approach and number of epochs (scratch may run for 1 epoch like the baseline and for
        # as many as the AFM pipeline)
        by_approach = group(members, lambda r: (approach(r), r.summary.get("epochs")))
        keys = sorted(by_approach, key=lambda k: (k[0] == SCRATCH, k[0], k[1] if isinstance(k[1], int) else -1))
        reference: float | None = None
        scratch_params: set[Any] = set()
        compressed_params: set[Any] = set()
        for name, epochs in keys:
            rs = by_approach[(name, epochs)]
            auc = mean_std(r.summary.get("test_auc") for r in rs)[0]
            params = mean_std(r.summary.get("params") for r in rs)[0]
            if name == SCRATCH:
                scratch_params.add(params)
            else:
                compressed_params.add(params)
                if reference is None:
                    reference = auc
            delta = MISSING
            if name == SCRATCH and auc is not None and reference is not None:
                delta = fmt_signed(auc - reference)
            rows.append([name, fmt_params(params), MISSING if epochs is None else str(epochs),
                         fmt_mean([r.summary.get("test_auc") for r in rs]),
                         fmt_mean([r.summary.get("test_logloss") for r in rs]), delta])
        headers = ["Approach", "Params", "Epochs", "Test AUC", "Test logloss", "ΔAUC scratch - compressed"]
        sections.append(f"## {model_title(model)} on {data}\n\n" + markdown_table(headers, rows))
        if scratch_params and compressed_params and scratch_params != compressed_params:
            notes.append(f"{model_title(model)} on {data}: the scratch model has "
                         f"{', '.join(f'{p:,.0f}' for p in sorted(scratch_params))} parameters, the compressed one "
                         f"{', '.join(f'{p:,.0f}' for p in sorted(compressed_params))}: the structures differ "
                         "(check the ranks and targets of both runs).")
    return TableReport(TITLE, sections, notes)
