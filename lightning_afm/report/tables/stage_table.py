"""The layout of Tables 4 and 6: one row per variant and stage, scores right after the swap and after the finetune.

"Pre-train" is the paper's name for the model right after the swap (before its finetune),
"fine-tune" for the model after it. The first row is the baseline (the model before the
first stage, after its baseline epoch). Runs that differ only in the seed are averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lightning_afm.report.common import StageRow, baseline, group, stage_rows
from lightning_afm.report.format import MISSING, fmt_mean, fmt_params, fmt_ratio, markdown_table, mean_std
from lightning_afm.report.runs import Run

HEADERS = ["Stage", "Params", "Compression", "Pre-train AUC", "Pre-train logloss", "Fine-tune AUC",
           "Fine-tune logloss"]


def baseline_cells(runs: Sequence[Run]) -> tuple[list[str], float | None]:
    """The baseline row's cells (one run per seed: the baselines of a seed are the same model) and its params."""
    per_seed = {r.summary.get("seed"): r for r in runs if baseline(r)["test_auc"] is not None}
    if not per_seed:
        return [], None
    bases = [baseline(r) for r in per_seed.values()]
    params = mean_std(b["params"] for b in bases)[0]
    epochs = sorted({r.value("compression.baseline_epochs") for r in per_seed.values()} - {None})
    trained = f"{'/'.join(map(str, epochs))} epoch{'' if epochs == [1] else 's'}" if epochs else MISSING
    cells = [trained, fmt_params(params), MISSING, MISSING, MISSING,
             fmt_mean([b["test_auc"] for b in bases]), fmt_mean([b["test_logloss"] for b in bases])]
    return cells, params


def stage_table(runs: Sequence[Run], variant: Callable[[StageRow], str], variant_header: str,
                order: Sequence[str] = (), extra_headers: Sequence[str] = (),
                extra: Callable[[Sequence[StageRow] | None], list[str]] | None = None) -> str:
    """Markdown: ``variant_header | Stage | Params | Compression | pre-train AUC/logloss | fine-tune AUC/logloss``.

    ``variant(row)`` names the row's variant (e.g. its method); variants listed in ``order``
    come first, in that order, then the others as first seen. ``extra_headers``: more columns,
    whose cells ``extra(members)`` gives for each row (``members``: the stage rows averaged
    into it; None for the baseline row), e.g. Table 4's throughput from the benchmark.
    """
    if bool(extra_headers) != (extra is not None):
        raise ValueError("stage_table: give extra_headers and extra together (the columns and their cells)")
    base, base_params = baseline_cells(runs)
    rows = [["Baseline", *base, *(extra(None) if extra else [])]] if base else []
    stages = [row for r in runs for row in stage_rows(r)]
    groups = group(stages, lambda s: (variant(s), s.label))
    keys = sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), list(groups).index(k)))
    previous = None
    for name, label in keys:
        members = groups[(name, label)]
        params = mean_std(m.params for m in members)[0]
        rows.append([name if name != previous else "", label, fmt_params(params), fmt_ratio(base_params, params),
                     fmt_mean([m.pre_auc for m in members]), fmt_mean([m.pre_logloss for m in members]),
                     fmt_mean([m.auc for m in members]), fmt_mean([m.logloss for m in members]),
                     *(extra(members) if extra else [])])
        previous = name
    headers = [variant_header, *HEADERS, *extra_headers]
    return markdown_table(headers, rows, ["l", "l"] + ["r"] * (len(headers) - 2))
