"""scvi-tools-style models on scst's own small base class."""

from ._base import BaseModel
from ._baselines import MeanExpression, RidgeExpression, STNet
from ._feature import HGGEPHead, MLPExpression
from ._gcng import GCNG
from ._hggep import HGGEP
from ._multimodal import MultimodalST
from ._pretrain import SSLEncoder
from ._tcgn import TCGN

__all__ = [
    "BaseModel",
    "GCNG",
    "HGGEP",
    "HGGEPHead",
    "MLPExpression",
    "MeanExpression",
    "MultimodalST",
    "RidgeExpression",
    "SSLEncoder",
    "STNet",
    "TCGN",
]
