"""Preprocessing: gene panels, hypergraphs, spot patches, tissue masks, patch features, graph matrices."""

from ._features import handcrafted_feature_names, handcrafted_features
from ._genes import select_genes
from ._hypergraph import hypergraph
from ._patches import IMAGENET_MEAN, IMAGENET_STD, SpotPatchDataset, extract_patches
from ._tissue import PRESETS as TISSUE_PRESETS
from ._tissue import filter_tiles, tile_grid, tissue_mask

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TISSUE_PRESETS",
    "SpotPatchDataset",
    "extract_patches",
    "filter_tiles",
    "handcrafted_feature_names",
    "handcrafted_features",
    "hypergraph",
    "select_genes",
    "tile_grid",
    "tissue_mask",
]
