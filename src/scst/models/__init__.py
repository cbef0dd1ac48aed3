"""scvi-tools-style models on scst's own small base class."""

from ._base import BaseModel
from ._baselines import MeanExpression, RidgeExpression, STNet
from ._gcng import GCNG

__all__ = ["BaseModel", "GCNG", "MeanExpression", "RidgeExpression", "STNet"]
