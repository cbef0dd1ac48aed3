"""Plots in scanpy conventions: they read keys written by ``tl``/``pp`` and never compute models."""

from ._expression import spatial_expression

__all__ = ["spatial_expression"]
