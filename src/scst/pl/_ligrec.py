"""Ligand–receptor scores as liana draws them: a dot plot of the top pairs, and one pair's local score on the tissue."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .._constants import TABLE_KEY
from .._utils import _get_table, _positive_int
from ..pp._graph_matrix import _LIBRARY_KEYS
from ._spatial import _Section, _sections
from ._utils import _check_in, _doc_show_save, _finish, _panel_axes

__all__ = ["ligand_receptor", "ligand_receptor_spatial", "ligrec_roc"]


@_doc_show_save
def ligand_receptor(
    adata: Any,
    key: str = "scst_ligrec",
    *,
    methods: str | Sequence[str] | None = None,
    n_top: int = 20,
    alpha: float = 0.05,
    cmap: str = "viridis",
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Dot plot of the top ligand–receptor pairs × scoring methods, as liana's ``dotplot`` draws them.

    Rows are the ``n_top`` pairs ranked by the first method's score (ties by ``magnitude_rank`` when the table has
    it, then by ligand and receptor name, whatever the table's row order); dot size is the expression fraction of the
    pair (the smaller of ``ligand_props`` and ``receptor_props``), colour the method's score (min–max per method, so the
    methods' scales do not hide each other; a NaN score takes the colour map's bad colour, blank by default), and a
    black ring marks ``{method}_pvals < alpha``.

    Parameters
    ----------
    adata
        AnnData (or SpatialData: its ``"table"``) with ``uns[key]``, the LIANA-style long table of
        :func:`scst.tl.ligand_receptor`: ``ligand_complex``, ``receptor_complex``, ``ligand_props``,
        ``receptor_props`` and per method ``{method}_score`` (and ``{method}_pvals`` with permutations).
    key
        ``uns`` key of the table.
    methods
        Methods to show (default: every ``*_score`` column).
    n_top
        Pairs shown.
    alpha
        p-value threshold of the ring.
    cmap
        Colour map.
    ax
        Axes to draw into.
    figsize
        Figure size (default: 1 inch per method + 3, 0.3 inch per pair + 1.5); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the axes unless the figure is shown.
    """
    adata = _get_table(adata, TABLE_KEY) if not hasattr(adata, "uns") else adata
    _check_in(key, list(adata.uns.keys()), "key", "adata.uns")
    df = adata.uns[key]
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"key: uns[{key!r}] must be a DataFrame (LIANA-style table), got {type(df).__name__}.")
    for c in ("ligand_complex", "receptor_complex"):
        _check_in(c, list(df.columns), "key", f"uns[{key!r}].columns")
    available = [c[: -len("_score")] for c in df.columns if str(c).endswith("_score")]
    if methods is None and not available:
        raise KeyError(f"key: uns[{key!r}] has no '<method>_score' column; columns: {list(df.columns)}.")
    methods = available if methods is None else ([methods] if isinstance(methods, str) else list(methods))
    if not methods:
        raise ValueError(f"methods: expected at least one method; uns[{key!r}] has {available}.")
    for m in methods:
        _check_in(m, available, "methods", f"uns[{key!r}] (its *_score columns)")
    n_top = _positive_int("n_top", n_top)
    # ties broken by the table's own ranking, then by the pair's names: the pairs shown do not hang on the row order
    by = [f"{methods[0]}_score", *(["magnitude_rank"] if "magnitude_rank" in df.columns else [])]
    by += ["ligand_complex", "receptor_complex"]
    asc = [False] + [True] * (len(by) - 1)
    top = df.sort_values(by, ascending=asc, kind="stable").head(n_top).reset_index(drop=True)
    names = (top["ligand_complex"].astype(str) + " → " + top["receptor_complex"].astype(str)).to_numpy()
    if {"ligand_props", "receptor_props"} <= set(top.columns):
        frac = np.minimum(top["ligand_props"].to_numpy(float), top["receptor_props"].to_numpy(float))
    else:
        frac = np.full(len(top), 1.0)
    fig, (a,) = _panel_axes(1, ax, 1, (3 + 1.0 * len(methods), 1.5 + 0.3 * len(top)), figsize)
    y = np.arange(len(top))[::-1]
    cm = plt.get_cmap(cmap)
    for j, m in enumerate(methods):
        s = top[f"{m}_score"].to_numpy(float)
        ok = ~np.isnan(s)  # NaN scores: the colour map's bad colour (blank by default), not the mid colour
        lo, hi = (s[ok].min(), s[ok].max()) if ok.any() else (0.0, 0.0)
        col = cm(np.where(ok, (s - lo) / (hi - lo) if hi > lo else 0.5, np.nan))
        sig = top[f"{m}_pvals"].to_numpy(float) < alpha if f"{m}_pvals" in top.columns else np.zeros(len(s), bool)
        a.scatter(
            np.full(len(s), j),
            y,
            s=20 + 230 * frac,
            c=col,
            edgecolors=np.where(sig, "black", "none"),
            linewidths=1.5,
            label=m,
        )
    a.set_xticks(np.arange(len(methods)), methods, rotation=45, ha="right")
    a.set_yticks(y, names)
    a.set_xlim(-0.6, len(methods) - 0.4)
    a.set_title(f"top {len(top)} pairs by {methods[0]} (ring: p < {alpha:g})")
    fig.colorbar(ScalarMappable(Normalize(0, 1), cm), ax=a, fraction=0.05, pad=0.02, label="score (min–max per method)")
    sizes = [a.scatter([], [], s=20 + 230 * f, c="0.6", label=f"{f:.0%} expressing") for f in (0.1, 0.5, 1.0)]
    labels = [h.get_label() for h in sizes]
    a.legend(sizes, labels, frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.3, 1))
    return _finish(fig, a, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)


