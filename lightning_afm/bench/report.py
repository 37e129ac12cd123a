"""The benchmark's output: ``bench.json`` (the rows) and ``bench.md`` (tables laid out like Table 2).

``bench.md`` has, per dataset, Table 2's layout (rows = models; parameters and samples/s of the
baseline, +AFM MLP and +AFM EMB, with the gains) and a second table with the SVD and TTD
structures and DeepCTR-Torch. The paper's own +AFM EMB gains appear in a column labelled as the
paper's, next to ours, with whether ours reaches them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_afm.bench.shapes import PAPER_SHAPES, TABLE_2_PARAMS_M
from lightning_afm.models import MODELS

__all__ = ["cpu_name", "machine_info", "native_attention_words", "format_params", "to_markdown", "write_report", "VARIANT_TITLES"]

VARIANT_TITLES = {
    "baseline": "Baseline",
    "afm_mlp": "+AFM MLP",
    "afm_emb": "+AFM EMB",
    "svd_mlp": "+SVD MLP",
    "svd_emb": "+SVD EMB",
    "ttd_emb": "+TTD EMB",
    "deepctr_torch": "DeepCTR-Torch",
}
_TABLE_2_VARIANTS = ("baseline", "afm_mlp", "afm_emb")
_OTHER_VARIANTS = ("svd_mlp", "svd_emb", "ttd_emb", "deepctr_torch")
_MODEL_TITLES = {name: cls.__name__ for name, cls in MODELS.items()}


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), with its family, model and widest vector
    instructions where it says them (a virtual machine may name only "AMD EPYC", and how fast its
    matrix products run depends on the generation: see README, "Products' speed"), else what
    ``platform`` knows. E.g. ``"AMD EPYC (family 26, model 2, AVX-512)"``."""
    try:
        return describe_cpu(Path("/proc/cpuinfo").read_text())
    except (OSError, ValueError):
        return platform.processor() or platform.machine() or "unknown CPU"


def describe_cpu(cpuinfo: str) -> str:
    """The first processor's ``model name`` in a ``/proc/cpuinfo`` text, with ``cpu family``,
    ``model`` and the widest of AVX-512 / AVX2 / AVX in its flags; ValueError without a model name."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    name = fields.get("model name")
    if not name:
        raise ValueError("no model name in /proc/cpuinfo")
    flags = set(fields.get("flags", "").split())
    vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), None)
    details = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model")) if fields.get(key)]
    details += [vector] if vector else []
    return f"{name} ({', '.join(details)})" if details else name


def machine_info() -> dict[str, Any]:
    return {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "platform": platform.platform()}


def native_attention_words() -> str:
    """Which kernel AutoInt's attention runs eagerly here: ours, or PyTorch's and why."""
    from lightning_afm.inference import native

    state = native.status()
    if state.available:
        return "the compiled native kernel (lightning_afm/inference/native.py) in eager runs"
    return f"PyTorch's kernels (the native kernel is unavailable: {state.reason})"


def format_params(params: int | None) -> str:
    """Millions with two decimals, as Table 2 (``574.46M``); small counts in full."""
    if params is None:
        return "n/a"
    return f"{params / 1e6:.2f}M" if params >= 100_000 else f"{params:,}"


#: how bench.md names each runtime (``BenchSettings.runtime``)
_RUNTIME_WORDS = {
    "eager": "eagerly (`runtime=eager`)",
    "torchscript": "as TorchScript (`runtime=torchscript`)",
    "compile": "through `torch.compile`, inductor, compiled before timing (`runtime=compile`)",
    "onnx": "on ONNX Runtime's CPU provider (`runtime=onnx`)",
}


def _runtime_words(first: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """How bench.md's header says what ran our variants (older rows have only ``runtime``)."""
    setting = first.get("runtime_setting", first.get("runtime", "eager"))
    if setting != "best":
        return _RUNTIME_WORDS.get(setting, str(setting))
    candidates = ", ".join(settings.get("best_of") or ["eager", "torchscript", "onnx"])
    return (f"on the fastest of {candidates} for each variant (`runtime=best`): every candidate's outputs checked "
            f"against eager's to 1e-5, then the candidates timed side by side on the same batches "
            f"({settings.get('select_rounds', 1)} round(s), before and apart from the timed rounds); "
            "the runtime each variant got is in the \"Runtime chosen\" table and in bench.json (`runtime`, "
            "`runtime_selection`)")


