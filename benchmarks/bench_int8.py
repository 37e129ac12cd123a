"""AFM + int8 against int8 alone, AFM alone and the fp32 baseline: size, test accuracy and speed in one table.

    lightning-afm hydra.run.dir=outputs/int8/baseline                    # DeepFM on the synthetic data
    lightning-afm compression=afm baseline=outputs/int8/baseline/last.ckpt hydra.run.dir=outputs/int8/afm
    python benchmarks/bench_int8.py outputs/int8/baseline outputs/int8/afm --out int8.md

Each run (a run folder or its checkpoint) is exported to ONNX twice by ``lightning_afm.export``,
as ``lightning-afm-export format=onnx`` and ``... int8=true`` write it: fp32 (checked against eager
PyTorch) and int8 (row-wise int8 tables, ONNX Runtime's dynamic int8 products). The int8 export
is forced, so that an int8 model the 0.001 AUC bar refuses still gets its row; the table says
whether the bar passed. Per artifact:

- size: the ONNX file on disk (the encoder, the same for all four, is left out);
- test AUC and logloss: the artifact run by ONNX Runtime on up to ``--rows`` rows of the run's
  test split (read from its cache, or regenerated from its Hydra config);
- speed: samples/s at batch 1,024 and 10,000 (batch / mean latency) and p99 latency at batch 1,
  all four artifacts timed in the same interleaved rounds (``bench_serving.time_cells``) on
  batches of the same test rows, at ``--threads`` ONNX Runtime threads.

Both runs must be of the same data (the table compares their test rows). The CPU model and the
thread count are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_serving: the shared timing loop and report

from bench_serving import summarize, time_cells, write_report  # noqa: E402

from lightning_afm.bench.report import machine_info  # noqa: E402
from lightning_afm.data.encoder import find_checkpoint  # noqa: E402
from lightning_afm.export import formats  # noqa: E402
from lightning_afm.export.artifact import export_model  # noqa: E402
from lightning_afm.export.cli import run_folder, test_rows  # noqa: E402
from lightning_afm.export.verify import auc_and_logloss, run_in_batches  # noqa: E402
from lightning_afm.serve.runtime import load_model  # noqa: E402

#: The table's rows: (run, int8), in the order the issue asks for them.
ROWS = (("baseline", False, "fp32 baseline"), ("baseline", True, "int8 alone"), ("afm", False, "AFM alone"),
        ("afm", True, "AFM + int8"))
SPEED_BATCHES = (1, 1024, 10_000)


class Batch(NamedTuple):
    """One timed call's inputs: ``categorical`` ``[B, F]`` int64, ``numeric`` ``[B, N]`` float32 or None."""

    categorical: np.ndarray
    numeric: np.ndarray | None


def load_run(path: str | Path, rows: int) -> tuple[torch.nn.Module, np.ndarray, np.ndarray | None, np.ndarray, str]:
    """The run's model and up to ``rows`` labelled test rows: ``(model, categorical [n, F],
    numeric [n, N] or None, labels [n], where the rows came from)``."""
    path = Path(path).expanduser()
    checkpoint_path = find_checkpoint(path)
    model = load_model(torch.load(checkpoint_path, map_location="cpu", weights_only=True))
    run = run_folder(path, checkpoint_path)
    found = test_rows(run, rows) if run is not None else None
    if found is None or found[2] is None:
        raise SystemExit(f"bench_int8: {path} has no labelled test split to score (a run folder with its "
                         "summary.json or .hydra/config.yaml is needed); give the run folder, not a lone checkpoint")
    categorical, numeric, labels = found
    return model, categorical, numeric if numeric.shape[1] else None, labels, f"the run's test split ({run})"


