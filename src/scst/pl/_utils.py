"""Shared plumbing of the plots: axes in, ``show`` / ``save`` / ``return_fig`` out, value look-ups with clear errors.

Conventions follow squidpy's ``pl`` (``save`` is a path; a relative one is written under
:attr:`scanpy.settings.figdir`; without a suffix ``.png`` is added) and scanpy's return values (the axes, the
figure with ``return_fig=True``, or ``None`` when the figure is shown).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._logging import logg
from .._utils import _atomic_file, _prediction_block


def _close_matches(key: str, options: Sequence[str], n: int = 3) -> str:
    near = difflib.get_close_matches(str(key), [str(o) for o in options], n=n, cutoff=0.6)
    if not near:  # case-insensitive prefix, e.g. "erbb" → ERBB2, ERBB3
        low = str(key).lower()
        near = [str(o) for o in options if str(o).lower().startswith(low)][:n]
    return f"; close matches: {near}" if near else ""


def _check_in(key: str, options: Sequence[str], arg: str, where: str) -> None:
    """KeyError naming ``arg``, ``where`` and the closest keys when ``key`` is not among ``options``."""
    if key not in options:
        opts = list(options)
        shown = f"; available: {opts[:10]}" if len(opts) <= 10 else ""
        raise KeyError(f"{arg}: {key!r} not found in {where}{_close_matches(key, opts)}{shown}.")


def _layer_values(adata: AnnData, genes: Sequence[str], layer: str | None) -> np.ndarray:
    """Dense ``(n_obs, len(genes))`` values: a layer (NaN where it holds no prediction), or the observed expression.

    The observed expression is ``log1p(normalize_total(X, 1e4))`` of the raw counts, the unit of
    :func:`scst.tl.predict_expression`.
    """
    from .._normalize import log_normalized

    for g in genes:
        _check_in(g, adata.var_names, "genes", "adata.var_names")
    idx = adata.var_names.get_indexer(list(genes))
    if layer is None:
        hint = "The observed panel is computed from raw counts; pass observed=False to draw the predictions only."
        return log_normalized(adata, idx, hint=hint).astype(np.float64)
    _check_in(layer, list(adata.layers.keys()), "layer", "adata.layers")
    return _prediction_block(adata, layer, idx)[0]  # NaN where the layer holds no prediction


def _category_colors(n: int) -> list[str]:
    """``n`` distinct colours from scanpy's default palettes (20, 28, then 102 colours), as scanpy picks them."""
    from scanpy.plotting import palettes

    pal = palettes.default_20 if n <= 20 else palettes.default_28 if n <= 28 else palettes.default_102
    return [pal[i % len(pal)] for i in range(n)]


def _panel_axes(
    n: int,
    ax: Axes | Sequence[Axes] | None,
    ncols: int,
    panel_size: tuple[float, float],
    figsize: tuple[float, float] | None,
    wspace: float | None = None,
) -> tuple[Figure, list[Axes]]:
    """``n`` axes: the ones passed (one Axes or a sequence of ``n``) or a new grid of ``ncols`` columns."""
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.asarray(ax, dtype=object).ravel())
        if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(f"ax: expected {n} matplotlib Axes (one per panel), got {len(axes)} object(s).")
        return axes[0].figure, axes
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=figsize or (panel_size[0] * ncols, panel_size[1] * nrows),
        squeeze=False,
        gridspec_kw={"wspace": wspace} if wspace is not None else None,
    )
    axes = list(grid.ravel())
    for a in axes[n:]:
        a.remove()
    return fig, axes[:n]


def _save_fig(fig: Figure, save: str | os.PathLike, dpi: int | None = None) -> Path:
    """Write ``fig`` to ``save`` (relative paths under ``scanpy.settings.figdir``; ``.png`` when no suffix)."""
    import scanpy as sc

    if not isinstance(save, str | os.PathLike):  # scanpy's save=True (a name made from the plot's) is not supported
        raise TypeError(
            f"save: expected the path of the file to write (str or os.PathLike; a relative one goes under "
            f"scanpy.settings.figdir), got {save!r}."
        )
    path = Path(save).expanduser()
    if not path.name:  # "" and "." have no file name
        raise ValueError(f"save: expected the path of a file to write, got {str(save)!r}.")
    if not path.suffix:
        path = path.with_suffix(".png")
    if not path.is_absolute():
        path = Path(sc.settings.figdir) / path
    fmt = path.suffix.lstrip(".")
    with _atomic_file(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi or "figure", bbox_inches="tight")
    logg.info(f"saved figure to {path}")
    return path


def _finish(
    fig: Figure,
    axes: Any,
    *,
    show: bool | None,
    save: str | os.PathLike | None,
    return_fig: bool,
    ax_given: bool,
    dpi: int | None = None,
) -> Figure | Any | None:
    """Save, show and return as scanpy does: the figure (``return_fig``), the axes (``show=False``) or None."""
    if save is not None and save is not False:  # save=False: no file, as in scanpy
        _save_fig(fig, save, dpi)
    if show is None:
        show = not (return_fig or ax_given)
    if return_fig:
        return fig
    if show:
        plt.show()
        if not ax_given:  # as scanpy's savefig_or_show: a shown figure of ours is closed (none pile up in scripts)
            plt.close(fig)
        return None
    return axes


#: The ``show`` / ``save`` / ``return_fig`` parameters every plot shares (scanpy's wording), filled into docstrings.
_SHOW_SAVE_DOC = """show
        Show the figure (default: unless ``return_fig`` or ``ax`` is given).
    save
        File to write; a relative path goes under :attr:`scanpy.settings.figdir`, ``.png`` when it has no suffix
        (``None`` or ``False``: no file).
    return_fig
        Return the figure."""


def _doc_show_save(fn: Any) -> Any:
    """Fill ``{show_save}`` in ``fn``'s docstring with the shared ``show``/``save``/``return_fig`` parameters."""
    fn.__doc__ = fn.__doc__.replace("{show_save}", _SHOW_SAVE_DOC)
    return fn
