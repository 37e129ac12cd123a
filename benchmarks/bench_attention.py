"""AutoInt's attention kernels in the whole inference form: ``native`` vs ``bmm`` vs ``sdpa``, the first
layer on the codes or not, and DeepCTR-Torch's AutoInt, side by side.

At the paper's shape (tables capped), the baseline and +AFM EMB inference forms are timed with
every interacting layer forced to one kernel (``native``: :mod:`lightning_afm.inference.native`'s
compiled kernel, where it built; ``bmm``: per head, strided ``bmm`` + softmax + ``baddbmm``;
``sdpa``: the flash kernel), with the default (``auto``: :func:`choose_kernel`), and
+AFM EMB also with its first layer reading the projected embeddings instead of the codes
(``unfolded``), next to DeepCTR-Torch 0.3.0's AutoInt on the same tables. Interleaved rounds in one
process; prints wall-clock medians and, at one thread, the median CPU time of the timing thread
(``time.thread_time``: what the forward itself costs, much less disturbed by other processes on a
loaded machine than the wall clock).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_attention.py --dataset criteo --threads 1

``--kernels`` times only one interacting layer's attention (projections in, ``relu(attention +
residual)`` out) with each kernel on random projections at the shape (``F`` fields, 2 heads of
``d / 2``), wall clock, best of the rounds.

``--first-layer`` times only AutoInt's first interacting layer on random rank-``k`` codes at the
shape (``d``, ``F``, ``k``): projected to ``d`` then the layer (``unfolded``), against the layer
folded onto the codes (:class:`~lightning_afm.inference.attention.CodeInteracting`), in thread CPU
time; :data:`~lightning_afm.inference.attention.FOLD_MIN_SAVED_MACS` came from it.

The kernel rule (:func:`lightning_afm.inference.attention.choose_kernel`) and the fold rule
(:data:`~lightning_afm.inference.attention.FOLD_MIN_SAVED_MACS`) cite the figures these runs gave
(AMD EPYC, batch 10,000, tables capped at 100,000 rows, loaded machine: rough) in their comments.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_afm.bench.benchmark import BenchSettings
from lightning_afm.bench.deepctr import build_deepctr_model, deepctr_input
from lightning_afm.bench.report import cpu_name
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import make_batches
from lightning_afm.bench.variants import build_twin, build_variant
from lightning_afm.inference import Tensors, native, optimize_for_inference
from lightning_afm.inference.attention import CodeInteracting, InferenceInteracting, build_attention
from lightning_afm.inference.projection import BatchedProjection
from lightning_afm.models.layers.attention import InteractingLayer
from lightning_afm.runtime import reuse_freed_memory


def with_kernel(fast: torch.nn.Module, kernel: str) -> torch.nn.Module:
    """``fast`` with every interacting layer set to run ``kernel`` (in place; returns ``fast``)."""
    for module in fast.modules():
        if isinstance(module, InferenceInteracting):
            module.kernel = kernel
    return fast


def unfolded(model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s inference form with the first attention layer on the projected embeddings."""
    fast = optimize_for_inference(model, fuse=True)
    fast.deep.attention = build_attention(model.attention, [], Tensors())
    fast.build_embeddings = True
    return fast


def time_forwards(forwards: dict, inputs: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """Median ``(wall, thread CPU)`` seconds per batch of each forward, interleaved, order rotated."""
    names = list(forwards)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:
            forwards[n](inputs[n][0])
        for r in range(rounds):
            for n in names[r % len(names):] + names[: r % len(names)]:
                for x in inputs[n]:
                    w, c = time.perf_counter(), time.thread_time()
                    forwards[n](x)
                    cpu[n].append(time.thread_time() - c)
                    wall[n].append(time.perf_counter() - w)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in names}


