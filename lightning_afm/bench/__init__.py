"""``lightning-afm-bench``: parameters and CPU inference throughput at the paper's shapes (Table 2).

Modules: :mod:`.shapes` (the paper's Criteo / Avazu shapes and Table 2's figures),
:mod:`.variants` (baseline and compressed structures, built on ``meta`` then given memory),
:mod:`.deepctr` (DeepCTR-Torch 0.3.0's models at the same shape), :mod:`.throughput`
(Zipf-like batches, interleaved timing), :mod:`.runtimes` (what runs a variant: eager, TorchScript,
``torch.compile``, ONNX Runtime), :mod:`.selection` (``runtime=best``: the fastest of them per
variant), :mod:`.benchmark` (the loop), :mod:`.report`
(``bench.json`` / ``bench.md``) and :mod:`.cli` (the Hydra application).
"""

from lightning_afm.bench.benchmark import BenchSettings, run_benchmark
from lightning_afm.bench.shapes import PAPER_SHAPES, paper_shape
from lightning_afm.bench.variants import (
    OUR_VARIANTS,
    VARIANTS,
    VariantOptions,
    VariantSettings,
    build_structure,
    build_variant,
)

__all__ = [
    "BenchSettings",
    "OUR_VARIANTS",
    "PAPER_SHAPES",
    "VARIANTS",
    "VariantOptions",
    "VariantSettings",
    "build_structure",
    "build_variant",
    "paper_shape",
    "run_benchmark",
]
