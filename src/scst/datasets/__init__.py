"""Public data sets: local copies (``$SCST_DATA_DIR``) or pooch downloads with known hashes."""

from ._fetch import cache_dir, fetch
from ._her2st import HER2ST_ALL_SECTIONS, HER2ST_SECTIONS, her2st
from ._ligand_receptor import as_lr_table, complex_subunits, ligand_receptor, lr_pairs_in_genes
from ._seqfish import seqfish_cortex

__all__ = [
    "HER2ST_ALL_SECTIONS",
    "HER2ST_SECTIONS",
    "as_lr_table",
    "cache_dir",
    "complex_subunits",
    "fetch",
    "her2st",
    "ligand_receptor",
    "lr_pairs_in_genes",
    "seqfish_cortex",
]
