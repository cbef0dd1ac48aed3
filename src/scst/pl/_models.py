"""What a model did: its training curves, and TCGN's Grad-CAM maps over spot patches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .._utils import _get_table
from ._utils import _check_in, _doc_show_save, _finish, _panel_axes

__all__ = ["training_history", "attribution"]


@_doc_show_save
def training_history(
    model: Any,
    keys: str | Sequence[str] | None = None,
    *,
    log: bool = False,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Per-epoch metrics of a trained model (``model.history``: ``train_loss``, ``val_loss``, …) against the epoch.

    A dotted line marks the best epoch, whose weights training kept: that of the monitored validation metric, or of
    its training counterpart for a model trained without validation.

    Parameters
    ----------
    model
        A trained :mod:`scst.models` model (its ``history`` DataFrame is indexed by epoch).
    keys
        Columns of ``model.history`` to draw (default: those ending in ``loss``, else all).
    log
        Logarithmic y axis.
    ax
        Axes to draw into.
    figsize
        Figure size (default 5 × 3.5 inches); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the axes unless the figure is shown.
    """
    hist = getattr(model, "history", None)
    if hist is None or len(hist) == 0:
        raise ValueError(f"model: {type(model).__name__} has no training history; train it first (model.train()).")
    if keys is None:
        keys = [c for c in hist.columns if str(c).endswith("loss")] or list(hist.columns)
    keys = [keys] if isinstance(keys, str) else list(keys)
    for k in keys:
        _check_in(k, list(hist.columns), "keys", "model.history")
    fig, (a,) = _panel_axes(1, ax, 1, (5.0, 3.5), figsize)
    epochs = np.asarray(hist.index, dtype=float)
    for k in keys:
        y = hist[k].to_numpy(float)
        ok = np.isfinite(y)
        a.plot(epochs[ok], y[ok], marker="o", markersize=3, label=str(k))
    monitor = getattr(model, "_monitor", "val_loss")  # what checkpoints were chosen on (e.g. val_mse)
    if monitor not in hist.columns:  # trained without validation: on the training counterpart (BaseModel.train)
        monitor = "train_" + monitor.removeprefix("val_")
    vals = hist[monitor].astype(float) if monitor in hist.columns else None
    if vals is not None and "stage" in hist.columns:  # staged training (MultimodalST): the last stage's best is kept
        vals = vals[(hist["stage"] == hist["stage"].iloc[-1]).to_numpy()]
    if vals is not None and np.isfinite(vals.to_numpy()).any():
        # the best epoch as the checkpoints chose it: the largest value for a "max" metric (GCNG's val_accuracy)
        best = vals.idxmax() if getattr(model, "_monitor_mode", "min") == "max" else vals.idxmin()
        a.axvline(float(best), color="0.5", linestyle=":", linewidth=1, label=f"best {monitor} (epoch {best})")
    if log:
        a.set_yscale("log")
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_xlabel("epoch")
    a.set_ylabel("value")
    a.set_title(f"{type(model).__name__} training")
    a.legend(frameon=False, fontsize="small")
    return _finish(fig, a, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)


@_doc_show_save
def attribution(
    sdata: Any,
    model: Any,
    spots: Any,
    gene: str,
    *,
    table: str | None = None,
    alpha: float = 0.5,
    cmap: str = "inferno",
    ncols: int = 4,
    ax: Sequence[Axes] | Axes | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """Grad-CAM maps of a TCGN model's prediction of ``gene`` over the H&E patch of each spot.

    The maps come from :meth:`scst.models.TCGN.attribution` (one backward pass per section of the spots; values in
    [0, 1], 1 = the location that raises the prediction most) and are drawn over the patch the model reads.

    Parameters
    ----------
    sdata
        SpatialData with the images (the one the model was set up on, or a new slide prepared for prediction).
    model
        A model with an ``attribution(sdata, gene, spots, table=..., return_patches=True)`` method (TCGN).
    spots
        Spots: obs names, integer positions or a boolean mask over the table.
    gene
        A gene of the model's panel.
    table
        Table key (default: the model's).
    alpha
        Opacity of the map over the patch.
    cmap
        Colour map of the map.
    ncols
        Panels per row.
    ax
        Axes, one per spot.
    figsize
        Figure size (default 2.5 inches per panel); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the list of axes unless the figure is shown.
    """
    if not callable(getattr(model, "attribution", None)):
        raise TypeError(f"model: {type(model).__name__} has no attribution method (TCGN has).")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}.")
    maps, patches = model.attribution(sdata, gene, spots, table=table, return_patches=True)
    names = _spot_names(_get_table(sdata, table or getattr(model, "registry", {}).get("table")), spots)
    fig, axes = _panel_axes(len(maps), ax, ncols, (2.5, 2.5), figsize)
    for a, m, p, name in zip(axes, maps, patches, names):
        a.imshow(np.moveaxis(p, 0, -1))
        a.imshow(m, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        a.set_xticks([])
        a.set_yticks([])
        a.set_title(f"{name} · {gene}", fontsize="small")
    return _finish(fig, axes, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)


def _spot_names(adata: Any, spots: Any) -> list[str]:
    """Obs names of ``spots`` (names, positions or a boolean mask, as the model's attribution takes them)."""
    sel = np.atleast_1d(np.asarray(spots))
    return list(adata.obs_names[sel].astype(str)) if sel.dtype.kind in "biu" else [str(s) for s in sel]
