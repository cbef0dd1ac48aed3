"""Preprocessing: gene panels, hypergraphs, spot patches, tissue masks, graph matrices."""

from ._genes import select_genes
from ._hypergraph import hypergraph

__all__ = ["hypergraph", "select_genes"]
