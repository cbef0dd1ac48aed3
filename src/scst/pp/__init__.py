"""Preprocessing: gene panels, hypergraphs, spot patches, tissue masks, graph matrices."""

from ._genes import select_genes

__all__ = ["select_genes"]
