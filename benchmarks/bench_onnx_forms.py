"""ONNX Runtime on the two forms an export can take: the inference layer's and the plain eval forward.

    .venv/bin/python benchmarks/bench_onnx_forms.py                                # FiBiNet +AFM EMB, Criteo
    .venv/bin/python benchmarks/bench_onnx_forms.py --model deepfm --structure baseline --dataset avazu

``lightning-afm-export format=onnx`` and ``Predictor(runtime="onnx")`` write the inference form
(:func:`lightning_afm.export.artifact.serving_forms`) and fall back to the plain forward only where
it does not export within 1e-5. This writes both forms of one model at the paper's shape (tables
capped), checks each against eager PyTorch, and times ONNX Runtime on each in the same rounds,
interleaved, on the threads torch has (pin with ``taskset``, set ``OMP_NUM_THREADS``). Prints one
JSON line per batch size: the median latency of a call per form (ms), and the CPU.
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
from lightning_afm.export import formats
from lightning_afm.export.artifact import serving_forms
from lightning_afm.export.cli import random_rows
from lightning_afm.serve.onnx_runtime import session_options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fibinet")
    parser.add_argument("--structure", default="afm_emb", choices=["baseline", "afm_mlp", "afm_emb"])
    parser.add_argument("--dataset", default="criteo", choices=["criteo", "avazu"])
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size and form")
    args = parser.parse_args(argv)
    ort = formats.require("onnxruntime", "onnx")
    warnings.simplefilter("ignore")  # exporters warn about their own internals
    shape = paper_shape(args.dataset, args.vocab_cap)
    settings = VariantSettings(mlp_rank=shape.mlp_rank, emb_rank=shape.emb_rank)
    model = build_variant(args.model, shape, args.structure, settings, twin=build_twin(args.model, shape)).eval()
    categorical, numeric, _ = random_rows(model, max(args.batches))
    inputs = (categorical, numeric) if numeric.shape[1] else (categorical,)
    with torch.no_grad():
        reference = torch.sigmoid(model(*(torch.from_numpy(x) for x in (categorical, numeric)))).numpy()
    print(json.dumps({"machine": machine_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      **{k: getattr(args, k) for k in ("model", "structure", "dataset", "vocab_cap")}}))
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, module in serving_forms(model, numeric.shape[1], "onnx"):
            folder = Path(tmp) / label.split()[0]
            folder.mkdir()
            example = [torch.from_numpy(x[:2]) for x in inputs] + [None] * (2 - len(inputs))
            path, _ = formats.write(module, "onnx", folder, *example)
            session = ort.InferenceSession(str(path), session_options(ort, torch.get_num_threads()),
                                           providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            sessions[label] = (session, names)
            got = session.run(None, dict(zip(names, inputs)))[0]
            print(json.dumps({"form": label, "max_abs_diff_vs_eager": float(np.abs(got - reference).max())}))
    for batch in args.batches:
        feeds = {label: dict(zip(names, (x[:batch] for x in inputs))) for label, (_, names) in sessions.items()}
        times: dict[str, list[float]] = {label: [] for label in sessions}
        deadline = time.perf_counter() + args.seconds * len(sessions)
        while time.perf_counter() < deadline or min(len(t) for t in times.values()) < 3:
            for label, (session, _) in sessions.items():
                start = time.perf_counter()
                session.run(None, feeds[label])
                times[label].append(time.perf_counter() - start)
        print(json.dumps({"batch": batch, **{f"{label} ms": round(statistics.median(t) * 1e3, 3)
                                              for label, t in times.items()}}), flush=True)


if __name__ == "__main__":
    main()
