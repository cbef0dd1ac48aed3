"""Torch-only building blocks shared by scst models (no anndata/scanpy imports: GPU machines lack them)."""

from ._hggep import HGGEP_BENCH, HGGEPModule
from ._hypergraph import knn_hyperedges
from ._layers import CBAM, GEM, CDCConv2d, CoordEmbedding, SpotTransformer, ViTBlock, ZINBLoss, zinb_nll

__all__ = [
    "CBAM",
    "CDCConv2d",
    "CoordEmbedding",
    "GEM",
    "HGGEP_BENCH",
    "HGGEPModule",
    "SpotTransformer",
    "ViTBlock",
    "ZINBLoss",
    "knn_hyperedges",
    "zinb_nll",
]
