"""AutoInt's interacting layers at inference: one fused projection product, a measured kernel choice,
and, on AFM/SVD-factored tables, the first layer computed from the codes.

The training layer (:class:`~lightning_afm.models.layers.attention.InteractingLayer`) runs four
``d x d`` Linears (query, key, value, residual), ``scaled_dot_product_attention`` over ``[B, H, F,
d_h]`` heads, a transposing copy back to ``[B, F, d]``, the residual sum and a ReLU. Here:

- **One projection product**: the four weights stacked into one ``[d, 4 d]`` matrix (the query's
  part pre-multiplied by the logit scale), one ``mm`` for all of ``x W_q, x W_k, x W_v, x W_res``
  (``[B F, 4 d]``); every head's query, key, value and residual are strided views of it, never copied.
- **The attention kernel**, ``"native"``, ``"bmm"`` or ``"sdpa"`` (see :func:`choose_kernel`):
  ``native`` is :mod:`~lightning_afm.inference.native`'s compiled kernel (one sample at a time in
  vector registers, residual and ReLU included), used wherever it built and passed its check;
  ``bmm`` per head, ``bmm`` for the ``[F, F]`` logits, an in-place softmax, and ``baddbmm`` for
  ``residual + P V`` (the sum is the product's accumulator), written into the head's columns of one
  output; ``sdpa`` is PyTorch's fused ``scaled_dot_product_attention`` (a flash-attention kernel on
  CPU) plus the residual add. TorchScript, tracing (ONNX) and ``torch.compile`` get ``bmm`` or
  ``sdpa``, which they can read.
- **The first layer from the codes** (:class:`CodeInteracting`): after AFM/SVD on the tables,
  ``e_i = P_i c_i + b_i``, so the first layer's projections are
  ``e_i W = c_i (P_i^T W) + b_i W``: one batched product over the ``F`` fields with ``[k, 4 d]``
  weights folded on every call from the current (shared) ``P_i``, ``b_i`` and ``W``. Exact. It
  writes ``[F, B, 4 d]``, which the attention reads strided, so it is used only where the
  multiply-adds it saves pay for that (:data:`FOLD_MIN_SAVED_MACS`): at Avazu's shape (``k = 8``,
  ``d = 50``: ``8 x 200`` per field instead of ``8 x 50 + 50 x 200``), not at Criteo's (``k = 2``,
  ``d = 16``). With AutoInt+'s MLP folded onto the codes too, the ``[B, F, d]`` embeddings are
  then never built.

The weights are stacked or folded from the shared tensors on every call (``O(F k d + d^2)``,
nothing next to a batch), so nothing derived from the training model is kept between calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_afm.models.layers.attention import InteractingLayer

from . import native
from .projection import _Projection, plain_projections
from .sharing import Tensors

#: The largest head size given the flash kernel (one thread only; see :func:`choose_kernel`): between
#: the measured head sizes 8 (flash faster) and 25 (``bmm`` faster); sizes in between are not measured.
SDPA_MAX_HEAD_DIM = 16
#: The attention kernels :class:`InferenceInteracting` can run; ``"auto"`` asks :func:`choose_kernel`
#: on every eager call (the thread count may change between calls; a scripted layer keeps the
#: portable choice made when it was built).
KERNELS = ("auto", "native", "bmm", "sdpa")


def choose_kernel(head_dim: int, threads: int, sdpa_max_head_dim: int = SDPA_MAX_HEAD_DIM,
                  native_ok: bool = False) -> str:
    """The fastest attention kernel for heads of ``head_dim`` on ``threads`` intra-op threads:
    ``"native"`` wherever it can run (``native_ok``), else ``"sdpa"`` (the flash kernel) for small
    heads on one thread and ``"bmm"`` otherwise.

    The native kernel, one layer's attention alone at batch 10,000 (``benchmarks/bench_attention.py
    --kernels``, AMD EPYC, quiet machine, 2026-12-01): Criteo's 26 fields x heads of 8 in 27.4 ms
    against 71.4 ms (flash) and 82.5 ms (``bmm``) on one thread, 14.2 ms against 67.3 ms and 43.4 ms
    on two; Avazu's 22 fields x heads of 25 in 67.5 ms against 102.2 ms and 98.3 ms on one thread,
    33.3 ms against 91.2 ms and 50.2 ms on two.

    Without it, from the whole AutoInt forward (AMD EPYC, batch 10,000, tables capped at 100,000
    rows): on a quiet machine the flash kernel made our baseline 1.12x DeepCTR-Torch's ``bmm`` +
    ``softmax`` at Criteo's head size 8 on one thread but 0.82x on two, and 0.99x / 0.94x at Avazu's
    head size 25 (README, 2026-11-30).
    """
    if native_ok:
        return "native"
    if threads <= 1 and head_dim <= sdpa_max_head_dim:
        return "sdpa"
    return "bmm"


def _graph_capture() -> bool:
    """Whether torch.compile or torch.export is capturing the running code (older torch lacks the flags)."""
    compiler = getattr(torch, "compiler", None)
    for flag in ("is_compiling", "is_exporting", "_is_non_strict_tracing"):
        check = getattr(compiler, flag, None)
        if check is not None and check():
            return True
    return False


def _functorch_wrapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is a vmap/grad transform's wrapper (a plain Tensor to Python, no storage of its own)."""
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


