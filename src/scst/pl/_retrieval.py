"""Histology ↔ RNA retrieval: accuracy of the retrieved sample's group and of the exact sample, against chance."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._utils import _labels
from ._utils import _category_colors, _check_in, _doc_show_save, _finish, _panel_axes

__all__ = ["retrieval"]


def _modality_names(mdata: Any, res: Any) -> list[str]:
    """RNA and image modality names of a retrieval result.

    ``res["modalities"]`` (written by scst.tl.retrieve), else the MultimodalST setup of ``mdata``, else
    ``["rna", "image"]``.
    """
    names = res.get("modalities") if hasattr(res, "get") else None
    if names is not None and len(names) == 2:
        return [str(n) for n in names]
    from ..models import MultimodalST

    reg = MultimodalST._read_registry(mdata) or {}
    if "rna" in reg and "image" in reg:
        return [str(reg["rna"]), str(reg["image"])]
    return ["rna", "image"]


@_doc_show_save
def retrieval(
    mdata: Any,
    key: str = "scst_retrieval",
    *,
    basis: str | None = None,
    color: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Bars of retrieval accuracy next to chance: top-1 group accuracy per group key, exact-sample top-1 / top-k.

    Parameters
    ----------
    mdata
        MuData (or any object with ``.uns``) holding ``uns[key]`` from :func:`scst.tl.retrieve`: ``accuracy`` and
        ``chance`` (dicts over group keys), ``exact_top1``, ``exact_topk``, ``chance_exact_top1``,
        ``chance_exact_topk``, ``k``, ``query``, ``n_query``.
    key
        ``uns`` key.
    basis
        ``obsm`` key of a joint 2-D embedding of both modalities, e.g. ``"X_multimodal_umap"`` from
        ``scst.tl.embed(mdata, model, umap=True)``: adds a panel of both modalities' points coloured by modality
        (patches and RNA samples that mix are what alignment aims for). The modalities are the RNA and image ones
        named in ``uns[key]["modalities"]`` (written by :func:`scst.tl.retrieve`), else in the
        :class:`~scst.models.MultimodalST` setup of ``mdata``, else ``"rna"`` and ``"image"``.
    color
        With ``basis``: an ``obs`` column present in both modalities (e.g. ``"label"``) for one more panel; labels
        that are equal numbers are one group (``2`` and ``2.0``); points without a label are drawn in light grey
        ("NA" in the legend), as scanpy does.
    ax
        Axes to draw into, one per panel.
    figsize
        Figure size (default 1.3 inches per bar group + 2); ignored with ``ax``.
    dpi
        Resolution of the saved file.
    {show_save}

    Returns
    -------
    The figure with ``return_fig=True``; else the axes unless the figure is shown. Bars: observed (left) and chance
    (right, hatched) per measure, labelled with the ratio observed / chance.
    """
    _check_in(key, list(mdata.uns.keys()), "key", "mdata.uns")
    res = mdata.uns[key]
    for f in ("accuracy", "chance", "exact_top1", "exact_topk", "chance_exact_top1", "chance_exact_topk", "k"):
        _check_in(f, list(res.keys()), "key", f"uns[{key!r}] (the dict of scst.tl.retrieve)")
    k = int(res["k"])
    labels = [f"{g} (top-1)" for g in res["accuracy"]] + ["exact top-1", f"exact top-{k}"]
    obs = [float(res["accuracy"][g]) for g in res["accuracy"]] + [float(res["exact_top1"]), float(res["exact_topk"])]
    chance = [float(res["chance"][g]) for g in res["accuracy"]] + [
        float(res["chance_exact_top1"]),
        float(res["chance_exact_topk"]),
    ]
    mods = []
    if basis is not None:
        names = _modality_names(mdata, res)
        mods = [m for m in names if m in getattr(mdata, "mod", {})]
        if len(mods) != 2:
            has = list(getattr(mdata, "mod", {}))
            raise ValueError(f"basis: needs a MuData with the RNA and image modalities {names}; has {has}.")
        for m in mods:
            _check_in(basis, list(mdata[m].obsm.keys()), "basis", f"mdata[{m!r}].obsm")
            if color is not None:
                _check_in(color, list(mdata[m].obs.columns), "color", f"mdata[{m!r}].obs")
    elif color is not None:
        raise ValueError("color: only used with `basis` (the embedding panel).")
    n_panels = 1 + (basis is not None) + (color is not None)
    fig, axes = _panel_axes(n_panels, ax, n_panels, (2 + 1.3 * len(labels), 4.0), figsize)
    a = axes[0]
    x = np.arange(len(labels))
    a.bar(x - 0.2, obs, 0.4, label="retrieved", color="tab:blue")
    a.bar(x + 0.2, chance, 0.4, label="chance", color="white", edgecolor="0.4", hatch="//")
    for xi, o, c in zip(x, obs, chance):
        if np.isfinite(o) and c > 0:
            a.text(xi - 0.2, o, f"{o / c:.2g}×", ha="center", va="bottom", fontsize="small")
    a.set_xticks(x, labels, rotation=20, ha="right")
    a.set_ylabel("fraction of queries")
    a.set_title(f"{res.get('query', '?')} → retrieval ({res.get('n_query', '?')} queries)")
    a.legend(frameon=False, fontsize="small")
    if basis is not None:
        e = axes[1]
        for m, marker in zip(mods, ("o", "^")):
            xy = np.asarray(mdata[m].obsm[basis])[:, :2]
            e.scatter(xy[:, 0], xy[:, 1], s=8, marker=marker, alpha=0.7, label=m)
        e.set(title=f"{basis}: modality", xticks=[], yticks=[])
        e.legend(frameon=False, fontsize="small", markerscale=2)
        if color is not None:
            g = axes[2]
            # equal numbers alike: 2 of an int column and 2.0 of a float one (ints with a missing value) are one group
            cats = sorted({v for m in mods for v in _labels(mdata[m].obs[color]).dropna()})
            colors = _category_colors(len(cats))
            for m, marker in zip(mods, ("o", "^")):
                xy = np.asarray(mdata[m].obsm[basis])[:, :2]
                lab = _labels(mdata[m].obs[color]).to_numpy()
                for i, c in enumerate(cats):
                    sel = lab == c
                    g.scatter(xy[sel, 0], xy[sel, 1], s=8, marker=marker, color=colors[i], alpha=0.7,
                              label=c if m == mods[0] else None)  # fmt: skip
            # unlabelled points in grey under the others, "NA" last in the legend (scanpy's na_color / na_in_legend)
            na_label = "NA"
            for m, marker in zip(mods, ("o", "^")):
                xy = np.asarray(mdata[m].obsm[basis])[:, :2]
                sel = _labels(mdata[m].obs[color]).isna().to_numpy()
                if sel.any():
                    g.scatter(xy[sel, 0], xy[sel, 1], s=8, marker=marker, color="lightgray", alpha=0.7, zorder=0,
                              label=na_label)  # fmt: skip
                    na_label = None
            g.set(title=f"{basis}: {color} (o {mods[0]}, ^ {mods[1]})", xticks=[], yticks=[])
            g.legend(frameon=False, fontsize="x-small", markerscale=2)
    out = a if n_panels == 1 else axes
    return _finish(fig, out, show=show, save=save, return_fig=return_fig, ax_given=ax is not None, dpi=dpi)