@_doc_show_save
def ligand_receptor_spatial(
    sdata: Any,
    pair: str,
    key: str = "scst_ligrec_local",
    *,
    sections: str | Sequence[str] | None = None,
    library_key: str | None = "auto",
    table: str = TABLE_KEY,
    cmap: str = "viridis",
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """One pair's local interaction score on the spots over the H&E, one panel per section, one colour scale.

    Parameters
    ----------
    sdata
        SpatialData (or AnnData: spots only, with a warning) whose table has ``obsm[key]``, the spots × pairs
        DataFrame written by :func:`scst.tl.ligand_receptor` with ``local_scores``.
    pair
        Column of ``obsm[key]``, ``"LIGAND^RECEPTOR"``.
    key
        ``obsm`` key.
    sections
        Sections to draw (default all of ``obs[library_key]``).
    library_key
        ``obs`` column of the sections, one panel each (``"auto"``: ``section``, ``fov``, ``library_id`` or
        ``sample`` when present, as :func:`scst.tl.ligand_receptor`'s ``groups_key``; e.g. seqFISH+'s ``fov``).
        ``None``, or ``"auto"`` without such a column: all spots in one panel at ``obsm["spatial"]``.
    table
        Table key.
    cmap
        Colour map.
    ax
        Axes, one per section.
    figsize
        Figure size (default 4 × 4 inches per panel); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the list of axes unless the figure is shown.
    """
    adata = _get_table(sdata, table)
    _check_in(key, list(adata.obsm.keys()), "key", "adata.obsm")
    local = adata.obsm[key]
    if not isinstance(local, pd.DataFrame):
        raise TypeError(f"key: obsm[{key!r}] must be a spots × pairs DataFrame, got {type(local).__name__}.")
    _check_in(pair, list(local.columns), "pair", f"obsm[{key!r}].columns")
    if library_key == "auto":
        library_key = next((k for k in _LIBRARY_KEYS if k in adata.obs), None)
    secs = _sections(adata, sections, library_key)
    parts = [_Section(sdata, adata, s, library_key) for s in secs]
    v = local[pair].to_numpy(float)
    sel = v[np.concatenate([p.rows for p in parts])]
    sel = sel[np.isfinite(sel)]
    lo, hi = (float(sel.min()), float(sel.max())) if sel.size else (0.0, 1.0)
    norm = Normalize(lo, hi if hi > lo else lo + 1e-6)
    fig, axes = _panel_axes(len(parts), ax, 4, (4.0, 4.0), figsize)
    for p, a in zip(parts, axes):
        vals = pd.DataFrame({pair: v[p.rows]}, index=adata.obs_names[p.rows])
        p.render(a, vals, pair, title=pair if p.name is None else f"{p.name} · {pair}", norm=norm, cmap=cmap)
    fig.colorbar(
        ScalarMappable(norm, cmap), ax=axes, fraction=0.046 / max(1, min(4, len(axes))), pad=0.02, label="local score"
    )
    return _finish(fig, axes, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)


@_doc_show_save
def ligrec_roc(
    predictions: pd.DataFrame,
    *,
    methods: str | Sequence[str] | None = None,
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """ROC and precision–recall curves of a ligand–receptor cross-validation, one curve per method.

    Test pairs of all folds are pooled per method (as :func:`scst.tl.ligrec_metrics` computes its pooled AUROC and
    AUPRC, shown in the legend); the diagonal (ROC) and the positive rate (PR) mark chance. Pairs with a NaN
    ``score`` (unscored) are left out, with a warning, as in :func:`scst.tl.ligrec_metrics`.

    Parameters
    ----------
    predictions
        Output of :func:`scst.tl.ligrec_cv`: ``method``, ``label`` (1 known pair, 0 negative) and ``score``.
    methods
        Methods to draw (default all, in table order).
    ax
        Two axes (ROC, PR).
    figsize
        Figure size (default 9 × 4 inches); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure (``return_fig``), the two axes (``show=False``) or None.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    missing = {"method", "label", "score"} - set(getattr(predictions, "columns", []))
    if missing:
        raise KeyError(f"predictions: lacks columns {sorted(missing)}; pass the output of scst.tl.ligrec_cv.")
    present = list(dict.fromkeys(predictions["method"].astype(str)))
    methods = present if methods is None else ([methods] if isinstance(methods, str) else list(methods))
    if not methods:
        raise ValueError(f"methods: expected at least one method; predictions has {present}.")
    for m in methods:
        _check_in(m, present, "methods", "predictions['method']")
        d = predictions[(predictions["method"].astype(str) == m) & predictions["score"].notna()]
        if d["label"].nunique() < 2:  # before any figure is made: no half-drawn figure is left open
            raise ValueError(f"predictions: method {m!r} has test pairs of one class only; no curve can be drawn.")
    unscored = predictions["method"].astype(str).isin(methods) & predictions["score"].isna()
    if unscored.any():
        warnings.warn(
            f"predictions: {int(unscored.sum())} pairs of the methods drawn have a NaN score; they are left out of "
            "the curves (as in scst.tl.ligrec_metrics).",
            stacklevel=2,
        )
    fig, axes = _panel_axes(2, ax, 2, (4.5, 4.0), figsize)
    roc_ax, pr_ax = axes
    labels = []
    for m in methods:
        d = predictions[(predictions["method"].astype(str) == m) & predictions["score"].notna()]
        y, s = d["label"].to_numpy(int), d["score"].to_numpy(float)
        labels.append(y)
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        roc_ax.plot(fpr, tpr, label=f"{m} (AUROC {roc_auc_score(y, s):.2f})")
        pr_ax.plot(rec, prec, label=f"{m} (AUPRC {average_precision_score(y, s):.2f})")
    base = float(np.concatenate(labels).mean())  # positive rate of the pairs drawn (scored, methods shown)
    roc_ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    pr_ax.axhline(base, color="0.6", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test pairs, pooled)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision–recall", ylim=(0, 1.02))
    for a in axes:
        a.legend(fontsize="small", frameon=False)
    return _finish(fig, axes, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)
