"""seqFISH+ mouse cortex/SVZ (Eng et al. 2019): field-of-view 0 counts and all 913 cells' metadata."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import SPATIAL_KEY
from ._fetch import fetch

__all__ = ["seqfish_cortex"]

_DS = "seqfish_cortex"
#: Giotto's rotated frame of ``seqfish_field_locs.txt``: ``x' = _GIOTTO_FLIP - Y``, ``y' = -X``.
_GIOTTO_FLIP = 2047.0


def _cells(path: str | os.PathLike | None) -> pd.DataFrame:
    """The 913-cell metadata table, built from the Cai-lab centroids and GCNG's annotation."""
    cent = pd.read_csv(fetch(_DS, "original/cortex_svz_cellcentroids.csv", path))
    # Keep the coordinate strings exactly as published; parse after the table is assembled.
    ann = pd.read_csv(fetch(_DS, "original/cortex_annotation.txt", path), sep="\t")
    ann.columns = [c.strip() for c in ann.columns]
    if len(ann) != len(cent):
        raise ValueError(f"cortex_annotation.txt has {len(ann)} rows, centroids {len(cent)}; the files do not match.")
    if not np.array_equal(ann["Field_of_View"].to_numpy(), cent["Field of View"].to_numpy()):
        raise ValueError("Fields of view differ between cortex_annotation.txt and cortex_svz_cellcentroids.csv.")
    cells = pd.DataFrame(
        {
            "fov": cent["Field of View"].astype(int).to_numpy(),
            "cell_id_in_fov": cent["Cell ID"].astype(int).to_numpy(),
            "x": cent["X"].astype(float).to_numpy(),
            "y": cent["Y"].astype(float).to_numpy(),
            "region": pd.Categorical(cent["Region"].astype(str).str.strip()),
            "cell_type": pd.Categorical(ann["cell_types"].astype(str).str.strip()),
        },
        index=pd.Index([f"cell_{k}" for k in range(1, len(cent) + 1)], name="cell_id"),
    )
    if not np.array_equal(ann["uniq_ID"].astype(str).str.strip().to_numpy(), cells.index.to_numpy()):
        raise ValueError("cortex_annotation.txt ids are not cell_1 ... cell_913 in file order.")
    try:
        lou = pd.read_csv(fetch(_DS, "original/cortex_svz_cell_type_annotations.csv", path))
    except FileNotFoundError:  # a member of a zip without a known hash: local only (see the module registry)
        warnings.warn(
            "seqfish_cortex: cortex_svz_cell_type_annotations.csv is not available locally (it cannot be downloaded "
            "with a verified hash); obs has no 'louvain' column.",
            UserWarning,
            stacklevel=3,
        )
    else:
        if not np.array_equal(lou["index"].to_numpy(), np.arange(len(cells))):
            raise ValueError("cortex_svz_cell_type_annotations.csv: `index` is not 0 ... 912 in order.")
        cells["louvain"] = pd.Categorical(lou["louvain"].astype(int).to_numpy())
    return cells


def seqfish_cortex(path: str | os.PathLike | None = None) -> AnnData:
    """seqFISH+ mouse cortex, field of view 0 (118 cells × 1,774 genes), with all 913 cells' metadata.

    Built from the upstream files in ``original/`` of ``path`` or ``$SCST_DATA_DIR/seqfish_cortex`` (else
    downloaded with pooch against known hashes; the Louvain table is local only):
    Giotto's "mini seqFISH" counts (genes × cells), the Cai-lab centroids, GCNG's cell-type annotation and the
    Cai-lab Louvain clusters. Only field 0 has counts: the full 913 × 10,000 matrix is not publicly
    reachable from here (see the data README).

    Parameters
    ----------
    path
        Folder laid out like ``shared/data/seqfish_cortex`` (the ``original/`` subfolder is read).

    Returns
    -------
    AnnData with

    - ``X``: raw integer counts, :class:`scipy.sparse.csr_matrix` (int32), 118 × 1,774;
    - ``obs_names``: ``cell_1`` … ``cell_118`` (the 1-based row numbers of the Cai-lab files);
    - ``obs``: ``fov`` (0), ``cell_id_in_fov``, ``x``, ``y`` (pixels, Cai-lab frame of each field),
      ``region``, ``cell_type`` and ``louvain`` (when the local Louvain file exists);
    - ``obsm["spatial"]``: ``(x, y)`` in the same Cai-lab pixel frame (≈0.103 µm/px, unverified);
    - ``uns["seqfish_cells"]``: the metadata of all 913 cells (7 fields of view) as a DataFrame indexed by
      ``cell_id``, with the same columns as ``obs``. Use it for graphs over all fields (one graph per ``fov``;
      fields are not stitched).

    Raises
    ------
    ValueError
        The files do not line up (ids, fields of view or Giotto's locations disagree with the centroids).
    """
    cells = _cells(path)
    expr = pd.read_csv(fetch(_DS, "original/seqfish_field_expr.txt.gz", path), sep=" ", index_col=0)
    counts = expr.T
    if not counts.index.isin(cells.index).all():
        raise ValueError("seqfish_field_expr.txt.gz has cell ids not among the 913 cells.")
    obs = cells.loc[counts.index].copy()
    for col in ("region", "cell_type", "louvain"):
        if col in obs:
            obs[col] = obs[col].cat.remove_unused_categories()
    if not (obs["fov"] == 0).all():
        raise ValueError("seqfish_field_expr.txt.gz holds cells outside field of view 0.")
    # Giotto's locations are the same cells in a rotated frame: a cheap check that rows line up.
    locs = np.loadtxt(fetch(_DS, "original/seqfish_field_locs.txt", path))
    rot = np.column_stack([_GIOTTO_FLIP - obs["y"].to_numpy(), -obs["x"].to_numpy()])
    if locs.shape != rot.shape or not np.allclose(locs, rot, atol=0.01):
        raise ValueError("seqfish_field_locs.txt does not match the centroids of field 0 (expected x'=2047-Y, y'=-X).")
    X = counts.to_numpy()
    if (X < 0).any() or not np.array_equal(X, np.round(X)):
        raise ValueError("seqfish_field_expr.txt.gz: counts must be non-negative integers.")
    adata = AnnData(
        X=sp.csr_matrix(X.astype(np.int32)),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(counts.columns.astype(str), name=None)),
    )
    adata.obs.index.name = None
    adata.obsm[SPATIAL_KEY] = obs[["x", "y"]].to_numpy(dtype=np.float64)
    all_cells = cells.copy()
    all_cells["region"] = all_cells["region"].astype(str)
    all_cells["cell_type"] = all_cells["cell_type"].astype(str)
    if "louvain" in all_cells:
        all_cells["louvain"] = all_cells["louvain"].astype(int)
    adata.uns["seqfish_cells"] = all_cells
    return adata
