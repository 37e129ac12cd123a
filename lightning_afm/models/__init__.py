"""The CTR model zoo: seven models over shared layers, each a LightningModule.

Example:
    >>> from lightning_afm.data.schema import Schema
    >>> m = build_model("deepfm", Schema.from_vocab_sizes([10, 20], numeric=1), embedding_dim=4, mlp_hidden=[8])
    >>> type(m).__name__, count_parameters(m) > 0
    ('DeepFM', True)

Parameter counts and the paper's Table 2
----------------------------------------
At the paper's configurations (Criteo: embedding 16, MLP 3 x 400, 13 numeric
fields; Avazu: embedding 50, MLP 3 x 2000; full vocabularies) the models have

=========  ===========  ===========
model      Criteo       Avazu
=========  ===========  ===========
DCN        574,459,169  492,135,196
DeepFM     574,457,024  492,129,696
NFM        574,297,024  490,029,696
AutoInt    574,460,512  492,160,796
FiBiNet    578,617,440  537,285,004
DCNv2      574,826,393  494,552,996
GDCN       575,194,475  496,972,996
=========  ===========  ===========

which round to Table 2's figures. The architecture follows DeepCTR-Torch 0.3.0
(the authors' base) and its defaults; what Table 2 pins down, and what it cannot:

* Biases: the output Linear after the MLP carries the global bias; the LR part's
  numeric weights are an ``nn.Linear(N, 1)`` with its own bias. That gives
  DeepFM/Criteo 574,457,024 (DeepCTR-Torch: 574,457,023, no bias on its numeric
  weight) and DeepFM/Avazu 492,129,696. Single biases are below Table 2's rounding.
* DCN: vector cross layers. Their number is not identifiable: 2 to 6 layers all
  round to Table 2 on both data sets (one layer gives 492.13M on Avazu). 2 is
  DeepCTR-Torch's default and the authors' code's.
* DCNv2: full ``D x D`` cross matrices (DeepCTR-Torch's DCN with "matrix"
  parameterisation), 2 layers. DeepCTR-Torch's low-rank ``DCNMix`` defaults
  (rank 32, 4 experts) give 574.69M on Criteo, so the paper did not use them.
* GDCN: 2 gated cross layers (1 gives 574.83M, 3 gives 575.56M). The
  parallel (GDCN-P) and stacked (GDCN-S) forms differ by ``D`` parameters in the
  output layer, below the rounding; GDCN-P is the one whose MLP reads the
  embeddings, which the paper's folding of the embedding projection needs.
* AutoInt: the count fixes 12 ``d x d`` attention matrices: 3 interacting layers
  with the residual projection (DeepCTR-Torch's default, taken here) or 4
  without; 2 layers, or 3 without residual, miss Avazu's 492.16M. The number of
  heads and the attention scaling have no parameters and cannot be read from
  the counts: DeepCTR-Torch's 2 heads, unscaled.
* FiBiNet: two bilinear layers with separate weights (SENET branch and raw
  branch), "field_interaction" type. DeepCTR-Torch 0.3.0 shares one between the
  branches, which gives 578.53M / 536.71M, not 578.62M / 537.29M; "field_each"
  and "field_all" miss too. SENET reduction ratios 1 to 3 all fit (4 or more
  give 537.28M on Avazu): DeepCTR-Torch's 3.
* NFM: no other free choice (bi-interaction dropout has no parameters).
* Batch norm in the MLP is off: it would add ``2 x 6000`` parameters on Avazu,
  and DeepFM would count 492.14M instead of 492.13M.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..data.schema import Schema
from .autoint import AutoInt
from .base import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, CTRModel, count_parameters, make_adam
from .dcn import DCN
from .dcnv2 import DCNv2
from .deepfm import DeepFM
from .fibinet import FiBiNet
from .gdcn import GDCN
from .metrics import BinaryLogLoss
from .nfm import NFM

MODELS: dict[str, type[CTRModel]] = {
    "dcn": DCN,
    "deepfm": DeepFM,
    "nfm": NFM,
    "autoint": AutoInt,
    "fibinet": FiBiNet,
    "dcnv2": DCNv2,
    "gdcn": GDCN,
}


def build_model(name: str, schema: Schema | Mapping[str, Any], **hparams: Any) -> CTRModel:
    """Build the model registered as ``name`` (case-insensitive) from a schema and hyper-parameters."""
    key = str(name).lower()
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](schema, **hparams)


__all__ = [
    "MODELS",
    "AutoInt",
    "BinaryLogLoss",
    "CTRModel",
    "DCN",
    "DCNv2",
    "DeepFM",
    "FiBiNet",
    "GDCN",
    "NFM",
    "build_model",
    "count_parameters",
    "DEFAULT_EMBEDDING_TARGETS",
    "DEFAULT_MLP_TARGETS",
    "make_adam",
]
