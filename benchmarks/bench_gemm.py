"""How fast this CPU runs one float32 matrix product in each library the bench's runtimes use.

A model's speed on a CPU is mostly the speed of its matrix products, and the libraries do not run
them alike on every CPU: PyTorch's eager and TorchScript forms call MKL's sgemm, ONNX Runtime its
own MLAS kernels, and PyTorch's oneDNN path (``torch.utils.mkldnn``) oneDNN's. On a CPU where one
of them takes a narrower vector path than the others, the runtime that uses the wide one wins by
up to 2x on the same model, whichever structure it is (README, "Products' speed"). This times
``[B, K] x [K, N]`` (default: a batch of 10,000 through Avazu's 2000 x 2000 MLP layer) in each,
in the same rounds, and prints G multiply-adds per second with the CPU's name and the thread count.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/bench_gemm.py --threads 1
    .venv/bin/python benchmarks/bench_gemm.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_afm.bench.report import cpu_name
from lightning_afm.export import formats
from lightning_afm.serve.onnx_runtime import session_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--outputs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    linear = nn.Linear(args.inputs, args.outputs).eval()
    x = torch.randn(args.rows, args.inputs)
    runs = {"torch (MKL sgemm)": lambda: linear(x)}
    if torch.backends.mkldnn.is_available():
        from torch.utils import mkldnn

        dense_in_onednn = mkldnn.to_mkldnn(nn.Sequential(linear))
        onednn_x = x.to_mkldnn()
        runs["torch oneDNN (torch.utils.mkldnn)"] = lambda: dense_in_onednn(onednn_x)
    try:
        ort = formats.require("onnxruntime", "onnx")
    except formats.MissingExtra as err:
        print(f"ONNX Runtime left out: {err}")
    else:
        with tempfile.TemporaryDirectory(prefix="afm-gemm-") as tmp:
            path = Path(tmp) / "linear.onnx"
            torch.onnx.export(linear, (x[:8],), str(path), input_names=["x"], dynamic_axes={"x": {0: "rows"}},
                              dynamo=False)
            session = ort.InferenceSession(str(path), session_options(ort, args.threads),
                                           providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        with torch.inference_mode():  # the same product: checked before it is timed
            np.testing.assert_allclose(session.run(None, {"x": x[:256].numpy()})[0], linear(x[:256]).numpy(),
                                       rtol=1e-4, atol=1e-4)
        runs["ONNX Runtime (MLAS)"] = lambda: session.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run()  # first call: packing, session set-up
        for _ in range(args.rounds):  # interleaved, so load hits every library alike
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    macs = args.rows * args.inputs * args.outputs
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}: [{args.rows}, {args.inputs}] x "
          f"[{args.inputs}, {args.outputs}] float32, median of {args.rounds} rounds")
    base = statistics.median(times["torch (MKL sgemm)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:36s} {median * 1e3:8.1f} ms  {macs / median / 1e9:7.1f} G multiply-adds/s  "
              f"{base / median:5.2f}x torch")


if __name__ == "__main__":
    main()
