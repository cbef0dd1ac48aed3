"""Preprocessing: gene panels and their reliability, hypergraphs, spot patches, tissue masks, patch features, graphs."""

from ._features import handcrafted_feature_names, handcrafted_features
from ._gene_groups import gene_groups
from ._genes import select_genes
from ._graph_matrix import cell_graph, graph_matrix, graph_matrix_from_adjacency
from ._hypergraph import hypergraph
from ._mudata import bulk_to_mudata, to_mudata
from ._patches import IMAGENET_MEAN, IMAGENET_STD, SpotPatchDataset, extract_patches
from ._reliability import gene_reliability
from ._scale import scale_by_section
from ._tissue import PRESETS as TISSUE_PRESETS
from ._tissue import filter_tiles, tile_grid, tissue_mask

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SpotPatchDataset",
    "TISSUE_PRESETS",
    "bulk_to_mudata",
    "cell_graph",
    "extract_patches",
    "filter_tiles",
    "gene_groups",
    "gene_reliability",
    "graph_matrix",
    "graph_matrix_from_adjacency",
    "handcrafted_feature_names",
    "handcrafted_features",
    "hypergraph",
    "scale_by_section",
    "select_genes",
    "tile_grid",
    "to_mudata",
    "tissue_mask",
]