def export_both(model: torch.nn.Module, categorical: np.ndarray, numeric: np.ndarray | None, labels: np.ndarray,
                source: str, folder: Path) -> dict[bool, dict[str, Any]]:
    """fp32 and int8 ONNX exports of ``model`` into ``folder``: ``{int8: manifest}`` (plus ``"path"``)."""
    manifests = {}
    for int8 in (False, True):
        out = folder / ("int8" if int8 else "fp32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters and the quantiser warn about their internals
            manifest = export_model(model, out, "onnx", categorical, numeric, source=source, labels=labels,
                                    int8=int8, force=True)
        manifests[int8] = {**manifest, "path": out / manifest["file"]}
    return manifests


def speed_batches(categorical: np.ndarray, numeric: np.ndarray | None, batch: int, count: int) -> list[Batch]:
    """``count`` batches of ``batch`` consecutive test rows (wrapping round when the split is short)."""
    out = []
    for k in range(count):
        pick = (np.arange(batch) + k * batch) % len(categorical)
        out.append(Batch(categorical[pick], None if numeric is None else numeric[pick]))
    return out


def measure(runs: dict[str, tuple], threads: int, seconds: float, rounds: int, folder: Path) -> list[dict[str, Any]]:
    """Export every run fp32 and int8, score the test rows, time the four artifacts side by side."""
    results, runners = [], {}
    for name, (model, categorical, numeric, labels, source) in runs.items():
        for int8, manifest in export_both(model, categorical, numeric, labels, source, folder / name).items():
            runner = formats.load_runner("onnx", manifest["path"], threads=threads)
            auc, logloss = auc_and_logloss(run_in_batches(runner, categorical, numeric), labels)
            check = manifest["verification"]
            results.append({"run": name, "int8": int8, "bytes": manifest["bytes"], "test_rows": len(labels),
                            "auc": auc, "logloss": logloss,
                            "int8_auc_change": check.get("auc_change"), "int8_bar_passed": check["passed"],
                            "form": manifest["exporter"].get("form")})
            runners[(name, int8)] = runner
    categorical, numeric = runs["baseline"][1], runs["baseline"][2]
    for batch in SPEED_BATCHES:
        batches = speed_batches(categorical, numeric, batch, 32 if batch == 1 else 4)
        for (name, int8), samples in time_cells(runners, batches, seconds * len(runners), rounds).items():
            row = next(r for r in results if r["run"] == name and r["int8"] == int8)
            row[f"batch_{batch}"] = summarize(samples, batch)
    return results


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by_key = {(r["run"], r["int8"]): r for r in results}
    base = by_key[("baseline", False)]
    lines = [f"DeepFM-family runs `{meta['runs']['baseline']}` (baseline) and `{meta['runs']['afm']}` (AFM), "
             f"ONNX Runtime on {meta['threads']} thread{'s' if meta['threads'] > 1 else ''}, "
             f"{meta['machine']['cpu']} ({meta['machine']['logical_cpus']} logical CPUs), torch {meta['torch']}; "
             f"test AUC and logloss on {base['test_rows']:,} test rows.", "",
             "| model | size on disk | smaller than fp32 baseline | test AUC | test logloss | int8's AUC change from its fp32 (bar -0.001) "
             "| samples/s, batch 1,024 | samples/s, batch 10,000 | p99, batch 1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run, int8, label in ROWS:
        r = by_key[(run, int8)]
        change = (f"{r['int8_auc_change']:+.6f} ({'passes' if r['int8_bar_passed'] else 'refused without force'})"
                  if int8 else "–")
        lines.append(f"| {label} | {r['bytes'] / 1e6:.2f} MB | {base['bytes'] / r['bytes']:.1f}x | "
                     f"{r['auc']:.4f} | {r['logloss']:.4f} | {change} | {r['batch_1024']['samples_per_s']:,.0f} | "
                     f"{r['batch_10000']['samples_per_s']:,.0f} | {r['batch_1']['p99_ms']:.3g} ms |")
    lines += ["", "Command: " + meta["command"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="the run folder of the uncompressed model")
    parser.add_argument("afm", help="the run folder of the AFM-compressed model (same data)")
    parser.add_argument("--rows", type=int, default=100_000, help="test rows scored (the synthetic split has 100,000)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime's intra-op threads")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size and artifact")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the Markdown table here (and .json next to it)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.threads < 1 or args.seconds <= 0:
        parser.error("--rows and --threads must be >= 1 and --seconds > 0")
    torch.set_num_threads(args.threads)
    runs = {"baseline": load_run(args.baseline, args.rows), "afm": load_run(args.afm, args.rows)}
    if runs["baseline"][1].shape[1] != runs["afm"][1].shape[1] or len(runs["baseline"][3]) != len(runs["afm"][3]):
        raise SystemExit("bench_int8: the two runs have different test splits; train both on the same data")
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(runs, args.threads, args.seconds, args.rounds, Path(tmp))
    meta = {"runs": {"baseline": args.baseline, "afm": args.afm}, "threads": args.threads, "machine": machine_info(),
            "torch": torch.__version__,
            "command": "python benchmarks/bench_int8.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    for r in results:
        print(json.dumps(r), flush=True)
    write_report(markdown(results, meta), meta, results, args.out)


if __name__ == "__main__":
    main()
