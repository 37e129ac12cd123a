"""Table 16: wall time of the baseline's training and of each compression stage.

Runs: ``compression=afm`` (any models and datasets). The paper (line 1140-1146, 1160-1175)
reports, for DeepFM on one 3090 GPU, the baseline's training time against the time each AFM
stage takes: one pass over the training rows for the statistics, the factorisation, and one
finetune epoch. The callback times every piece (``AFMCompressionCallback``'s module docstring
says what each includes); this table shows them as measured, on the machine named in the
header. Seeds are averaged.
"""

from __future__ import annotations

from typing import Any

from lightning_afm.report.common import Context, StageRow, TableReport, group, stage_rows
from lightning_afm.report.format import MISSING, markdown_table, mean_std, model_title
from lightning_afm.report.runs import Run

TITLE = "Table 16: wall time of the baseline and of each compression stage"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression",)
#: A stage's pieces, as its record names them, with their column titles.
PIECES = (("statistics_s", "Statistics"), ("rank_search_s", "Rank search"), ("swap_s", "Swap"),
          ("finetune_s", "Finetune"), ("eval_s", "Evaluations"))
#: What the paper counts as a stage's compression time (line 1160-1166): the statistics pass, the
#: factors and the finetune (the evaluations are for the tables, not for the compression).
COMPRESSION = ("statistics_s", "rank_search_s", "swap_s", "finetune_s")


def fmt_duration(seconds: Any) -> str:
    """``0.03 s`` under a second, ``12.3 s`` under a minute, ``9m47s`` under an hour, ``3h39m04s``
    beyond (the paper's)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds != seconds:
        return MISSING
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _mean(values: Any) -> str:
    return fmt_duration(mean_std(values)[0])


def compression_seconds(record: dict[str, Any]) -> float | None:
    """Statistics + rank search + swap + finetune of one stage; None when one measured piece is missing."""
    if any(record.get(k) is None for k in ("statistics_s", "swap_s", "finetune_s")):
        return None
    return sum(float(record.get(k) or 0.0) for k in COMPRESSION)


def _variant(row: StageRow) -> str:
    return f"+{row.method_title} {str(row.record.get('kind', '?')).upper()}"


def build(runs: list[Run], context: Context) -> TableReport:
    timed = [r for r in runs if any(s.get("finetune_s") is not None or s.get("swap_s") is not None
                                    for s in r.stages)]
    notes = [
        "Wall times on the machine in the header (the paper: DeepFM on one 3090 GPU, line 1163-1165). Baseline "
        "training: the training time of the baseline epochs (their number in brackets): forward, backward, "
        "optimizer steps and data loading, without the validation inside each epoch. A stage's compression time "
        "(the paper's rows, line 1160-1166): its statistics pass over the training rows (AFM only), the "
        "factorisation and module surgery (swap), a rank search where grow_rank is on, and its finetune "
        "epoch(s), timed as the baseline's; the evaluations (scoring the configured splits before and after the "
        "finetune, and select='best' checks) are listed apart. Run: the whole lightning-afm run (data, fit, "
        "final test). On a GPU every figure waits for the device's queued work.",
        "The finetunes run at their own batch sizes (the paper: 'the training time is proportional to the batch "
        "size', line 1170-1174); see finetune.mlp_batch_size and finetune.emb_batch_size in each run's config.",
    ]
    if len(timed) < len(runs):
        notes.append(f"{len(runs) - len(timed)} of {len(runs)} runs have no stage times (written before the "
                     "callback timed its stages, or without compression); they are left out.")
    if not timed:
        return TableReport(TITLE, ["No run with stage times: run compression=afm (recipes/table16.sh)."], notes)

    variants: list[str] = list(dict.fromkeys(_variant(row) for run in timed for row in stage_rows(run)))
    summary_rows = []
    detail_rows = []
    for (data, model), members in group(timed, lambda r: (r.data, r.model)).items():
        epochs = sorted({r.value("compression.baseline_epochs") for r in members} - {None})
        base = _mean(r.summary.get("baseline_epoch_s") for r in members)
        if epochs:
            base += f" ({'/'.join(map(str, epochs))} epoch{'' if epochs == [1] else 's'})"
        by_variant = group([row for r in members for row in stage_rows(r)], _variant)
        summary_rows.append([model_title(model), data, base]
                            + [_mean(compression_seconds(row.record) for row in by_variant.get(v, []))
                               for v in variants]
                            + [_mean(r.summary.get("wall_s") for r in members)])
        detail_rows.append([model_title(model), data, "Baseline", base, MISSING, MISSING, MISSING, MISSING,
                            _mean(r.summary.get("baseline_eval_s") for r in members), MISSING])
        for variant, rows in by_variant.items():
            searched = any(row.record.get("rank_search_s") is not None for row in rows)
            detail_rows.append(["", "", variant, MISSING]
                               + [_mean(row.record.get(key) for row in rows) if key != "rank_search_s" or searched
                                  else MISSING for key, _ in PIECES]
                               + [_mean(compression_seconds(row.record) for row in rows)])
    main = markdown_table(["Model", "Data", "Baseline training"] + [f"{v} (compression)" for v in variants]
                          + ["Run"], summary_rows, ["l", "l"] + ["r"] * (len(variants) + 2))
    detail = markdown_table(["Model", "Data", "Stage", "Training"] + [title for _, title in PIECES]
                            + ["Compression"], detail_rows, ["l", "l", "l"] + ["r"] * (len(PIECES) + 2))
    return TableReport(TITLE, ["## The paper's layout\n\n" + main, "## Every piece\n\n" + detail], notes)
