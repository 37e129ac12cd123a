"""Table 11: principal components needed for 90 / 95 / 99 % of each MLP layer's output variance.

Read from the MLP stages of the runs (``stages[i].layers[name]``: ``components_90``,
``components_95``, ``components_99``, ``num_features``, and ``cumulative_ratio`` when the
callback records the whole spectrum). The table11 recipe asks for the spectrum of all three
MLP layers (``compression.mlp.targets=[mlp.*.linear]``) of the trained baseline.

The figure plots each layer's cumulative explained variance against the number of components
when the runs hold the whole spectrum; otherwise the components needed at each of the three
thresholds (the same curve, read at three heights).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning_afm.report import plots
from lightning_afm.report.common import Context, TableReport, group
from lightning_afm.report.format import MISSING, finite, fmt_mean, markdown_table, mean_std, model_title
from lightning_afm.report.runs import Run

TITLE = "Table 11: principal components needed per MLP layer"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression", "compression.mlp.targets")
THRESHOLDS = (90, 95, 99)
_MLP_LAYER = re.compile(r"^mlp\.(\d+)\.linear$")


def layer_title(name: str) -> str:
    """``"mlp.1.linear"`` -> ``"2"`` (the paper counts layers from 1); other names as given."""
    m = _MLP_LAYER.match(name)
    return str(int(m.group(1)) + 1) if m else name


def _layers(run: Run) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for st in run.stages:
        if st.get("kind") == "mlp":
            for name, layer in (st.get("layers") or {}).items():
                out.setdefault(name, layer)
    return out


def _count(values: list[Any]) -> str:
    """A component count as an integer; over several seeds ``mean ± std (n=k)``."""
    mean, _, n = mean_std(values)
    return f"{int(mean)}" if n == 1 else fmt_mean(values, digits=1)


def build(runs: list[Run], context: Context) -> TableReport:
    sections: list[str] = []
    panels: list[tuple[str, dict[str, list[dict[str, Any]]]]] = []
    for data, data_runs in group(runs, lambda r: r.data).items():
        rows = []
        for model, members in group(data_runs, lambda r: r.model).items():
            per_layer: dict[str, list[dict[str, Any]]] = {}
            for run in members:
                for name, layer in _layers(run).items():
                    per_layer.setdefault(name, []).append(layer)
            if not per_layer:
                rows.append([model_title(model), MISSING, MISSING] + [MISSING] * len(THRESHOLDS))
                continue
            first = True
            for name, layers in per_layer.items():
                width = mean_std(layer.get("num_features") for layer in layers)[0]
                cells = [_count([layer.get(f"components_{p}") for layer in layers]) for p in THRESHOLDS]
                rows.append([model_title(model) if first else "", f"{layer_title(name)} (`{name}`)",
                             MISSING if width is None else f"{int(width)}", *cells])
                first = False
            panels.append((f"{model_title(model)} on {data}", per_layer))
        headers = ["Model", "MLP layer", "Width", *(f"{p} %" for p in THRESHOLDS)]
        sections.append(f"## {data}\n\n" + markdown_table(headers, rows, ["l", "l"] + ["r"] * (len(headers) - 2)))
    notes = [
        "Components: the fewest principal components of the layer's output (its covariance over the training "
        "set, after the baseline epoch) whose eigenvalues hold at least 90 / 95 / 99 % of the total variance. "
        "Width: the layer's output size.",
    ]
    full = all("cumulative_ratio" in layer for _, per_layer in panels for layers in per_layer.values()
               for layer in layers)
    if panels and not full:
        notes.append("The runs record the three thresholds only (not the whole spectrum): the figure plots the "
                     "components needed at each threshold.")

    def figure(path: Path) -> None:
        fig, axes = plots.subplots(len(panels), ncols=3)
        for ax, (name, per_layer) in zip(axes, panels):
            for i, (layer_name, layers) in enumerate(per_layer.items()):
                label = f"layer {layer_title(layer_name)}"
                # markers and dashes differ per layer: equal curves (common here) stay visible
                style = {"marker": "os^vD"[i % 5], "linestyle": ("-", "--", ":", "-.")[i % 4],
                         "markersize": 7 - i % 3 * 1.5}
                if full:
                    curve = [float(v) for v in layers[0]["cumulative_ratio"]]
                    ax.plot(range(1, len(curve) + 1), curve, label=label, linestyle=style["linestyle"])
                else:
                    ys = [mean_std(layer.get(f"components_{p}") for layer in layers)[0] for p in THRESHOLDS]
                    pts = [(p, y) for p, y in zip(THRESHOLDS, ys) if y is not None]
                    ax.plot([p for p, _ in pts], [y for _, y in pts], label=label, **style)
            if full:
                for p in THRESHOLDS:
                    ax.axhline(p / 100, color="grey", linestyle=":", linewidth=0.8)
                ax.set_xscale("log")
                ax.set_xlabel("components kept")
                ax.set_ylabel("cumulative explained variance")
            else:
                ys = finite(layer.get(f"components_{p}") for layers in per_layer.values() for layer in layers
                            for p in THRESHOLDS)
                if ys and max(ys) / max(min(ys), 1) > 20:
                    ax.set_yscale("log")
                ax.set_xticks(list(THRESHOLDS))
                ax.set_xlabel("share of the variance kept (%)")
                ax.set_ylabel("components needed")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        plots.save(fig, path, TITLE)

    return TableReport(TITLE, sections, notes, figure if panels else None)
