"""What every table needs from the runs: the baseline, the stages, groups by dataset and model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lightning_afm.report.format import METHOD_TITLES
from lightning_afm.report.runs import Run

__all__ = ["Context", "TableReport", "baseline", "stage_label", "group", "stage_rows", "StageRow", "SPLIT", "ordered"]

K = TypeVar("K")

#: The split every table reports (the paper's tables are on the test split).
SPLIT = "test"


@dataclass
class Context:
    """What a table may use besides the runs: benchmark rows (Tables 2 and 4) and where they came from."""

    bench: list[dict[str, Any]] | None = None
    bench_source: str | None = None


@dataclass
class TableReport:
    """A table's content: Markdown sections, notes, and (optionally) a function drawing its PNG.

    ``figure(path)`` draws the plot into ``path``; None where a picture would add nothing.
    """

    title: str
    sections: list[str]
    notes: list[str] = field(default_factory=list)
    figure: Callable[[Path], None] | None = None


def baseline(run: Run) -> dict[str, Any]:
    """The uncompressed model's figures: ``params``, ``test_auc``, ``test_logloss`` (and val).

    From ``baseline_*`` when the run compressed (the model before the first stage), else the
    run's own final figures (``compression=none``). A run that started compressing at fit
    start (``compression=scratch``) has only ``params``: its baseline never trained.
    """
    s = run.summary
    if run.stages:
        return {"params": s.get("baseline_params"),
                **{f"{sp}_{m}": s.get(f"baseline_{sp}_{m}") for sp in ("test", "val") for m in ("auc", "logloss")}}
    return {"params": s.get("params"), **{f"{sp}_{m}": s.get(f"{sp}_{m}") for sp in ("test", "val")
                                          for m in ("auc", "logloss")}}


def stage_label(run: Run, index: int) -> str:
    """``"MLP"``, ``"EMB (after MLP)"``, ``"EMB (on the baseline)"`` ...: a stage and what it started from."""
    stages = run.stages
    kind = str(stages[index].get("kind", stages[index].get("name", "?"))).upper()
    if index == 0:
        start = stages[0].get("start_epoch")
        if kind == "EMB" and start:
            return "EMB (on the baseline)"
        return kind
    before = " + ".join(str(s.get("kind", "?")).upper() for s in stages[:index])
    return f"{kind} (after {before})"


@dataclass
class StageRow:
    """One stage of one run: method, label, parameters and the scores before/after its finetune."""

    run: Run
    index: int
    method: str
    label: str
    rank: Any
    params: Any
    pre_auc: Any
    pre_logloss: Any
    auc: Any
    logloss: Any
    record: dict[str, Any]

    @property
    def method_title(self) -> str:
        return METHOD_TITLES.get(self.method, self.method)


def stage_rows(run: Run) -> list[StageRow]:
    """Every stage of ``run`` as a :class:`StageRow` (test split)."""
    out = []
    for i, st in enumerate(run.stages):
        out.append(StageRow(
            run=run, index=i, method=str(st.get("method", "?")), label=stage_label(run, i), rank=st.get("rank"),
            params=st.get("params"), pre_auc=st.get(f"pre_finetune_{SPLIT}_auc"),
            pre_logloss=st.get(f"pre_finetune_{SPLIT}_logloss"), auc=st.get(f"{SPLIT}_auc"),
            logloss=st.get(f"{SPLIT}_logloss"), record=st))
    return out


def group(items: Iterable[Any], key: Callable[[Any], K]) -> dict[K, list[Any]]:
    """Items grouped by ``key``, groups and members in first-seen order."""
    out: dict[K, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


def ordered(keys: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """``keys`` with those in ``preferred`` first, in that order."""
    first = [k for k in preferred if k in keys]
    return first + [k for k in keys if k not in first]


# Always told apart (one section per data and model) or averaged on purpose (the seeds).
GROUPED_KEYS = ("model", "data", "seed", "data.seed", "data.split_seed")


def override_values(run: Run) -> dict[str, str]:
    """The run's command-line overrides as ``{key: value}`` (``+``/``~`` prefixes dropped)."""
    out = {}
    for item in run.overrides:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def check_nothing_hidden_is_averaged(runs: Sequence[Run], shown: Sequence[str], table: str) -> None:
    """Refuse runs of one data and model that differ in a setting the table neither shows nor averages.

    Tables average the runs of each row over seeds. Runs that differ in something else (a
    rank, a learning rate) would be averaged silently into one figure; instead this names the
    key and its values. ``shown``: the override keys the table tells apart in its rows.
    """
    allowed = set(GROUPED_KEYS) | set(shown)
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        values = [override_values(r) for r in members]
        keys = sorted({k for v in values for k in v} - allowed)
        for key in keys:
            seen = sorted({v.get(key, "(not set)") for v in values})
            if len(seen) > 1:
                raise ValueError(
                    f"{table}: the {model} runs on {data} differ in {key} ({', '.join(seen)}), which {table} "
                    f"does not show; its figures would average them. Report each value from its own "
                    f"directory, or pick the runs of one value (the rank tables, table7 and table8, show ranks).")