def _runtime_table(rows: Sequence[Mapping[str, Any]], dataset: str) -> list[str]:
    """``runtime=best``: per model, the runtime each variant got, with its speed over eager in the selection."""
    chosen = [r for r in rows if r["dataset"] == dataset and r.get("runtime_selection")]
    if not chosen:
        return []
    variants = list(dict.fromkeys(r["variant"] for r in chosen))
    by_key = {(r["model"], r["variant"]): r for r in chosen}
    lines = ["", "Runtime chosen (`runtime=best`; in brackets: its samples/s over eager's in the selection rounds):", "",
             "| Model | " + " | ".join(VARIANT_TITLES[v] for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for model in dict.fromkeys(r["model"] for r in chosen):
        cells = []
        for v in variants:
            row = by_key.get((model, v))
            if row is None:
                cells.append("n/a")
                continue
            speeds = row["runtime_selection"]["samples_per_s"]
            eager = speeds.get("eager")
            ratio = f" ({speeds[row['runtime']] / eager:.2f}x)" if eager else ""
            cells.append(f"{row['runtime']}{ratio}")
        lines.append(f"| {_MODEL_TITLES.get(model, model)} | " + " | ".join(cells) + " |")
    return lines


def product_rate(row: Mapping[str, Any] | None) -> float | None:
    """Multiply-adds per second in the row's matrix products (``macs_per_row`` x samples/s), or None."""
    row = row or {}
    macs, sps = row.get("macs_per_row"), row.get("samples_per_s")
    return None if not macs or not sps else float(macs) * float(sps)


def _product_rate_table(rows: Sequence[Mapping[str, Any]], dataset: str) -> list[str]:
    """Per model, how fast each variant's products ran, and the +AFM EMB rate over the baseline's.

    ``1 + gain = (rate of the variant / rate of the baseline) x (1 + multiply-add bound)``, so the
    last column splits a gain into its two causes: fewer multiply-adds, and how fast they ran. A
    ratio well under 1 says the variant spends its time outside the products (gathers, small ops):
    on a CPU whose products run fast that is what holds a compressed model back.
    """
    by_key = {(r["model"], r["variant"]): r for r in rows if r["dataset"] == dataset}
    variants = [v for v in ("baseline", "afm_mlp", "afm_emb", "deepctr_torch")
                if any(product_rate(by_key.get((m, v))) for m, _ in by_key)]
    if "baseline" not in variants or len(variants) < 2:
        return []
    ratio_col = "afm_emb" in variants
    lines = ["", "Products' speed (G multiply-adds per second in matrix products: `macs_per_row` x samples/s; "
             "1 + gain = rate ratio x (1 + bound)):", "",
             "| Model | " + " | ".join(VARIANT_TITLES[v] for v in variants)
             + (" | +AFM EMB rate / baseline rate |" if ratio_col else " |"),
             "|---|" + "---:|" * (len(variants) + ratio_col)]
    for model in dict.fromkeys(m for m, _ in by_key):
        rates = {v: product_rate(by_key.get((model, v))) for v in variants}
        cells = ["n/a" if rates[v] is None else f"{rates[v] / 1e9:.1f}" for v in variants]
        if ratio_col:
            base, emb = rates["baseline"], rates["afm_emb"]
            cells.append("n/a" if not base or emb is None else f"{emb / base:.2f}")
        lines.append(f"| {_MODEL_TITLES.get(model, model)} | " + " | ".join(cells) + " |")
    return lines


def _sps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _gain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f} %"


def _cells(row: Mapping[str, Any] | None, variant: str, full_shape: bool, dataset: str, model: str) -> list[str]:
    """The cells of one variant's column group."""
    row = row or {}
    params, sps, gain = row.get("params"), row.get("samples_per_s"), row.get("gain_pct")
    cells = [format_params(params), _sps(sps)]
    if variant == "baseline":
        table2 = TABLE_2_PARAMS_M[dataset][model]
        match = "" if params is None or not full_shape else (" ✓" if round(params / 1e6, 2) == table2 else " ✗")
        cells.insert(1, f"{table2:.2f}M{match}")
    else:
        cells.append(_gain(gain))
    if variant == "afm_emb":
        bound = row.get("macs_bound_gain_pct")
        cells.append("n/a" if bound is None else f"{bound:+.1f} %")
        paper = row.get("paper_gain_pct")
        cells.append("n/a" if paper is None else f"+{paper:g} %")
        meets = row.get("meets_paper")
        cells.append("n/a" if meets is None else ("yes" if meets else "**no**"))
    if variant == "deepctr_torch":
        ratio = row.get("baseline_over_deepctr")
        cells.append("n/a" if ratio is None else (f"{ratio:.2f}x" if ratio >= 1 else f"**{ratio:.2f}x**"))
    return cells


def _headers(variant: str) -> list[str]:
    title = VARIANT_TITLES[variant]
    if variant == "baseline":
        return ["Params", "Table 2 (paper)", "Samples/s"]
    heads = [f"{title} params", f"{title} samples/s", f"{title} gain"]
    if variant == "afm_emb":
        heads += ["+AFM EMB multiply-add bound", "Paper's +AFM EMB gain (paper's machine)", "Ours ≥ paper"]
    if variant == "deepctr_torch":
        heads += ["Ours / DeepCTR-Torch (baseline samples/s)"]
    return heads


def _table(rows: Sequence[Mapping[str, Any]], dataset: str, variants: Sequence[str], full_shape: bool) -> list[str]:
    by_key = {(r["model"], r["variant"]): r for r in rows if r["dataset"] == dataset}
    models = list(dict.fromkeys(r["model"] for r in rows if r["dataset"] == dataset))
    headers = ["Model"] + [h for v in variants for h in _headers(v)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for model in models:
        cells = [_MODEL_TITLES.get(model, model)]
        for v in variants:
            cells += _cells(by_key.get((model, v)), v, full_shape, dataset, model)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """``bench.md``: a header describing the run, then the tables of each dataset, then notes.

    ``meta``: ``cpu``, ``logical_cpus``, ``date``, ``command``, ``wall_s``, ``peak_rss_gb``,
    ``settings`` (the run's :class:`BenchSettings` as a dict).
    """
    if not rows:
        return "# lightning-afm-bench\n\nNo rows.\n"
    first = rows[0]
    settings = meta.get("settings", {})
    cap = first.get("vocab_cap")
    full_shape = cap is None
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [
        "# CPU inference throughput and parameters (lightning-afm-bench)",
        "",
        f"Measured by us on {meta.get('cpu', cpu_name())} ({meta.get('logical_cpus', os.cpu_count())} logical CPUs), "
        f"{first['threads']} torch threads, torch {first['torch']}, {meta.get('date', '')}; "
        f"our variants run {_runtime_words(first, settings)}.",
        f"Batch {first['batch']:,}, `torch.inference_mode`, eval mode; each variant timed on "
        f"{first['rounds']} rounds x {first['batches_per_round']} batches after {settings.get('warmup', '?')} "
        "warm-up batch(es), variants interleaved round by round (order rotated each round) in one process; "
        "samples/s = batch / median batch time; gain = samples/s of the variant / baseline - 1.",
        f"Ids drawn Zipf-like per field (exponent {first['zipf_exponent']}, id order = frequency order), "
        f"numeric features uniform in [0, 1], seed {first['seed']}."
        + (" Freed blocks stay in the process heap, as in a warmed-up server (`reuse_freed_memory`)."
           if first.get("reuse_freed_memory") else ""),
        (
            "Shapes: the paper's, full vocabularies (Criteo 33,762,577 rows, Avazu 9,449,445 rows)."
            if full_shape
            else f"Shapes: the paper's, but **every table capped at {cap:,} rows** (`vocab_cap={cap}`): "
            "parameter counts and speeds are not those of Table 2's models."
        ),
    ]
    if meta.get("command"):
        lines.append(f"Command: `{meta['command']}`" + (f" ({meta['wall_s']:.0f} s" if meta.get("wall_s") else "")
                     + (f", peak memory {meta['peak_rss_gb']:.1f} GB)" if meta.get("peak_rss_gb") else ")"))
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        shape = PAPER_SHAPES[dataset]
        lines += ["", f"## {dataset.capitalize()} (embedding {shape.embedding_dim}, MLP {len(shape.mlp_hidden)} x "
                  f"{shape.mlp_hidden[0]})", ""]
        table2 = [v for v in _TABLE_2_VARIANTS if v in variants]
        lines += _table(rows, dataset, table2, full_shape)
        others = [v for v in _OTHER_VARIANTS if v in variants]
        if others:
            lines += ["", "Other structures and DeepCTR-Torch 0.3.0:", ""]
            lines += _table(rows, dataset, others, full_shape)
        lines += _product_rate_table(rows, dataset)
        lines += _runtime_table(rows, dataset)

    ranks: dict[str, dict[str, int]] = {}
    for r in rows:
        if r.get("ranks"):
            ranks.setdefault(r["dataset"], {}).update(r["ranks"])
    lines += ["", "Notes:", ""]
    lines.append(
        "- +AFM MLP: AFM on MLP layers 2 and 3 (both factors with a bias, a ReLU between them). "
        "+AFM EMB is cumulative, as in the paper: the +AFM MLP model plus AFM on every table, the per-field "
        "projections folded into the first MLP Linear where the MLP reads the embeddings (all but NFM and FiBiNet; "
        "FiBiNet folds its bilinear layers and first MLP Linear onto products of the codes at inference "
        "when (k+1)^2 < d, i.e. at Criteo's shape, see `lightning_afm/inference/fibinet.py`)."
    )
    lines.append(
        "- +SVD MLP / +SVD EMB: the same structures from SVD (first factor without a bias; table projections "
        "without a bias); +SVD EMB is cumulative like +AFM EMB. +TTD EMB: TT-Rec tables on the baseline "
        "(MLP unchanged), no fold."
    )
    if ranks:
        names = {"mlp": "MLP", "emb": "embeddings", "tt": "TT"}
        lines.append("- Ranks: " + "; ".join(
            f"{d.capitalize()} " + ", ".join(f"{names[k]} {v}" for k, v in r.items()) for d, r in ranks.items()
        ) + ".")
    lines.append(
        "- \"Paper's +AFM EMB gain\" is the figure printed in the paper's Table 2, measured on the authors' "
        "machine: shown for reference only, it is not our measurement. \"Ours ≥ paper\" compares our measured "
        "gain with it."
    )
    if any(r.get("macs_bound_gain_pct") is not None for r in rows):
        lines.append(
            "- Multiply-add bound: the baseline's multiply-adds in matrix products per row over the variant's, "
            "minus 1 (counted at the aten level on one batch, see `matmul_multiply_adds`; `macs_per_row` in bench.json). On a CPU "
            "whose products run at one speed this is the most a structure can gain; a measured gain above it "
            "means the variant's products ran faster, one far below it that something else dominates."
        )
    if "deepctr_torch" in variants:
        lines.append(
            "- DeepCTR-Torch 0.3.0 builds the same model at the same shape (DCNv2 = its DCN with matrix cross; "
            "its FiBiNET shares one bilinear layer, hence fewer parameters; it has no GDCN). It reads ids as a "
            "float matrix and returns probabilities; its input matrix is prebuilt like ours. "
            "\"Ours / DeepCTR-Torch\" = our baseline's samples/s over its; below 1 (bold) means ours is slower."
        )
    if settings.get("share_weights", True):
        lines.append(
            "- Variants share the baseline's storage for the parameters they keep unchanged (e.g. the LR tables), "
            "so all variants of a model fit in memory together; the computation of each is its own. The timed "
            "inference forms copy the tables they fuse (rank-2 codes and LR weights in one table, about 16 bytes "
            "a row; `optimize_for_inference(fuse=True)`)."
        )
    if meta.get("native_attention") and any(r["model"] == "autoint" for r in rows):
        lines.append(f"- AutoInt's attention ran on {meta['native_attention']}; TorchScript and ONNX Runtime "
                     "run PyTorch's kernels.")
    noisy = [r for r in rows if r.get("iqr_pct") is not None]
    if noisy:
        worst = max(noisy, key=lambda r: r["iqr_pct"])
        lines.append(
            f"- Noise: the interquartile range of a variant's batch times is at most {worst['iqr_pct']:.0f} % of "
            f"its median ({worst['dataset']}/{worst['model']}/{worst['variant']}); see `iqr_pct` in bench.json."
        )
    for r in rows:
        if r.get("skipped"):
            lines.append(f"- {r['dataset']}/{r['model']}/{VARIANT_TITLES[r['variant']]} skipped: {r['skipped']}")
        elif r.get("runtime_note"):
            lines.append(f"- {r['dataset']}/{r['model']}/{VARIANT_TITLES[r['variant']]}: {r['runtime_note']}")
        for runtime, reason in ((r.get("runtime_selection") or {}).get("refused") or {}).items():
            lines.append(f"- {r['dataset']}/{r['model']}/{VARIANT_TITLES[r['variant']]}: `runtime=best` left out "
                         f"{runtime}: {reason}")
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``bench.json`` (the rows) and ``bench.md`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    json_path.write_text(json.dumps(list(rows), indent=1) + "\n")
    md_path.write_text(to_markdown(rows, meta))
    return json_path, md_path


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
