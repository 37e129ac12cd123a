"""The LightningModule every CTR model derives from: inputs, loss, L2 term, optimizer, metrics."""

from __future__ import annotations

from typing import Any, ClassVar, Iterator, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..compress.contract import ModelLayout
from ..compress.surgery import parameter_count
from ..data.schema import CATEGORICAL, LABEL, NUMERIC, Schema
from .layers.embedding import FieldEmbedding
from .layers.linear_logit import LinearLogit
from .layers.mlp import MLP
from .metrics import BinaryAUC, BinaryLogLoss


#: The MLP Linears compression takes by default: the paper's 2nd and 3rd (the 1st depends on the
#: embedding width; a fold compresses it with the tables). The zoo's compression layout.
DEFAULT_MLP_TARGETS = ("mlp.1.linear", "mlp.2.linear")
#: Every field table of ``FieldEmbedding`` (a glob; the layout lists them by name).
DEFAULT_EMBEDDING_TARGETS = ("embeddings.*",)

#: Number of parameter elements (works on ``meta``-device models): one definition, compression's.
count_parameters = parameter_count


def make_adam(params: Sequence[torch.Tensor], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused kernel where the device supports it.

    The fused kernel does one pass over each tensor instead of about ten; on CPU
    it is several times faster for the embedding tables, whose dense gradients
    make the optimizer step the largest part of a CTR training step.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


#: The checkpoint key naming the model's class (``module.QualName``), read by ``lightning_afm.serve``.
MODEL_CLASS_KEY = "lightning_afm_model_class"

#: Which table entries the L2 term of the loss covers (``CTRModel(l2=...)``).
L2_MODES = ("rows", "full")
#: How the MLP's hidden Linear weights start (``CTRModel(mlp_init=...)``): PyTorch's default
#: (Kaiming-uniform), or ``N(0, MLP_INIT_STD^2)`` as the authors' base code, DeepCTR-Torch
#: (its ``DNN`` calls ``nn.init.normal_(weight, mean=0, std=init_std)`` with ``init_std=0.0001``:
#: 1e-4 is the standard deviation there, read in deepctr_torch 0.3.0 ``layers/core.py``).
MLP_INIT_MODES = ("torch", "normal")
MLP_INIT_STD = 1e-4


class CTRModel(L.LightningModule):
    """Base class: embeddings, the LR logit, the loss with the paper's L2 term, Adam and metrics.

    A subclass builds its interaction part and MLP in ``__init__`` (after calling
    ``super().__init__``) and implements :meth:`deep_logit`. Everything is built
    from the schema alone, so a model of full Criteo size can be built (for
    example on the ``meta`` device, to count parameters) without any data.

    Parts: ``embeddings`` (:class:`FieldEmbedding`), ``linear`` (:class:`LinearLogit`),
        ``mlp`` (:class:`MLP`, blocks with ``.linear``), ``output`` (the 1-unit
        Linear after the MLP), ``mlp_reads_codes`` (instance flag, default False),
        ``MLP_READS_EMBEDDINGS`` (class flag). Compression reads them only through the
        compression contract (:class:`lightning_afm.compress.CompressibleModel`), implemented
        here once for every model: :meth:`compression_layout`, :meth:`set_mlp_reads_codes`.

    Args (hyper-parameters shared by all models, saved in checkpoints):
        schema: a :class:`Schema` or its ``to_dict()``.
        embedding_dim: ``d``, width of every field embedding.
        mlp_hidden: hidden widths of the MLP.
        dropout: dropout after every MLP ReLU.
        batch_norm: batch norm after every MLP Linear.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2 added to every gradient, all parameters).
        l2_reg: ratio ``lambda`` of the L2 term of the paper's loss (equation 13), see
            :meth:`l2_penalty`.
        l2: which table entries the L2 term covers: ``"rows"`` (default) the rows a batch looks
            up, averaged over the batch; ``"full"`` every entry of every table at every step,
            equation 13 as written (cost ``O(V d)`` a step instead of ``O(B F d)``).
        embedding_init_std: embeddings and LR weights start from ``N(0, std^2)``.
        mlp_init: how the MLP's hidden Linear weights start: ``"torch"`` (default) PyTorch's
            Kaiming-uniform; ``"normal"`` ``N(0, 1e-4^2)`` as DeepCTR-Torch's DNN (the authors'
            base code; the paper does not say). Biases and the output layer keep PyTorch's
            default either way, as there. Subclasses build their MLP with :meth:`make_mlp`.
        train_metrics: compute train AUC and log loss (the exact AUC keeps every
            training prediction until the epoch ends; switch off for huge epochs).

    Batches are dicts ``{"categorical": [B, F] int64, "numeric": [B, N] float32,
    "label": [B] float32}``; ``numeric`` may be missing when ``N == 0``.

    Logged: ``train_loss`` (per step as ``train_loss_step``, per epoch as
    ``train_loss_epoch``); at the end of each epoch ``train_auc``, ``train_logloss``,
    ``val_loss``, ``val_auc``, ``val_logloss``, ``test_loss``, ``test_auc``,
    ``test_logloss``. AUC is exact (``BinaryAUROC(thresholds=None)``); log loss is
    accumulated in float64. The train metrics are logged by the module's
    ``on_train_epoch_end``, which Lightning calls after the callbacks' hooks.
    """

    #: True when the first MLP Linear reads ``cat([X.flatten(1), numeric])`` with ``X`` the
    #: ``[B, F, d]`` embeddings (or codes, when ``mlp_reads_codes``), field-major.
    MLP_READS_EMBEDDINGS: ClassVar[bool] = True
    #: The MLP Linears compression takes by default (:data:`DEFAULT_MLP_TARGETS`).
    COMPRESSIBLE_MLP_LINEARS: ClassVar[tuple[str, ...]] = DEFAULT_MLP_TARGETS

    def __init__(
        self,
        schema: Schema | Mapping[str, Any],
        embedding_dim: int = 16,
        mlp_hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.5,
        batch_norm: bool = False,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        l2_reg: float = 1e-5,
        l2: str = "rows",
        embedding_init_std: float = 1e-4,
        mlp_init: str = "torch",
        train_metrics: bool = True,
    ) -> None:
        super().__init__()
        schema = Schema.from_dict(schema)
        if schema.num_categorical == 0:
            raise ValueError("CTR models need at least one categorical field; the schema has none")
        if int(embedding_dim) < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if l2 not in L2_MODES:
            raise ValueError(f"l2 must be one of {L2_MODES} (which table entries the L2 term covers), got {l2!r}")
        if mlp_init not in MLP_INIT_MODES:
            raise ValueError(
                f"mlp_init must be one of {MLP_INIT_MODES} (PyTorch's default, or N(0, {MLP_INIT_STD:g}^2) as "
                f"DeepCTR-Torch), got {mlp_init!r}"
            )
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("l2_reg", l2_reg)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        # Collects the arguments of this and every subclass __init__ in the chain.
        self.save_hyperparameters(ignore=["schema"])
        # Plain types only, so checkpoints load with torch.load(weights_only=True) and
        # hparams.yaml stays readable; the schema's `extra` (e.g. value counts) stays out.
        self.hparams["mlp_hidden"] = [int(h) for h in mlp_hidden]
        self.hparams["schema"] = {k: v for k, v in schema.to_dict().items() if k != "extra"}
        self.schema = schema

        self.embeddings = FieldEmbedding(
            schema.categorical_names, schema.vocab_sizes, int(embedding_dim), init_std=embedding_init_std
        )
        self.linear = LinearLogit(
            schema.categorical_names, schema.vocab_sizes, schema.num_numeric, init_std=embedding_init_std
        )
        self.mlp_reads_codes = False

        self.train_metrics = bool(train_metrics)
        # validate_args=False: the checks cost a device sync per step and labels are ours
        self.train_auc = BinaryAUC("train", validate_args=False)
        self.val_auc = BinaryAUC("val", validate_args=False)
        self.test_auc = BinaryAUC("test", validate_args=False)
        self.train_logloss = BinaryLogLoss(from_logits=True)
        self.val_logloss = BinaryLogLoss(from_logits=True)
        self.test_logloss = BinaryLogLoss(from_logits=True)

    # -- sizes ---------------------------------------------------------------
    @property
    def num_fields(self) -> int:
        return self.schema.num_categorical

    @property
    def num_numeric(self) -> int:
        return self.schema.num_numeric

    @property
    def embedding_dim(self) -> int:
        return self.embeddings.embedding_dim

    @property
    def flat_width(self) -> int:
        """Width of ``cat([emb.flatten(1), numeric])``: ``F d + N``."""
        return self.num_fields * self.embedding_dim + self.num_numeric

    def make_mlp(self, in_features: int) -> MLP:
        """The model's :class:`MLP` (``[B, in_features]`` -> ``[B, mlp_hidden[-1]]``) with its
        hyper-parameters (hidden widths, dropout, batch norm) and the ``mlp_init`` of the weights."""
        mlp = MLP(in_features, self.hparams.mlp_hidden, self.hparams.dropout, self.hparams.batch_norm)
        if self.hparams.get("mlp_init", "torch") == "normal":
            for block in mlp:
                nn.init.normal_(block.linear.weight, mean=0.0, std=MLP_INIT_STD)
        return mlp

    # -- inputs --------------------------------------------------------------
    def flat_input(self, x: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """``[B, F, w]`` and ``[B, N]`` -> ``cat([x.flatten(1), numeric], 1)``, ``[B, F w + N]``."""
        flat = x.flatten(1)
        return torch.cat([flat, numeric], dim=1) if numeric.shape[1] else flat

    def mlp_input(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """What the first MLP Linear reads in models with ``MLP_READS_EMBEDDINGS``."""
        return self.flat_input(codes if self.mlp_reads_codes else emb, numeric)

    def _check_inputs(self, categorical: torch.Tensor, numeric: torch.Tensor | None) -> torch.Tensor:
        if categorical.dim() != 2 or categorical.shape[1] != self.num_fields:
            raise ValueError(
                f"categorical must be [batch, {self.num_fields}] (one id per field of the schema), "
                f"got shape {tuple(categorical.shape)}"
            )
        if categorical.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"categorical ids must be int64 (or int32), got {categorical.dtype}")
        if numeric is None:
            numeric = categorical.new_zeros((categorical.shape[0], 0), dtype=torch.float32)
        if numeric.dim() != 2 or numeric.shape[1] != self.num_numeric or numeric.shape[0] != categorical.shape[0]:
            raise ValueError(
                f"numeric must be [batch, {self.num_numeric}] (schema numeric fields {list(self.schema.numeric)}), "
                f"got shape {tuple(numeric.shape)} for a batch of {categorical.shape[0]}"
            )
        return numeric

    @staticmethod
    def _unpack(batch: Any, need_label: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not isinstance(batch, Mapping) or CATEGORICAL not in batch:
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise TypeError(
                f"a batch must be a dict with keys {CATEGORICAL!r}, {NUMERIC!r}, {LABEL!r}; got {got}"
            )
        label = batch.get(LABEL)
        if need_label and label is None:
            raise KeyError(f"this step needs labels but the batch has no {LABEL!r} key")
        return batch[CATEGORICAL], batch.get(NUMERIC), label

    # -- model ---------------------------------------------------------------
    def deep_logit(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """Everything but the LR part: ``codes`` ``[B, F, k]``, ``emb`` ``[B, F, d]``,
        ``numeric`` ``[B, N]`` -> ``[B]``."""
        raise NotImplementedError

    def forward_parts(
        self, categorical: torch.Tensor, numeric: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[B]`` plus the looked-up rows the L2 term needs: codes ``[B, F, k]``
        and LR weights ``[B, F]``."""
        numeric = self._check_inputs(categorical, numeric)
        codes = self.embeddings.codes(categorical)
        emb = self.embeddings.project(codes)
        lr_weights = self.linear.lookup(categorical)
        logits = self.linear.combine(lr_weights, numeric) + self.deep_logit(codes, emb, numeric)
        return logits, codes, lr_weights

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, F]`` ids and ``[B, N]`` numeric -> logits ``[B]`` (float32, before the sigmoid)."""
        return self.forward_parts(categorical, numeric)[0]

    # -- loss ----------------------------------------------------------------
    def regularized_weights(self) -> Iterator[torch.Tensor]:
        """The weight matrices under the dense L2 term: every parameter with 2 or more
        dimensions outside the embedding and LR tables (MLP, output, cross, attention,
        bilinear, SENET, LR numeric weights); no biases, no batch-norm scales."""
        for name, child in self.named_children():
            if name == "embeddings":  # tables penalised through the looked-up rows
                continue
            if name == "linear":  # likewise its per-value tables; only the numeric weights here
                child = child.numeric
                if child is None:
                    continue
            for p in child.parameters():
                if p.dim() >= 2 and p.requires_grad:
                    yield p

    def l2_penalty(self, codes: torch.Tensor, lr_weights: torch.Tensor) -> torch.Tensor:
        """The L2 term of the paper's loss (equation 13), ``lambda = l2_reg``.

        ``lambda * ( sum_W ||W||^2 + (1/B) sum_{b,f} (||e_{b,f}||^2 + w_{b,f}^2) )``

        Dense weight matrices are penalised in full. Embedding and LR tables are
        penalised only through the rows looked up in the batch (``e_{b,f}``: the
        stored row, i.e. the codes of a compressed table; ``w_{b,f}``: the LR weight),
        averaged over the batch. This is an unbiased estimate of the expected squared
        norm of the rows the data uses, so a row is penalised in proportion to how
        often it occurs, and it costs ``O(B F d)`` instead of ``O(V d)`` per step
        (DeepCTR-Torch penalises all 33.8M Criteo rows at every step). The scale
        matches the mean (not summed) cross-entropy of the loss.

        With ``l2="full"`` the tables are penalised in full instead, equation 13 as the paper
        writes it: ``lambda * (sum_W ||W||^2 + sum_T ||T||^2)`` over :meth:`table_weights`.
        """
        dense = sum((w.pow(2).sum() for w in self.regularized_weights()), codes.new_zeros(()))
        if self.hparams.get("l2", "rows") == "full":
            tables = sum((p.pow(2).sum() for p in self.table_weights()), codes.new_zeros(()))
            return self.hparams.l2_reg * (tables + dense)
        rows = codes.pow(2).sum() + lr_weights.pow(2).sum()
        return self.hparams.l2_reg * (rows / codes.shape[0] + dense)

    def table_weights(self) -> Iterator[torch.Tensor]:
        """What ``l2="full"`` adds to :meth:`regularized_weights`: every weight of the embeddings
        (tables, code tables and their projections, TT cores) and the LR part's per-value tables."""
        for p in self.embeddings.parameters():
            if p.dim() >= 2 and p.requires_grad:
                yield p
        for table in self.linear.tables():  # nn.Embedding, or TT cores where a TTD stage compressed it
            for p in table.parameters():
                if p.requires_grad:
                    yield p

    # -- compression contract -----------------------------------------------
    def compression_layout(self) -> ModelLayout:
        """Where compression finds this model's parts (:class:`lightning_afm.compress.ModelLayout`)."""
        fields = list(self.embeddings.module_names)
        return ModelLayout(
            mlp_targets=self.COMPRESSIBLE_MLP_LINEARS,
            field_tables=tuple(f"embeddings.{n}" for n in fields),
            first_mlp_linear="mlp.0.linear",
            mlp_reads_embeddings=type(self).MLP_READS_EMBEDDINGS,
            mlp_reads_codes=bool(self.mlp_reads_codes),
            lr_tables={f"embeddings.{n}": f"linear.{n}" for n in self.linear.module_names if n in fields},
        )

    def set_mlp_reads_codes(self, reads_codes: bool) -> None:
        """After a fold the first MLP Linear reads the ``[B, F, k]`` codes (:meth:`mlp_input`)."""
        self.mlp_reads_codes = bool(reads_codes)

    # -- checkpoints ---------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the class in the checkpoint, so serving (``lightning_afm.serve``) rebuilds the model from the file alone."""
        checkpoint[MODEL_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give a fresh model the compressed structure a checkpoint's weights need.

        A compressed checkpoint carries its plan (written by ``AFMCompressionCallback``);
        replaying it here, before Lightning loads the state dict, is what lets
        ``DeepFM.load_from_checkpoint(path)`` load a compressed model like any other.
        """
        # Imported here: models do not depend on compression unless a checkpoint asks for it.
        from lightning_afm.compress.checkpoint import restore_compressed_structure

        restore_compressed_structure(self, checkpoint)

    # -- steps ---------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        categorical, numeric, label = self._unpack(batch)
        logits, codes, lr_weights = self.forward_parts(categorical, numeric)
        label = label.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        if self.hparams.l2_reg > 0:
            loss = loss + self.l2_penalty(codes, lr_weights)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=label.shape[0])
        if self.train_metrics:
            detached = logits.detach()
            self.train_auc.update(torch.sigmoid(detached), label.to(torch.long))
            self.train_logloss.update(detached, label)
        return loss

    def _evaluate(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        categorical, numeric, label = self._unpack(batch)
        logits = self(categorical, numeric)
        label = label.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        getattr(self, f"{stage}_auc").update(torch.sigmoid(logits), label.to(torch.long))
        getattr(self, f"{stage}_logloss").update(logits, label)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=label.shape[0], sync_dist=True)
        return loss

    def _log_epoch_metrics(self, stage: str, prog_bar: bool) -> None:
        """Compute (synced across DDP ranks), log and reset the AUC and log loss of a stage.

        Done here rather than by logging the metric objects in every step: Lightning
        then moves each logged metric to the device at every step, which walks the
        exact AUROC's list of all predictions so far (a cost growing over the epoch).
        """
        auc, logloss = getattr(self, f"{stage}_auc"), getattr(self, f"{stage}_logloss")
        if logloss.update_count == 0:
            return
        self.log(f"{stage}_auc", auc.compute(), prog_bar=prog_bar)
        self.log(f"{stage}_logloss", logloss.compute())
        auc.reset()
        logloss.reset()

    def on_train_epoch_end(self) -> None:
        if self.train_metrics:
            self._log_epoch_metrics("train", prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test", prog_bar=True)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Click probabilities ``[B]``."""
        categorical, numeric, _ = self._unpack(batch, need_label=False)
        return torch.sigmoid(self(categorical, numeric))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # read at call time, so a callback can change lr / weight_decay in hparams and
        # rebuild the optimizer (the paper finetunes with other values)
        params = [p for p in self.parameters() if p.requires_grad]
        return make_adam(params, lr=float(self.hparams.lr), weight_decay=float(self.hparams.weight_decay))