class InferenceInteracting(nn.Module):
    """One interacting layer, ``[B, F, d]`` -> ``[B, F, d]``, equal to the training layer's eval output.

    Args:
        layer: the trained layer (its weights are taken through ``tensors``: shared or copied).
        tensors: how to take them.
        kernel: ``"auto"`` (default: :func:`choose_kernel` per call), ``"native"``, ``"bmm"`` or
            ``"sdpa"``. ``"native"`` raises ValueError where that kernel cannot be built (the
            reason from :func:`lightning_afm.inference.native.status`); where it cannot run on a
            call (TorchScript, tracing, ``torch.compile``, gradients, more fields than it takes),
            that call runs the portable choice.
    """

    def __init__(self, layer: InteractingLayer, tensors: Tensors, kernel: str = "auto") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {KERNELS}")
        if kernel == "native" and not native.available():
            raise ValueError(f"attention kernel 'native' is unavailable here: {native.status().reason}")
        self.register_buffer("query", tensors.take(layer.query.weight), persistent=False)  # [d, d] (out, in)
        self.register_buffer("key", tensors.take(layer.key.weight), persistent=False)
        self.register_buffer("value", tensors.take(layer.value.weight), persistent=False)
        has_residual = layer.residual is not None
        residual = layer.residual.weight if has_residual else layer.query.weight.new_zeros(0, layer.query.weight.shape[1])
        self.register_buffer("residual", tensors.take(residual), persistent=False)
        self.has_residual = has_residual
        self.heads = int(layer.num_heads)
        self.head_dim = int(layer.head_dim)
        self.dim = self.heads * self.head_dim
        # the query's columns carry the logit scale, so no kernel scales the [F, F] logits
        self.scale = 1.0 / math.sqrt(self.head_dim) if layer.scaled else 1.0
        self.kernel = kernel
        # TorchScript cannot ask for the thread count nor call the native kernel: a scripted layer
        # keeps the portable choice made here
        self.built_kernel = self.portable_kernel()

    @torch.jit.unused
    def portable_kernel(self) -> str:
        """The fixed kernel if it is a PyTorch one, else :func:`choose_kernel`'s without the native one."""
        if self.kernel in ("bmm", "sdpa"):
            return self.kernel
        return choose_kernel(self.head_dim, torch.get_num_threads())

    @torch.jit.unused
    def current_kernel(self) -> str:
        """The kernel an eager call would run now: the fixed one, or :func:`choose_kernel`'s for this
        thread count and whether the native kernel is available."""
        if self.kernel != "auto":
            return self.kernel
        return choose_kernel(self.head_dim, torch.get_num_threads(), native_ok=native.available())

    @torch.jit.unused
    def _native_runs(self, proj: torch.Tensor) -> bool:
        """Whether this call runs the native kernel on ``proj`` (or the layer's input): the kernel is
        chosen (:meth:`current_kernel`) and the call can take it: not suspended, traced or compiled,
        a plain float32 CPU tensor (not a fake or vmap-wrapped one), no gradient wanted, 1 to
        ``max_fields`` fields. The cheap checks come first, so that a tracer or counter never
        triggers the kernel's first build and self-check."""
        if native.is_suspended() or torch.jit.is_tracing() or _graph_capture() or type(proj) is not torch.Tensor:
            return False  # a tracer, a counter or a fake tensor: the graph must hold PyTorch ops
        if _functorch_wrapped(proj) or (proj.requires_grad and torch.is_grad_enabled()):
            return False
        if proj.dtype != torch.float32 or proj.device.type != "cpu" or proj.shape[1] < 1:
            return False
        return self.current_kernel() == "native" and proj.shape[1] <= native.status().max_fields

    @torch.jit.unused
    def _attend_native(self, proj: torch.Tensor) -> torch.Tensor:
        return native.attend(proj, self.heads, self.head_dim, self.has_residual)

    @torch.jit.unused
    def _interacting_native(self, x: torch.Tensor) -> torch.Tensor:
        if x.stride(-1) != 1:
            x = x.contiguous()
        return native.interacting(x, self.stacked_weight(), self.heads, self.head_dim, self.has_residual)

    def stacked_weight(self) -> torch.Tensor:
        """``[d, n d]``: ``[W_q * scale, W_k, W_v(, W_res)]`` as ``x @ W`` reads them (``n`` = 4, 3
        without the residual)."""
        query = self.query * self.scale if self.scale != 1.0 else self.query
        return torch.cat([query, self.key, self.value, self.residual], dim=0).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self._native_runs(x):
                return self._interacting_native(x)
        b, f, d = x.shape
        proj = x.reshape(b * f, d).mm(self.stacked_weight()).view(b, f, -1)
        return self.attend(proj)

    def attend(self, proj: torch.Tensor) -> torch.Tensor:
        """``[B, F, n d]`` projections (any strides with unit last stride) -> ``relu(attention +
        residual)`` ``[B, F, d]``, a fresh contiguous tensor."""
        kernel = self.built_kernel
        if not torch.jit.is_scripting():
            if self._native_runs(proj):
                return self._attend_native(proj)
            kernel = self.portable_kernel()  # (never builds the native kernel: this may be a trace)
        if kernel == "sdpa":
            return self._attend_sdpa(proj)
        return self._attend_bmm(proj)

    def _attend_bmm(self, proj: torch.Tensor) -> torch.Tensor:
        d, dh = self.dim, self.head_dim
        heads: list[torch.Tensor] = []
        for h in range(self.heads):
            q = proj[:, :, h * dh : (h + 1) * dh]  # [B, F, d_h], views of the one product
            k = proj[:, :, d + h * dh : d + (h + 1) * dh]
            v = proj[:, :, 2 * d + h * dh : 2 * d + (h + 1) * dh]
            weights = torch.bmm(q, k.transpose(1, 2))  # [B, F, F] logits
            weights = torch.softmax(weights, dim=-1)
            if self.has_residual:
                heads.append(torch.baddbmm(proj[:, :, 3 * d + h * dh : 3 * d + (h + 1) * dh], weights, v))
            else:
                heads.append(torch.bmm(weights, v))
        return torch.cat(heads, dim=2).relu_()

    def _attend_sdpa(self, proj: torch.Tensor) -> torch.Tensor:
        b, f = proj.shape[0], proj.shape[1]
        d, dh, n = self.dim, self.head_dim, self.heads
        q = proj[:, :, :d].unflatten(2, (n, dh)).transpose(1, 2)  # [B, H, F, d_h]
        k = proj[:, :, d : 2 * d].unflatten(2, (n, dh)).transpose(1, 2)
        v = proj[:, :, 2 * d : 3 * d].unflatten(2, (n, dh)).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
        out = out.transpose(1, 2).reshape(b, f, d)  # a fresh tensor (copied if the kernel's layout differs)
        if self.has_residual:
            out = out + proj[:, :, 3 * d :]
        return out.relu_()


