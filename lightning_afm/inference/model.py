"""``optimize_for_inference``: a trained CTR model as a plain, eval-only ``nn.Module``.

The training models (:mod:`lightning_afm.models`) have one plain forward, written for autograd.
Inference has no graph to record, which allows structures the training forward cannot use:
every field's rows gathered into one output, or, fused, every field's codes and LR weight by one
``index_select`` on one table (:mod:`.lookups`), all projections in one batched product
(:mod:`.projection`), DeepFM's FM and NFM's bi-interaction on the codes (:mod:`.code_space`), AFM's factored Linears with the ReLU in place (:mod:`.dense`),
cross networks at a GEMM-friendly width (:mod:`.cross`), DCN's cross network as one product
(:mod:`.cross_v1`), FiBiNet's bilinear outputs written
into the MLP input or folded onto the codes (:mod:`.fibinet`). They give the training model's
eval-mode outputs (to float rounding).

Sharing: by default every tensor is the training model's own storage (:mod:`.sharing`). The
fused table is a copy, so it is built only when it may be: ``copy=True`` (a snapshot anyway) or
an explicit ``fuse=True`` (the bench, serving and export, whose models are not trained further).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from lightning_afm.models.autoint import AutoInt
from lightning_afm.models.base import CTRModel
from lightning_afm.models.dcn import DCN
from lightning_afm.models.dcnv2 import DCNv2
from lightning_afm.models.deepfm import DeepFM
from lightning_afm.models.fibinet import FiBiNet
from lightning_afm.models.gdcn import GDCN
from lightning_afm.models.nfm import NFM

from .cross_v1 import build_dcn_head
from .fibinet import build_fibinet_head
from .heads import AutoIntHead, DeepFMHead, NFMHead, ParallelCrossHead
from .lookups import build_lookups
from .projection import build_projection
from .sharing import Tensors

#: The deep part's inference form of each model class (exact classes: a subclass may change
#: ``deep_logit``, and an inference form that ignored the change would be silently wrong).
HEADS: dict[type, Callable[[CTRModel, Tensors], nn.Module]] = {
    DeepFM: DeepFMHead,
    NFM: NFMHead,
    AutoInt: AutoIntHead,
    DCN: build_dcn_head,
    DCNv2: ParallelCrossHead,
    GDCN: ParallelCrossHead,
    FiBiNet: build_fibinet_head,
}


class InferenceModel(nn.Module):
    """A CTR model's eval-mode forward: ``[B, F]`` ids and ``[B, N]`` numeric -> logits ``[B]``.

    Built by :func:`optimize_for_inference`. Eval-only: it runs under ``torch.no_grad`` (no
    gradient reaches any tensor), ``train()`` and ``requires_grad_()`` raise, and dropout and
    batch norm act as in eval mode. Any batch size; ``torch.jit.script`` compiles it.
    Its ``state_dict`` is not a checkpoint format: save the training model.
    """

    def __init__(
        self,
        lookup: nn.Module,
        project: nn.Module,
        lr_numeric: Optional[nn.Module],
        deep: nn.Module,
        num_fields: int,
        num_numeric: int,
    ) -> None:
        super().__init__()
        self.lookup = lookup  # [B, F] ids -> ([B, F, k] codes, [B] LR logit of the fields)
        self.project = project  # [B, F, k] -> [B, F, d]
        self.lr_numeric = lr_numeric  # [B, N] -> [B, 1]; None without numeric fields
        self.deep = deep  # (codes, emb, numeric) -> [B]
        # a head that computes everything from the codes (code-space FM / NFM, folded MLP) gets an
        # empty tensor for the embeddings: the projection to d is not run at all
        self.build_embeddings = bool(getattr(deep, "needs_embeddings", True))
        self.num_fields = int(num_fields)
        self.num_numeric = int(num_numeric)
        super().train(False)

    def forward(self, categorical: torch.Tensor, numeric: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.no_grad():
            numeric = self._check_inputs(categorical, numeric)
            codes, logit = self.lookup(categorical)
            emb = self.project(codes) if self.build_embeddings else codes.new_empty(0)
            if self.lr_numeric is not None:
                logit = logit + self.lr_numeric(numeric).squeeze(-1)
            return logit + self.deep(codes, emb, numeric)

    def _check_inputs(self, categorical: torch.Tensor, numeric: Optional[torch.Tensor]) -> torch.Tensor:
        if categorical.dim() != 2 or categorical.shape[1] != self.num_fields:
            raise ValueError(
                "categorical must be [batch, " + str(self.num_fields) + "] (one id per field), got shape "
                + str(categorical.shape)
            )
        if categorical.dtype != torch.int64 and categorical.dtype != torch.int32:
            raise TypeError("categorical ids must be int64 (or int32), got " + str(categorical.dtype))
        if numeric is None:
            numeric = torch.zeros([categorical.shape[0], 0], device=categorical.device)
        if numeric.dim() != 2 or numeric.shape[1] != self.num_numeric or numeric.shape[0] != categorical.shape[0]:
            raise ValueError(
                "numeric must be [batch, " + str(self.num_numeric) + "], got shape " + str(numeric.shape)
                + " for a batch of " + str(categorical.shape[0])
            )
        return numeric

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError(
                "an InferenceModel is eval-only (it shares or snapshots the weights of a trained model "
                "and computes nothing autograd can follow); train the CTR model itself and call "
                "optimize_for_inference(model) again"
            )
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "InferenceModel":
        if requires_grad:
            raise RuntimeError(
                "an InferenceModel computes no gradients (it runs under torch.no_grad); "
                "train the CTR model itself and call optimize_for_inference(model) again"
            )
        return super().requires_grad_(False)


def optimize_for_inference(model: CTRModel, copy: bool = False, fuse: Optional[bool | str] = None) -> InferenceModel:
    """The eval-only inference form of a trained CTR model, baseline or compressed.

    Args:
        model: one of the seven models of :data:`lightning_afm.models.MODELS` (exact class), in
            any structure compression leaves (factored Linears and tables, folded projections,
            TT tables: a module kind without a faster structure here is called as it is).
        copy: False (default) shares the model's storage: no memory is copied, and in-place
            updates of its values (an optimizer step, ``load_state_dict``) show in the next call,
            which is safe because nothing derived from them is kept between calls (see
            :mod:`.sharing`). True clones every tensor: a snapshot, independent of later training.
            Either way the result has its own modules: ``model.train()``, ``model.to(...)`` or
            hooks on ``model`` do not reach it, and a module swapped into ``model`` afterwards
            (compression) is not seen: optimize again.
        fuse: gather every field's codes and LR weight by one lookup in one fused table
            (:class:`~.lookups.FusedLookup`), which is a copy of the embedding and LR tables.
            None (default) fuses exactly when ``copy`` is True (a snapshot anyway). True with
            ``copy=False`` copies the tables only: in-place updates of the embedding and LR tables
            are then NOT seen (the rest stays shared), and the tables take twice their memory
            while the training model lives; for a model that is served, not trained (the bench,
            ``serve/``). False never fuses. Tables that cannot be fused (per-field ranks, TT, QR,
            PQ, unknown kinds) are gathered or called as without it. ``"all"``: fuse whatever the
            row width (a baseline's ``d + 1`` too), unpadded, for a graph exported to a runtime that
            pays per node, where one Gather beats one per field (``export/``, ``serve/onnx_runtime.py``).

    Returns:
        An :class:`InferenceModel`: ``(categorical [B, F], numeric [B, N] or None) -> [B]``, equal
        to ``model.eval()(categorical, numeric)``; ``torch.jit.script`` works on it.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> model = DeepFM(Schema.from_vocab_sizes([10, 20], numeric=2), embedding_dim=4, mlp_hidden=[8])
        >>> fast = optimize_for_inference(model)
        >>> cat, num = torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2)
        >>> torch.allclose(fast(cat, num), model.eval()(cat, num))
        True
    """
    build_head = HEADS.get(type(model))
    if build_head is None:
        known = ", ".join(sorted(cls.__name__ for cls in HEADS))
        raise TypeError(
            f"optimize_for_inference has no inference form for {type(model).__name__}; it knows {known} "
            "(exact classes). For another model, add its head to lightning_afm.inference.model.HEADS, "
            "or run the model itself in eval mode under torch.inference_mode()"
        )
    tensors = Tensors(copy=copy)
    tables = model.embeddings.tables()
    numeric = model.linear.numeric
    return InferenceModel(
        lookup=build_lookups(tables, model.linear.tables(), tensors, fuse=copy if fuse is None else fuse),
        project=build_projection(tables, tensors),
        lr_numeric=tensors.frozen(numeric) if numeric is not None else None,
        deep=build_head(model, tensors),
        num_fields=model.num_fields,
        num_numeric=model.num_numeric,
    )
