"""Building blocks shared by the CTR models (shapes in each class's docstring)."""

from .attention import InteractingLayer
from .bi_interaction import BiInteractionPooling
from .bilinear import BILINEAR_TYPES, BilinearInteraction
from .cross import CrossNetwork
from .cross_v2 import CrossNetworkV2, LowRankMixtureCrossLayer, MatrixCrossLayer
from .dropout import Dropout
from .embedding import FieldEmbedding, module_name_for_field
from .fm import FactorizationMachine
from .gated_cross import GatedCrossLayer, GatedCrossNetwork
from .linear_logit import LinearLogit
from .mlp import MLP, MLPBlock
from .senet import SENETLayer

__all__ = [
    "BILINEAR_TYPES",
    "BiInteractionPooling",
    "BilinearInteraction",
    "CrossNetwork",
    "CrossNetworkV2",
    "Dropout",
    "FactorizationMachine",
    "FieldEmbedding",
    "GatedCrossLayer",
    "GatedCrossNetwork",
    "InteractingLayer",
    "LinearLogit",
    "LowRankMixtureCrossLayer",
    "MLP",
    "MLPBlock",
    "MatrixCrossLayer",
    "SENETLayer",
    "module_name_for_field",
]
