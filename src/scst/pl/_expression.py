"""Observed next to predicted expression of genes on the tissue, one colour scale per gene."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .._constants import TABLE_KEY
from .._utils import _get_table
from ._spatial import _Section, _sections
from ._utils import _doc_show_save, _finish, _layer_values, _panel_axes

__all__ = ["predicted_expression", "spatial_expression"]

UNIT = "log1p(normalize_total 1e4)"


@_doc_show_save
def predicted_expression(
    sdata: Any,
    genes: str | Sequence[str],
    layer: str | None = "predicted",
    *,
    sections: str | Sequence[str] | None = None,
    observed: bool = True,
    table: str = TABLE_KEY,
    cmap: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """Observed and predicted expression of genes on the spots over the H&E image, per section.

    One row per section × gene, with the observed expression (``log1p(normalize_total(X, 1e4))`` of the raw
    counts) on the left and ``layers[layer]`` (e.g. from :func:`scst.tl.predict_expression`, same unit) on the right.
    Both panels of a gene share one colour scale over all sections shown (one colour bar per row). The image and
    spots are drawn by spatialdata-plot (``render_images`` at pyramid level 3, ``render_shapes``); spots without a
    finite prediction (outside the model's panel or sections) are grey.

    Parameters
    ----------
    sdata
        SpatialData from :func:`scst.io.read_st` / :mod:`scst.datasets` (keys of ``uns["scst"]["sections"]``).
        An AnnData, or a section without its image, is drawn as spots only, with a warning.
    genes
        Gene(s) in ``var_names``.
    layer
        Layer with the predictions; ``None`` draws the observed expression only.
    sections
        Sections to draw (default all of ``obs["section"]``).
    observed
        Draw the observed panel next to the predicted one.
    table
        Table key.
    cmap
        Colour map (default: matplotlib's ``image.cmap``, scanpy's default for continuous values).
    ax
        Axes to draw into: one per panel (row-major), e.g. a single Axes for one section, one gene and one layer.
    figsize
        Figure size (default 4 × 4 inches per panel); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the list of panel axes (row-major) unless the figure is shown.

    Raises
    ------
    KeyError
        A gene, layer, table or section that does not exist (the message names close matches).
    """
    adata = _get_table(sdata, table)
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("genes: expected at least one gene.")
    if layer is None and not observed:
        raise ValueError("layer: None (observed only) needs observed=True; nothing to draw.")
    secs = _sections(adata, sections)
    columns: list[str | None] = ([None] if observed else []) + ([layer] if layer is not None else [])
    values = {c: _layer_values(adata, genes, c) for c in columns}
    parts = [_Section(sdata, adata, s) for s in secs]
    rows = [np.concatenate([p.rows for p in parts])]
    norms = []
    for j in range(len(genes)):
        v = np.concatenate([values[c][rows[0], j] for c in columns])
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        norms.append(Normalize(lo, hi if hi > lo else lo + 1e-6))
    cmap = cmap or plt.rcParams["image.cmap"]
    nc = len(columns)
    fig, axes = _panel_axes(len(parts) * len(genes) * nc, ax, nc, (4.0, 4.0), figsize)
    k = 0
    for p in parts:
        for j, g in enumerate(genes):
            row_axes = axes[k : k + nc]
            for c, a in zip(columns, row_axes):
                vals = values[c][p.rows, j]
                if c is not None and not np.isfinite(vals).any():
                    warnings.warn(
                        f"layer: no finite {c!r} value of {g!r} in section {p.name!r}.", UserWarning, stacklevel=2
                    )
                df = pd.DataFrame({g: vals}, index=adata.obs_names[p.rows])
                p.render(a, df, g, title=f"{p.name} · {g} · {'observed' if c is None else c}", norm=norms[j], cmap=cmap)
            fig.colorbar(ScalarMappable(norms[j], cmap), ax=row_axes, fraction=0.046 / nc, pad=0.02, label=UNIT)
            k += nc
    return _finish(fig, axes, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)


def spatial_expression(
    sdata: Any,
    gene: str,
    *,
    layers: Sequence[str | None] = (None, "predicted"),
    sections: Sequence[str] | None = None,
    table: str = TABLE_KEY,
    cmap: str = "magma",
    figsize: tuple[float, float] | None = None,
    return_fig: bool = False,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    dpi: int | None = None,
    **old: Any,
) -> Figure | list[Axes] | None:
    """Deprecated: use :func:`predicted_expression`.

    ``layers`` is ``(None, layer)``, ``[None]`` or ``[layer]``; ``save`` is a path taken as given (relative to the
    working directory, not to ``scanpy.settings.figdir``); ``ax`` and ``dpi`` are passed on. The old keywords
    ``scale`` and ``shared_scale`` are ignored: the colour scale is now always shared by the panels of a gene. Any
    other keyword is a TypeError.
    """
    unknown = sorted(set(old) - {"scale", "shared_scale"})
    if unknown:
        raise TypeError(f"spatial_expression() got unexpected keyword argument(s) {unknown}.")
    warnings.warn(
        "scst.pl.spatial_expression is deprecated; use scst.pl.predicted_expression.", FutureWarning, stacklevel=2
    )
    layers = list(layers)
    named = [la for la in layers if la is not None]
    if len(named) > 1 or not layers:
        raise ValueError(f"layers: expected None and/or one layer, got {layers}.")
    return predicted_expression(
        sdata,
        gene,
        named[0] if named else None,
        sections=sections,
        observed=None in layers,
        table=table,
        cmap=cmap,
        figsize=figsize,
        ax=ax,
        dpi=dpi,
        return_fig=return_fig,
        show=show,
        save=None if save is None or save is False else Path(save).expanduser().resolve(),
    )
