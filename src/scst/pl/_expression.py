"""Spot-level expression over the H&E image: observed next to predicted."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import sparse
from spatialdata import SpatialData

from .._constants import SECTION_KEY, SPATIAL_KEY, TABLE_KEY, UNS_KEY
from .._utils import _check_key, _get_table, _section_geometry

__all__ = ["spatial_expression"]


def _gene_values(adata, gene: str, layer: str | None) -> np.ndarray:
    """Values of ``gene``: a layer as stored, or log1p(normalize_total 1e4) of raw ``X`` when ``layer`` is None."""
    _check_key(adata.var_names, gene, "adata.var_names")
    j = adata.var_names.get_loc(gene)
    if layer is None:
        X = adata.X
        total = np.asarray(X.sum(axis=1)).ravel()
        col = X[:, j].toarray().ravel() if sparse.issparse(X) else np.asarray(X[:, j]).ravel()
        return np.log1p(col / np.maximum(total, 1) * 1e4)
    _check_key(adata.layers, layer, "adata.layers")
    L = adata.layers[layer]
    return L[:, j].toarray().ravel() if sparse.issparse(L) else np.asarray(L[:, j]).ravel()


def spatial_expression(
    sdata: SpatialData,
    gene: str,
    *,
    layers: Sequence[str | None] = (None, "predicted"),
    sections: Sequence[str] | None = None,
    table: str = TABLE_KEY,
    scale: int = 3,
    cmap: str = "magma",
    shared_scale: bool = False,
    figsize: tuple[float, float] | None = None,
    return_fig: bool = False,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | list[Axes] | None:
    """Plot one gene on the spots of each section over the H&E image, one column per layer.

    Parameters
    ----------
    sdata
        SpatialData from :func:`scst.io.read_st` / :mod:`scst.datasets` (images optional).
    gene
        Gene in ``var_names``.
    layers
        Layers to show side by side; ``None`` is the observed expression, log1p(normalize_total 1e4) of raw ``X``
        — the units of :func:`scst.tl.predict_expression`'s layer.
    sections
        Sections (rows); default all in ``obs["section"]``.
    table
        Table key.
    scale
        Pyramid level of the image drawn underneath (3 = 1/8 resolution).
    cmap
        Colour map.
    shared_scale
        One colour range for all panels of a row; by default each panel has its own (predictions are usually
        smoother than observations).
    figsize
        Figure size; default 4 × 4 inches per panel.
    return_fig
        Return the figure instead of the axes.
    show
        Show the figure; default: show unless ``save`` is given or a figure/axes is returned.
    save
        File to write (format from its suffix).

    Returns
    -------
    The list of axes (row-major), the figure with ``return_fig=True``, or ``None`` when shown.
    """
    adata = _get_table(sdata, table)
    _check_key(adata.obs, SECTION_KEY, "adata.obs")
    if sections is None:
        sections = list(adata.obs[SECTION_KEY].astype("category").cat.categories)
    layers = list(layers)
    values = {lay: _gene_values(adata, gene, lay) for lay in layers}
    nr, nc = len(sections), len(layers)
    fig, axes = plt.subplots(nr, nc, figsize=figsize or (4 * nc, 4 * nr), squeeze=False)
    for r, s in enumerate(sections):
        m = (adata.obs[SECTION_KEY] == s).to_numpy()
        if not m.any():
            raise ValueError(f"sections: no spots of section {s!r} in obs[{SECTION_KEY!r}].")
        geo = _section_geometry(adata, s) if UNS_KEY in adata.uns else {}
        xy = adata.obsm[SPATIAL_KEY][m]
        rng = [np.nanmin(np.concatenate([values[la][m] for la in layers])),
               np.nanmax(np.concatenate([values[la][m] for la in layers]))]  # fmt: skip
        img = None
        if geo.get("image_key") and geo["image_key"] in sdata.images:
            tree = sdata.images[geo["image_key"]]
            level = min(scale, len(tree.children) - 1)
            img = np.moveaxis(tree[f"scale{level}"]["image"].data.compute(), 0, -1)
            factor = geo["image_shape"][0] / img.shape[0]
        for c, lay in enumerate(layers):
            ax = axes[r, c]
            if img is not None:
                ax.imshow(img, extent=(0, img.shape[1] * factor, img.shape[0] * factor, 0))
            size = (geo.get("spot_diameter_px", 100.0) / max(np.ptp(xy[:, 0]), 1) * 72 * 3.5) ** 2
            kw = {"vmin": rng[0], "vmax": rng[1]} if shared_scale else {}
            sc_ = ax.scatter(xy[:, 0], xy[:, 1], c=values[lay][m], s=size, cmap=cmap, edgecolors="none", **kw)
            pad = geo.get("spot_diameter_px", 100.0)
            ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
            ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{s} · {gene} · {'observed' if lay is None else lay}")
            fig.colorbar(sc_, ax=ax, fraction=0.046, pad=0.02, label="log1p(norm.)")
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show is None:
        show = save is None and not return_fig
    if show:
        plt.show()
        return None
    return fig if return_fig else list(axes.ravel())
