"""Spatial domains on the tissue next to the reference regions, with the adjusted Rand index in each title."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._constants import SECTION_KEY, TABLE_KEY
from .._utils import _get_table
from ._spatial import _Section, _sections
from ._utils import _category_colors, _check_in, _doc_show_save, _finish, _panel_axes

__all__ = ["spatial_domains"]


def _palette(adata: AnnData, key: str) -> dict[str, str]:
    """Colours of ``obs[key]``'s categories: ``uns[f"{key}_colors"]`` when it fits, else scanpy's default palettes.

    ``adata`` is the table itself: its ``uns`` holds the colours, listed in the order of the column's own categories
    (as scanpy writes them), so the categories are read before any conversion to strings re-sorts them.
    """
    cats = [str(c) for c in adata.obs[key].astype("category").cat.categories]
    colors = adata.uns.get(f"{key}_colors")
    if colors is None or len(colors) < len(cats):
        colors = _category_colors(len(cats))
    return dict(zip(cats, colors))


@_doc_show_save
def spatial_domains(
    sdata: Any,
    keys: str | Sequence[str] = "domain",
    *,
    truth: str | None = "label",
    sections: str | Sequence[str] | None = None,
    table: str = TABLE_KEY,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    legend: bool = True,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """Domains (e.g. of predicted and of observed expression) on the spots over the H&E, one row per section.

    Each row shows ``obs[truth]`` (the reference regions) and then each ``obs[key]``, titled with the adjusted Rand
    index against ``truth`` on that section (:func:`scst.tl.domain_ari`: spots without a reference label are left
    out). Colours come from ``uns[f"{key}_colors"]`` when present (as in scanpy), else scanpy's default palette.

    Parameters
    ----------
    sdata
        SpatialData (or AnnData: spots only, with a warning) whose table has ``obs[key]`` for each key, e.g. written
        by :func:`scst.tl.spatial_domains` with ``key_added``.
    keys
        Categorical ``obs`` column(s) with domains.
    truth
        ``obs`` column of reference labels (her2st: ``"label"`` or ``"label_name"``); None: no reference panel and
        no ARI.
    sections
        Sections to draw (default all of ``obs["section"]``).
    table
        Table key.
    ax
        Axes, one per panel (row-major).
    figsize
        Figure size (default 5.5 × 4 inches per panel); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    legend
        Draw the category legends.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the list of panel axes (row-major) unless the figure is shown.
    """
    from ..tl import domain_ari

    adata = _get_table(sdata, table)
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("keys: expected at least one obs column.")
    for k in keys + ([truth] if truth is not None else []):
        _check_in(k, list(adata.obs.columns), "keys" if k != truth else "truth", "adata.obs")
    if len(set(keys)) != len(keys) or truth in keys:
        raise ValueError(f"keys: each column once, and not the reference `truth` column {truth!r}; got {keys}.")
    secs = _sections(adata, sections)
    columns = ([truth] if truth is not None else []) + keys
    obs = adata.obs[columns].copy()
    for c in columns:
        obs[c] = obs[c].astype(str).where(obs[c].notna()).astype("category")
    palettes = {c: _palette(adata, c) for c in columns}  # the table: its uns holds the colours
    parts = [_Section(sdata, adata, s) for s in secs]
    fig, axes = _panel_axes(
        len(parts) * len(columns), ax, len(columns), (5.5, 4.0), figsize, wspace=0.7 if legend else None
    )
    for r, p in enumerate(parts):
        sub = obs.iloc[p.rows]
        for c, a in zip(columns, axes[r * len(columns) : (r + 1) * len(columns)]):
            title = f"{p.name} · {c}"
            if truth is not None and c != truth:
                ari = domain_ari(adata[p.rows], key=c, truth=truth, by=SECTION_KEY)["ari"].iloc[0]
                title += f" · ARI {ari:.2f}" if np.isfinite(ari) else " · ARI n/a"
            present = {k: v for k, v in palettes[c].items() if k in set(sub[c].dropna())}
            vals = pd.DataFrame({c: sub[c].cat.set_categories(list(present))}, index=sub.index)
            p.render(a, vals, c, title=title, palette=present, legend=legend)
    return _finish(fig, axes, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)
