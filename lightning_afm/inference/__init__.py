"""Eval-only structures built from a trained model: :func:`optimize_for_inference`.

The training models keep one plain forward; everything that is faster only without autograd
(batched gathers, fused projections, aligned cross networks, FiBiNet's code fold) is built here,
as separate modules, from a model's weights (shared, or copied with ``copy=True``).
"""

from .cross import GEMM_ALIGN, aligned_width
from .model import HEADS, InferenceModel, optimize_for_inference
from .sharing import Tensors

__all__ = ["GEMM_ALIGN", "HEADS", "InferenceModel", "Tensors", "aligned_width", "optimize_for_inference"]
