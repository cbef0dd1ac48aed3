"""Torch-only building blocks shared by scst models (no anndata/scanpy imports: GPU machines lack them)."""

from ._augment import HEAugment
from ._backbones import build_backbone, load_backbone_weights, load_weights
from ._fold import folded_batchnorm
from ._gcng import GCNGConv, GCNGNet
from ._heads import ExpressionPrograms, MLPHeadModule, SpatialHeadModule
from ._hggep import HGGEP_BENCH, HGGEPModule
from ._hypergraph import hyperedge_index_to_incidence, incidence_to_hyperedge_index, knn_hyperedges
from ._layers import CBAM, GEM, CDCConv2d, CoordEmbedding, SpotTransformer, ViTBlock, ZINBLoss, zinb_nll
from ._ssl import BYOLModule
from ._tcgn import TCGN_BENCH, TCGNModule, topk_graph
from ._train_step import PRECISIONS, patches_to_input, train_step, training_loss

__all__ = [
    "BYOLModule",
    "CBAM",
    "CDCConv2d",
    "CoordEmbedding",
    "ExpressionPrograms",
    "GCNGConv",
    "GCNGNet",
    "GEM",
    "HEAugment",
    "HGGEPModule",
    "HGGEP_BENCH",
    "MLPHeadModule",
    "PRECISIONS",
    "SpatialHeadModule",
    "SpotTransformer",
    "TCGNModule",
    "TCGN_BENCH",
    "ViTBlock",
    "ZINBLoss",
    "build_backbone",
    "folded_batchnorm",
    "hyperedge_index_to_incidence",
    "incidence_to_hyperedge_index",
    "knn_hyperedges",
    "load_backbone_weights",
    "load_weights",
    "patches_to_input",
    "topk_graph",
    "train_step",
    "training_loss",
    "zinb_nll",
]
