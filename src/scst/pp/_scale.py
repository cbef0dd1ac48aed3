"""Per-section standardisation of a spot embedding (stain, scanner and batch shifts between slides)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

from scst._constants import UNS_EMBED_KEY
from scst._utils import _check_key, _get_table, _positive_int

__all__ = ["scale_by_section"]


def scale_by_section(
    adata: AnnData | Any,
    use_rep: str,
    *,
    library_key: str = "section",
    key_added: str | None = None,
    min_spots: int = 20,
    copy: bool = False,
) -> AnnData | None:
    """Standardise an embedding within each section: every feature to mean 0 and sd 1 over the section's spots.

    Slides differ in staining, scanner and section thickness as a whole; per-slide standardisation removes such
    slide-wide shifts from patch features before a model sees them (a feature constant within a section becomes
    0). It uses each section's own spots and no expression, so a new slide is prepared the same way before
    prediction: call this on its table, then ``scst.tl.predict_expression``. What it costs: differences *between*
    sections in the features' mean or spread are gone — within-section patterns (what per-gene PCC scores) stay.
    Measured in docs/benchmarks/shift.md (stain and resolution shifts of held-out sections).

    Each section is scaled by :func:`scanpy.pp.scale` (sd with ``ddof=1``); a feature constant within a section
    becomes exactly 0 there, whatever its value.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used (``copy=True`` then returns a copy of that table).
    use_rep
        Key of ``adata.obsm`` with the ``(n_obs, d)`` embedding, e.g. ``"X_handcrafted"``.
    library_key
        Column of ``adata.obs`` with the section of each spot.
    key_added
        Key of ``adata.obsm`` written; default ``f"{use_rep}_scaled"``. ``use_rep`` itself overwrites the input.
    min_spots
        Sections with fewer spots get a warning: their mean and sd are too noisy to standardise with.
    copy
        Return a modified copy instead of editing ``adata`` in place.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes ``.obsm[key_added]`` (float32) and
    ``.uns[key_added]["params"]``; when ``use_rep`` was made by :func:`scst.tl.embed_patches`, its recipe in
    ``.uns["scst_embed"]`` is copied to ``key_added`` with ``"scale_by_section"`` added, so a model trained on the
    scaled embedding gets it recomputed, scaled the same way, by :func:`scst.tl.predict_expression` on a slide
    that lacks it.

    Examples
    --------
    >>> scst.tl.embed_patches(sdata, "handcrafted", size_um=(80, 160, 320), key_added="X_hc_ms")
    >>> scst.pp.scale_by_section(sdata.tables["table"], "X_hc_ms")  # → obsm["X_hc_ms_scaled"]
    """
    data = _get_table(adata)
    if copy:
        data = data.copy()
    _check_key(data.obsm, use_rep, "adata.obsm (argument `use_rep`)")
    _check_key(data.obs, library_key, "adata.obs (argument `library_key`)")
    x = data.obsm[use_rep]
    x = x.to_numpy() if isinstance(x, pd.DataFrame) else np.asarray(x)
    if x.ndim != 2 or x.shape[0] != data.n_obs:
        raise ValueError(f"adata.obsm[{use_rep!r}] (argument `use_rep`): expected shape (n_obs, d), got {x.shape}.")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"adata.obsm[{use_rep!r}] (argument `use_rep`): expected finite numbers (no NaN/inf).")
    _positive_int("min_spots", min_spots, minimum=2)
    sections = data.obs[library_key]
    if sections.isna().any():
        raise ValueError(f"adata.obs[{library_key!r}] (argument `library_key`): {int(sections.isna().sum())} NaN(s).")
    codes, names = pd.factorize(sections.astype(str), sort=True)
    counts = np.bincount(codes, minlength=len(names))
    small = [f"{n} ({c})" for n, c in zip(names, counts) if c < min_spots]
    if small:
        warnings.warn(
            f"scale_by_section: section(s) {small} have fewer than min_spots={min_spots} spots; their features are "
            "scaled by a noisy mean and sd.",
            UserWarning,
            stacklevel=2,
        )
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(len(names)):
        idx = np.flatnonzero(codes == c)
        xs = x[idx].astype(np.float64)
        # scanpy's variance (mean of squares minus squared mean) is rounding noise, even negative, for a feature
        # constant within the section: its "scaled" values came out NaN or noise (and numpy warned about the square
        # root of a negative number, a warning that concerns nothing the user passed). Constant features are 0.
        with np.errstate(invalid="ignore"):
            scaled = sc.pp.scale(xs, copy=True) if idx.size > 1 else np.zeros_like(xs)
        scaled[:, (xs == xs[:1]).all(0)] = 0.0
        out[idx] = scaled
    key = key_added or f"{use_rep}_scaled"
    data.obsm[key] = out
    data.uns[key] = {"params": {"use_rep": use_rep, "library_key": library_key, "n_sections": int(len(names))}}
    # The recipe of an embed_patches embedding travels with the scaling, so predict_expression can remake both.
    store = dict(data.uns.get(UNS_EMBED_KEY, {}))
    if use_rep in store:
        store[key] = {**dict(store[use_rep]), "scale_by_section": library_key}
    else:
        store.pop(key, None)
    data.uns[UNS_EMBED_KEY] = store
    return data if copy else None
