"""Scores of expression prediction: per-gene correlations of one run, and models × sections of a cross-validation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._constants import TABLE_KEY
from .._utils import _get_table, _positive_int
from ._utils import _check_in, _doc_show_save, _finish, _panel_axes

__all__ = ["gene_scores", "cross_validation"]

_TIDY = ("section", "gene", "metric", "value")


def _check_tidy(df: Any, arg: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{arg}: expected a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in (*_TIDY, *extra) if c not in df.columns]
    if missing:
        raise KeyError(
            f"{arg}: missing column(s) {missing}; expected the long table of scst.tl.evaluate_expression / "
            f"cross_validate with columns {list(_TIDY)}, got {list(df.columns)}."
        )
    return df


def _metric_rows(df: pd.DataFrame, metric: str, arg: str) -> pd.DataFrame:
    _check_in(metric, list(pd.unique(df["metric"])), "metric", f"{arg}['metric']")
    # sections as strings: a categorical column's unused categories would be empty groups
    return df[df["metric"] == metric].assign(section=lambda d: d["section"].astype(str))


@_doc_show_save
def gene_scores(
    adata: AnnData | Any,
    key: str = "scst_eval",
    *,
    metric: str = "pearson",
    n_top: int = 20,
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """Per-gene scores of :func:`scst.tl.evaluate_expression`: their distribution per section and the best genes.

    Left: histogram of the per-gene ``metric`` in each section (one step line per section; the legend gives the mean
    over genes). Right: the ``n_top`` genes with the highest mean over sections, as horizontal bars, best on top.

    Parameters
    ----------
    adata
        AnnData with ``uns[key]`` (long table: ``gene``, ``section``, ``metric``, ``value``), or a SpatialData whose
        table holds it (as :func:`scst.tl.evaluate_expression` writes into a SpatialData).
    key
        The ``uns`` key written by :func:`scst.tl.evaluate_expression` (``key_added``).
    metric
        Metric to show (``"pearson"``, ``"spearman"``, ``"mse"``, ``"mae"``; those that were computed).
    n_top
        Genes in the ranked bar plot.
    ax
        Two axes (distribution, ranking).
    figsize
        Figure size (default 10 × max(4, n_top / 4) inches); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the two axes unless the figure is shown.
    """
    adata = _get_table(adata, TABLE_KEY) if not hasattr(adata, "uns") else adata  # a SpatialData: its table
    _check_in(key, list(adata.uns.keys()), "key", "adata.uns")
    df = _metric_rows(_check_tidy(adata.uns[key], f"uns[{key!r}]"), metric, f"uns[{key!r}]")
    n_top = _positive_int("n_top", n_top)
    df = df[np.isfinite(df["value"].to_numpy(float))]
    if df.empty:
        raise ValueError(f"metric: no finite {metric!r} value in uns[{key!r}].")
    fig, (a0, a1) = _panel_axes(2, ax, 2, (5.0, max(4.0, n_top / 4)), figsize)
    bins = np.linspace(df["value"].min(), df["value"].max(), 31)
    for s, d in df.groupby("section", sort=True):
        a0.hist(d["value"], bins=bins, histtype="step", linewidth=1.5, label=f"{s} (mean {d['value'].mean():.3f})")
    a0.axvline(0, color="0.5", linewidth=0.8, linestyle=":")
    a0.set_xlabel(f"per-gene {metric}")
    a0.set_ylabel("genes")
    a0.legend(frameon=False, fontsize="small")
    a0.set_title(f"{metric} over {df['gene'].nunique()} genes")
    means = df.groupby("gene")["value"].mean()
    top = means.sort_values(ascending=metric not in ("pearson", "spearman")).iloc[:n_top][::-1]
    a1.barh(np.arange(len(top)), top.to_numpy(), color="tab:blue")
    a1.set_yticks(np.arange(len(top)), top.index.astype(str))
    a1.set_xlabel(f"mean {metric} over sections")
    a1.set_title(f"best {len(top)} genes")
    if ax is None:
        fig.tight_layout()
    return _finish(fig, [a0, a1], show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)


@_doc_show_save
def cross_validation(
    table: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    metric: str = "pearson",
    model_key: str = "model",
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Models × held-out sections: grouped bars of the mean per-gene ``metric``, with the standard error over genes.

    Parameters
    ----------
    table
        The tidy table of :func:`scst.tl.cross_validate` (``section``, ``gene``, ``metric``, ``value``) with a
        ``model_key`` column when it holds several models, or a mapping of model name → such a table.
    metric
        Metric to compare.
    model_key
        Column naming the model (absent: one model, named ``"model"``).
    ax
        Axes to draw into.
    figsize
        Figure size (default 1.2 inches per section plus 2); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the axes unless the figure is shown. The last group, ``mean``, is
    the mean over sections of the per-section means (the leave-one-section-out summary).
    """
    if isinstance(table, Mapping):
        table = pd.concat(
            [_check_tidy(t, f"table[{m!r}]").assign(**{model_key: m}) for m, t in table.items()], ignore_index=True
        )
    df = _metric_rows(_check_tidy(table, "table"), metric, "table")
    if model_key not in df.columns:
        df = df.assign(**{model_key: "model"})
    df = df[np.isfinite(df["value"].to_numpy(float))]
    if df.empty:
        raise ValueError(f"metric: no finite {metric!r} value in table.")
    stats = df.groupby([model_key, "section"], sort=False)["value"].agg(["mean", "sem"]).reset_index()
    models = list(pd.unique(stats[model_key]))
    sections = sorted(pd.unique(stats["section"]).astype(str))
    fig, (a,) = _panel_axes(1, ax, 1, (2 + 1.2 * (len(sections) + 1), 4.0), figsize)
    width = 0.8 / len(models)
    x = np.arange(len(sections) + 1)
    for i, m in enumerate(models):
        st = stats[stats[model_key] == m]
        st = st.set_index(st["section"].astype(str)).reindex(sections)
        means = np.append(st["mean"].to_numpy(), np.nanmean(st["mean"].to_numpy()))
        sem = np.append(st["sem"].to_numpy(), np.nan)
        a.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=sem, capsize=2, label=str(m))
    a.set_xticks(x, [*sections, "mean"])
    a.axhline(0, color="0.3", linewidth=0.8)
    a.set_xlabel("held-out section")
    a.set_ylabel(f"mean per-gene {metric}")
    a.legend(frameon=False, fontsize="small", loc="best")
    a.set_title(f"cross-validation: {len(models)} model(s) × {len(sections)} section(s)")
    return _finish(fig, a, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)