def time_first_layer(shape, batch: int, rounds: int) -> None:
    """Prints the first layer's median thread CPU time unfolded and folded onto the codes."""
    d, k, fields = shape.embedding_dim, shape.emb_rank, shape.num_fields
    torch.manual_seed(0)
    layer = InferenceInteracting(InteractingLayer(d, 2).eval(), Tensors())
    weights = [torch.randn(d, k) / k**0.5 for _ in range(fields)]
    biases = [torch.randn(d) * 0.1 for _ in range(fields)]
    codes = torch.randn(batch, fields, k)
    project = BatchedProjection(weights, biases, has_bias=True)
    folded = CodeInteracting(layer, weights, biases)
    calls = {"unfolded": lambda c: layer(project(c)), "folded": folded}
    for name, (wall, cpu) in time_forwards(calls, {n: [codes] for n in calls}, rounds).items():
        print(f"  first layer {name:<9} wall {wall * 1000:8.1f} ms   thread CPU {cpu * 1000:8.1f} ms")


def available_kernels() -> list[str]:
    """The kernels to time here: the native one only where it built (else the reason is printed)."""
    if native.available():
        return ["native", "bmm", "sdpa"]
    print(f"  (native kernel unavailable: {native.status().reason})")
    return ["bmm", "sdpa"]


def time_kernels(shape, batch: int, rounds: int) -> None:
    """Prints each kernel's best wall time for one layer's attention on random projections."""
    d, fields = shape.embedding_dim, shape.num_fields
    layer = InferenceInteracting(InteractingLayer(d, 2).eval(), Tensors())
    proj = torch.randn(batch, fields, 4 * d, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for kernel in available_kernels():
            layer.kernel = kernel
            layer.attend(proj)
            best = min(_timed(layer.attend, proj) for _ in range(rounds))
            print(f"  attention {kernel:<7} {best * 1000:8.1f} ms  ({fields} fields, 2 heads of {d // 2})")


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="criteo", choices=["criteo", "avazu"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--first-layer", action="store_true", help="time only the first layer, folded or not")
    parser.add_argument("--kernels", action="store_true", help="time only one layer's attention with each kernel")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    shape = paper_shape(args.dataset, args.vocab_cap)
    if args.first_layer:
        print(f"{cpu_name()}, {args.threads} torch thread(s), {args.dataset} shape, batch {args.batch:,}")
        time_first_layer(shape, args.batch, args.rounds * 2)
        return
    if args.kernels:
        print(f"{cpu_name()}, {args.threads} torch thread(s), {args.dataset} shape, batch {args.batch:,}")
        time_kernels(shape, args.batch, args.rounds * 2)
        return
    settings = BenchSettings(datasets=[args.dataset], vocab_cap=args.vocab_cap).variant_settings(shape)
    batches = make_batches(shape, args.batch, 2, seed=0)
    twin = build_twin("autoint", shape)
    base = build_variant("autoint", shape, "baseline", settings, twin)
    emb = build_variant("autoint", shape, "afm_emb", settings, twin)
    forwards = {}
    for kernel in ["auto"] + available_kernels():
        forwards[f"baseline {kernel}"] = with_kernel(optimize_for_inference(base, fuse=True), kernel)
        forwards[f"afm_emb {kernel}"] = with_kernel(optimize_for_inference(emb, fuse=True), kernel)
    forwards["afm_emb unfolded"] = unfolded(emb)
    ours_inputs = [(b.categorical, b.numeric) for b in batches]
    inputs = {name: ours_inputs for name in forwards}
    calls = {name: (lambda x, m=m: m(*x)) for name, m in forwards.items()}
    theirs = build_deepctr_model("autoint", shape, tables_from=base, seed=0)
    calls["deepctr_torch"] = theirs
    inputs["deepctr_torch"] = [deepctr_input(b.categorical, b.numeric) for b in batches]
    print(f"{cpu_name()}, {args.threads} torch thread(s), torch {torch.__version__}, {args.dataset} shape, "
          f"tables capped at {args.vocab_cap:,} rows, batch {args.batch:,}, {args.rounds} rounds")
    results = time_forwards(calls, inputs, args.rounds)
    for name, (wall, cpu) in results.items():
        print(f"  {name:<20} wall {wall * 1000:8.1f} ms   thread CPU {cpu * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
