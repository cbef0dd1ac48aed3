"""Tools: thin functions that validate, call a model or a pp routine, and write documented keys."""

from ._embed import embed_patches
from ._expression import domain_ari, evaluate_expression, spatial_domains
from ._ligrec import ligand_receptor, lr_scores
from ._ligrec_cv import LRFold, gene_function_cv, ligrec_cv, ligrec_metrics, lr_folds, read_gmt, shuffle_graph
from ._ligrec_local import lr_kernel
from ._multimodal import embed, gene_importance, retrieve
from ._predict import cross_validate, predict_expression
from ._pretrain import pretrain_encoder
from ._shards import ShardError, merge_shards, predict_shards

__all__ = [
    "LRFold",
    "ShardError",
    "cross_validate",
    "domain_ari",
    "embed",
    "embed_patches",
    "evaluate_expression",
    "gene_function_cv",
    "gene_importance",
    "ligand_receptor",
    "ligrec_cv",
    "ligrec_metrics",
    "lr_folds",
    "lr_kernel",
    "lr_scores",
    "merge_shards",
    "predict_expression",
    "predict_shards",
    "pretrain_encoder",
    "read_gmt",
    "retrieve",
    "shuffle_graph",
    "spatial_domains",
]
