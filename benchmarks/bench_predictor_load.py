"""What reusing a verified ONNX export saves when a ``Predictor`` loads (``runtime="onnx"``).

    .venv/bin/python benchmarks/bench_predictor_load.py                       # DeepFM and FiBiNet, Criteo shape
    .venv/bin/python benchmarks/bench_predictor_load.py --models dcn --vocab-cap 10000 --rounds 5

Per model and structure (baseline, +AFM EMB at the paper's Criteo shape, tables capped), the part
of ``Predictor.load`` that ONNX adds, timed both ways in the same rounds, interleaved:

- ``export``: the model exported to ONNX, opened and checked (no export next to the run);
- ``reuse``: the checksum of the weights, the search for a verified export of them
  (:func:`lightning_afm.export.reuse.find_verified_onnx`), and that ``model.onnx`` opened and checked.

Reading the checkpoint and building the model are the same in both and are not timed. Prints one
JSON line per cell (median and min seconds) and the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lightning_afm.bench.report import machine_info
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.variants import VariantSettings, build_twin, build_variant
from lightning_afm.export.artifact import export_model
from lightning_afm.export.cli import random_rows
from lightning_afm.export.manifest import weights_sha256
from lightning_afm.export.reuse import find_verified_onnx
from lightning_afm.serve import Predictor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deepfm", "fibinet"])
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # exporters warn about their own internals
    shape = paper_shape("criteo", args.vocab_cap)
    settings = VariantSettings(mlp_rank=shape.mlp_rank, emb_rank=shape.emb_rank)
    print(json.dumps({"machine": machine_info(), "torch": torch.__version__, "threads": torch.get_num_threads()}))
    for name in args.models:
        twin = build_twin(name, shape)
        for structure in ("baseline", "afm_emb"):
            model = build_variant(name, shape, structure, settings, twin=twin).eval()
            with tempfile.TemporaryDirectory() as run:
                categorical, numeric, _ = random_rows(model, 1000)
                export_model(model, Path(run) / "onnx", "onnx", categorical, numeric, source="random ids")
                times: dict[str, list[float]] = {"export": [], "reuse": []}
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    exported = Predictor(model, runtime="onnx")
                    times["export"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    found = find_verified_onnx([run], lambda: weights_sha256(model))
                    reused = Predictor(model, runtime="onnx", onnx_artifact=None if found is None else found[0])
                    times["reuse"].append(time.perf_counter() - start)
                    assert reused.onnx_runner.reused is not None and exported.onnx_runner.reused is None
                row = categorical[:64], numeric[:64]
                same = np.abs(reused.predict_encoded(*row) - exported.predict_encoded(*row)).max()
            print(json.dumps({"model": name, "structure": structure, "vocab_cap": args.vocab_cap,
                              "parameters": sum(p.numel() for p in model.parameters()),
                              **{f"{k}_s_median": round(statistics.median(v), 4) for k, v in times.items()},
                              **{f"{k}_s_min": round(min(v), 4) for k, v in times.items()},
                              "max_abs_diff_reused_vs_exported": float(same)}), flush=True)


if __name__ == "__main__":
    main()
