"""Distance kernels in µm for local ligand–receptor scores (liana's ``spatial_neighbors``, one block per section)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._utils import _check_key, _get_table, _positive, _positive_int
from ..pp._graph_matrix import _check_finite

__all__ = ["lr_kernel"]


def _um_per_unit(adata: AnnData, section: Any, um_per_unit: float | str) -> float:
    if isinstance(um_per_unit, numbers.Real) and not isinstance(um_per_unit, bool):  # numpy scalars too
        if not (np.isfinite(um_per_unit) and um_per_unit > 0):
            raise ValueError(f"um_per_unit: expected > 0 and finite, got {um_per_unit}.")
        return float(um_per_unit)
    if um_per_unit != "auto":
        raise ValueError(f"um_per_unit: expected a positive number or 'auto', got {um_per_unit!r}.")
    try:
        return float(adata.uns["scst"]["sections"][str(section)]["um_per_px"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"um_per_unit='auto' needs adata.uns['scst']['sections'][{str(section)!r}]['um_per_px'] (written by "
            "scst.io.read_st); pass the coordinates' µm per unit instead."
        ) from err


def lr_kernel(
    adata: AnnData | Any,
    bandwidth: float,
    *,
    spatial_key: str = "spatial",
    um_per_unit: float | str = "auto",
    groups_key: str | None = "auto",
    kernel: str = "gaussian",
    cutoff: float = 0.1,
    max_neighbours: int = 100,
    key_added: str = "scst_lr_kernel",
    copy: bool = False,
) -> AnnData | None:
    """Spot-inclusive proximity weights with a bandwidth in µm, for the local scores of ``ligand_receptor``.

    ``liana.utils.spatial_neighbors`` (kernel of the distance, weights under ``cutoff`` set to 0, the spot itself
    weighted 1: signal in spot data lies within spots) on the coordinates scaled to µm, one block per section so
    that no weight crosses sections.

    Parameters
    ----------
    adata
        AnnData or SpatialData (its ``"table"``) with ``obsm[spatial_key]``.
    bandwidth
        Kernel bandwidth in µm (e.g. 100 for ST's 100 µm pitch; 0 weight beyond where the kernel drops under
        ``cutoff``).
    spatial_key
        ``obsm`` coordinates.
    um_per_unit
        µm per coordinate unit: a number, or ``"auto"``: ``uns["scst"]["sections"][section]["um_per_px"]`` (scst's
        readers; ``obsm["spatial"]`` is in pixels).
    groups_key
        ``obs`` column of the sections (``"auto"``: ``section``/``fov``/``library_id``/``sample`` when present).
    kernel, cutoff, max_neighbours
        liana's kernel family (``gaussian``, ``exponential``, ``linear``, ``misty_rbf``), weight cutoff (in [0, 1)) and
        neighbour cap (besides the spot itself; 0: each spot weighs only itself, as the one spot of a section does).
    key_added
        ``obsp`` key of the weights.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None`` or the copy; writes ``obsp[key_added]`` (CSR float32, diagonal 1) and ``uns[f"{key_added}_params"]``.
    Pass ``kernel_key=key_added`` to :func:`scst.tl.ligand_receptor`.
    """
    try:
        from liana.utils import spatial_neighbors
    except ImportError as err:  # pragma: no cover - liana is a declared dependency
        raise ImportError("lr_kernel uses liana.utils.spatial_neighbors: `pip install liana`.") from err
    from ._ligrec import _groups

    adata = _get_table(adata)
    if copy:
        adata = adata.copy()
    bandwidth = _positive("bandwidth", bandwidth, "distance in µm")  # NaN gave NaN weights, inf all ones
    _positive_int("max_neighbours", max_neighbours, 0, what="a non-negative integer")
    if isinstance(cutoff, bool | np.bool_) or not isinstance(cutoff, numbers.Real) or not 0 <= cutoff < 1:
        # NaN compared false everywhere: every spot was left with only itself, without a word
        raise ValueError(f"cutoff: expected a weight in [0, 1), got {cutoff!r}.")
    _check_key(adata.obsm, spatial_key, "adata.obsm")
    _check_finite(adata, spatial_key)  # NaN coordinates failed inside scikit-learn's NearestNeighbors
    groups, gkey = _groups(adata, groups_key)
    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
    labels = np.zeros(adata.n_obs, dtype=object) if groups is None else groups
    rows, cols, vals = [], [], []
    scales = {}
    for g in pd.unique(labels):
        idx = np.flatnonzero(labels == g)
        scale = _um_per_unit(adata, g, um_per_unit) if groups is not None or um_per_unit != "auto" else None
        if scale is None:
            raise ValueError("um_per_unit='auto' needs sections (groups_key) with scst geometry; pass a number.")
        scales[str(g)] = scale
        sub = AnnData(np.zeros((len(idx), 0), dtype=np.float32), obsm={"spatial": xy[idx] * scale})
        w = spatial_neighbors(sub, bandwidth=float(bandwidth), cutoff=cutoff, max_neighbours=min(max_neighbours,
                              len(idx) - 1), kernel=kernel, set_diag=True, inplace=False)  # fmt: skip
        w = sp.coo_matrix(w)
        rows.append(idx[w.row])
        cols.append(idx[w.col])
        vals.append(w.data)
    m = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(adata.n_obs, adata.n_obs)
    )
    m.setdiag(1.0)
    m.eliminate_zeros()
    adata.obsp[key_added] = m.astype(np.float32)
    adata.uns[f"{key_added}_params"] = {
        "bandwidth_um": float(bandwidth),
        "kernel": kernel,
        "cutoff": float(cutoff),
        "spatial_key": spatial_key,
        "groups_key": gkey or "",
        "um_per_unit": scales,
        "mean_neighbours": float(np.diff(m.indptr).mean() - 1),
    }
    return adata if copy else None