class CodeInteracting(nn.Module):
    """The first interacting layer on the codes: ``[B, F, k]`` codes -> ``[B, F, d]``, equal to
    ``layer(stack(P_i c_i + b_i))`` (see the module docstring).

    Args:
        layer: the first layer's inference form (its stacked weight and kernel are used).
        weights: each field's projection weight ``P_i`` ``[d, k]`` (one ``k`` for all fields).
        biases: each field's projection bias ``b_i`` ``[d]`` (zeros where the Linear has none).
    """

    def __init__(self, layer: InferenceInteracting, weights: Sequence[torch.Tensor],
                 biases: Sequence[torch.Tensor]) -> None:
        super().__init__()
        if not weights or len(weights) != len(biases) or len({tuple(w.shape) for w in weights}) != 1:
            raise ValueError("CodeInteracting needs one [d, k] weight and one [d] bias per field, all of one shape")
        self.layer = layer
        self.projections = nn.ModuleList(_Projection(w, b) for w, b in zip(weights, biases))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([F, k, n d], [F, 1, n d])``: each field's ``P_i^T W`` and ``b_i W``."""
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor] = []
        for field in self.projections:
            weights.append(field.weight.t())
            biases.append(field.bias)
        stacked = self.layer.stacked_weight()  # [d, n d]
        return torch.matmul(torch.stack(weights), stacked), torch.stack(biases).mm(stacked).unsqueeze(1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        codes = codes.reshape(codes.shape[0], weight.shape[0], weight.shape[1])  # [B, F, k]
        by_field = torch.baddbmm(bias, codes.transpose(0, 1), weight)  # [F, B, n d]
        return self.layer.attend(by_field.transpose(0, 1))



#: Fold the first layer onto the codes only when that saves at least this many multiply-adds per
#: field and row (:func:`fold_saving`). The folded product writes ``[F, B, n d]``, which the
#: attention then reads with a stride of ``B n d`` between fields: a cost the saving must pay for.
#: Measured per first layer (``benchmarks/bench_attention.py --first-layer``, 1 thread, thread CPU time, AMD EPYC,
#: batch 10,000, loaded machine): Criteo (``d = 16``, ``k = 2``, saving 928) 143 ms folded against
#: 127 ms unfolded, so not folded; Avazu (``d = 50``, ``k = 8``, saving 8,800) 203 ms against 264 ms.
#: With the native kernel (quiet machine, 2026-12-01) the same verdicts: Criteo 74.1 ms folded
#: against 36.9 ms unfolded (the unfolded layer projects inside the kernel), Avazu 88.3 ms against 141.5 ms.
FOLD_MIN_SAVED_MACS = 4096


def fold_saving(layer: InferenceInteracting, rank: int) -> int:
    """Multiply-adds per field and row that folding ``layer`` onto rank-``rank`` codes saves: the
    projection to ``d`` and the ``d x n d`` product, against one ``rank x n d`` product."""
    d = layer.dim
    width = d * (4 if layer.has_residual else 3)
    return rank * d + d * width - rank * width


class InferenceAttention(nn.Module):
    """AutoInt's interacting layers: ``(codes [B, F, k], emb [B, F, d])`` -> ``[B, F, d]``.

    The first layer reads the codes when it was folded onto them (``reads_codes``), else the
    embeddings; the others read the previous layer's output.
    """

    def __init__(self, first: nn.Module, rest: Sequence[nn.Module], reads_codes: bool) -> None:
        super().__init__()
        self.first = first
        self.rest = nn.ModuleList(rest)
        self.reads_codes = bool(reads_codes)

    def forward(self, codes: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.first(codes if self.reads_codes else emb)
        for layer in self.rest:
            x = layer(x)
        return x


def plain_interacting(layer: nn.Module) -> bool:
    """Whether ``layer`` is exactly an :class:`InteractingLayer` whose projections are still plain
    bias-free Linears (a compression of them, or a subclass, runs as a frozen copy instead)."""
    if type(layer) is not InteractingLayer:
        return False
    projections = [layer.query, layer.key, layer.value] + ([layer.residual] if layer.residual is not None else [])
    return all(type(p) is nn.Linear and p.bias is None for p in projections)


def build_attention(attention: nn.Sequential, tables: Sequence[nn.Module], tensors: Tensors) -> InferenceAttention:
    """The inference form of AutoInt's ``attention`` stack, whose first layer reads ``tables``' output.

    Exact :class:`InteractingLayer` s get :class:`InferenceInteracting`; anything else (a
    subclass may change the forward) runs as a frozen copy. The first layer is folded onto the
    codes when it is an :class:`InferenceInteracting` and every table is an AFM/SVD-factored
    table with a plain projection of one shape (:class:`CodeInteracting`).
    """
    layers = [InferenceInteracting(layer, tensors) if plain_interacting(layer) else tensors.frozen(layer)
              for layer in attention]
    first = layers[0]
    projections = plain_projections(tables, tensors) if isinstance(first, InferenceInteracting) else None
    if projections is None or len({tuple(w.shape) for w in projections[0]}) != 1 \
            or fold_saving(first, int(projections[0][0].shape[1])) < FOLD_MIN_SAVED_MACS:
        return InferenceAttention(first, layers[1:], reads_codes=False)
    return InferenceAttention(CodeInteracting(first, *projections), layers[1:], reads_codes=True)
