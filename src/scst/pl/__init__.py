"""Plots in scanpy conventions: they read keys written by ``tl``/``pp`` and never compute models."""

from ._domains import spatial_domains
from ._expression import predicted_expression, spatial_expression
from ._ligrec import ligand_receptor, ligand_receptor_spatial, ligrec_roc
from ._models import attribution, training_history
from ._retrieval import retrieval
from ._scores import cross_validation, gene_scores

__all__ = [
    "attribution",
    "cross_validation",
    "gene_scores",
    "ligand_receptor",
    "ligand_receptor_spatial",
    "ligrec_roc",
    "predicted_expression",
    "retrieval",
    "spatial_domains",
    "spatial_expression",
    "training_history",
]
