"""Int8 for serving: row-wise quantised tables in PyTorch, dynamic int8 matrix products in ONNX Runtime.

Tables are most of a CTR model's bytes. Each table row ``w`` (``d`` values) is stored as ``d``
int8 values ``q`` with one float32 ``scale`` and ``offset`` per row: ``w ≈ q * scale + offset``,
``q = round((w - min) / scale) - 128``, ``scale = (max - min) / 255``, so every value is off by at
most ``scale / 2``. A scale and an offset cost 8 bytes, so a narrow table (the rank-2 code
tables, the 1-wide LR tables) shares them over a block of rows with at least
:data:`MIN_BLOCK_VALUES` values: row-wise for ``d >= 8``, ``ceil(8 / d)`` rows a block below.

The matrix products (MLP, projections, cross layers) are quantised by ONNX Runtime's dynamic
quantisation (int8 weights, activations quantised per batch) after the export.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

#: A scale and an offset are shared by at least this many int8 values (one row when the row is wide enough).
MIN_BLOCK_VALUES = 8


def block_rows(width: int) -> int:
    """Rows that share one scale and offset in a table of ``width`` columns."""
    return max(1, math.ceil(MIN_BLOCK_VALUES / max(1, int(width))))


def quantize_blocks(weight: torch.Tensor, rows_per_block: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight`` ``[V, d]`` -> ``q`` int8 ``[V, d]``, ``scale`` and ``offset`` float32 ``[ceil(V / g)]``
    with ``g = rows_per_block``: row ``i`` is ``q[i] * scale[i // g] + offset[i // g]``."""
    if weight.dim() != 2:
        raise ValueError(f"a table must be [rows, width], got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("the table holds NaN or inf values; int8 needs finite weights (was the model trained?)")
    rows, width = weight.shape
    pad = (-rows) % rows_per_block
    w = weight.detach().double()
    blocks = torch.cat([w, w[-1:].expand(pad, width)]) if pad else w
    blocks = blocks.reshape(-1, rows_per_block * width)
    low, high = blocks.min(1).values, blocks.max(1).values
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant block: q = -128 gives it exactly
    q = torch.round((blocks - low[:, None]) / scale[:, None]).clamp_(0, 255) - 128
    offset = low + 128 * scale
    return (q.reshape(-1, width)[:rows].to(torch.int8), scale.float(), offset.float())


class Int8Embedding(nn.Module):
    """An ``nn.Embedding`` stand-in holding int8 rows with block-wise scale and offset (see the module doc).

    Shapes: ``idx`` ``[...]`` int64 -> ``[..., d]`` float32.
    """

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = table.weight.shape
        self.rows_per_block = block_rows(self.embedding_dim)
        q, scale, offset = quantize_blocks(table.weight, self.rows_per_block)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale[:, None])
        self.register_buffer("offset", offset[:, None])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        block = torch.div(idx, self.rows_per_block, rounding_mode="floor")
        rows = nn.functional.embedding(idx, self.qweight).float()
        return rows * nn.functional.embedding(block, self.scale) + nn.functional.embedding(block, self.offset)

    def stored_bytes(self) -> int:
        return self.qweight.numel() + 4 * (self.scale.numel() + self.offset.numel())


def quantize_tables(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Embedding`` (embedding, code and LR tables) an :class:`Int8Embedding`."""
    quantized = copy.deepcopy(model)
    for parent in list(quantized.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Embedding:
                setattr(parent, name, Int8Embedding(child))
    return quantized


def quantize_onnx_matmuls(source: str, target: str) -> None:
    """ONNX Runtime's dynamic quantisation of the graph's MatMul/Gemm weights (int8, per output channel)."""
    from lightning_afm.export.formats import require

    require("onnxruntime", "onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
