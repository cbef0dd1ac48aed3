"""scvi-tools-style models on scst's own small base class."""

from ._base import BaseModel

__all__ = ["BaseModel"]
