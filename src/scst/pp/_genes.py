"""Gene panel selection for expression prediction (the HisToGene/Hist2ST/HGGEP rule)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from .._constants import SECTION_KEY
from .._logging import logg
from .._utils import _check_key, _get_table

__all__ = ["select_genes"]


def select_genes(
    adata: AnnData | Any,
    n_top: int = 1000,
    min_fraction: float = 0.5,
    *,
    library_key: str | None = SECTION_KEY,
    sections: str | Sequence[str] | None = None,
    layer: str | None = None,
    key_added: str = "highly_variable_scst",
    copy: bool = False,
) -> AnnData | None:
    """Select the gene panel used to train expression predictors from histology.

    The rule of HisToGene and Hist2ST, which HGGEP follows: in each section, normalise counts to 10,000 per
    spot and log1p them, take the ``n_top`` highly variable genes (``scanpy.pp.highly_variable_genes`` with
    ``flavor="seurat"``), take the union over sections, and keep the genes detected (count > 0) in at least
    ``min_fraction`` of all spots (pooled over sections). On her2st C2–C6 (14,382 common genes) this gives
    about 530 genes at 0.5, 1,400 at 0.25 and 2,500 at 0.1.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used (``copy=True`` then returns a copy of that table). Raw
        counts in ``X`` (or ``layer``): non-negative integers (any dtype); NaN, infinite, negative and non-integer
        values (normalised or log data) are refused. Sections in ``obs[library_key]``.
    n_top
        Highly variable genes per section.
    min_fraction
        Minimum fraction of spots in which a kept gene is detected.
    library_key
        Column of ``obs`` with the section; ``None`` treats all spots as one section.
    sections
        Choose the panel from these sections' spots only (values of ``obs[library_key]``), e.g. the training
        sections of a cross-validation fold, so that the held-out section never influences the panel. Default:
        all spots. The column is still written for every gene.
    layer
        Layer with raw counts instead of ``X``.
    key_added
        Boolean column written to ``var``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy (``copy=True``), with ``var[key_added]`` (bool, the panel), ``var["scst_detected_fraction"]``
    and ``var["scst_hvg_sections"]`` (in how many sections the gene was among the top ``n_top``); the rule's
    parameters in ``uns[key_added]``.
    """
    adata = _get_table(adata)  # a SpatialData's table (AttributeError on .layers before)
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction: expected a value in [0, 1], got {min_fraction}.")
    if n_top < 1:
        raise ValueError(f"n_top: expected a positive integer, got {n_top}.")
    if layer is not None:
        _check_key(adata.layers, layer, "adata.layers")
    X = adata.X if layer is None else adata.layers[layer]
    if adata.n_obs == 0:
        raise ValueError("adata: no spots (n_obs = 0); select_genes needs raw counts of at least one spot.")
    vals = X.data if sparse.issparse(X) else np.asarray(X)
    if not np.isfinite(vals).all():
        raise ValueError("select_genes expects raw counts in adata.X / `layer`; got NaN or infinite values.")
    if vals.size and vals.min() < 0:
        raise ValueError("select_genes expects raw counts (non-negative) in adata.X / `layer`; got negative values.")
    if vals.dtype.kind == "f" and vals.size:
        frac = vals[vals != np.floor(vals)]
        if frac.size:
            where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
            raise ValueError(
                f"select_genes expects raw counts (integers) in {where}; got {frac.size} non-integer value(s), e.g. "
                f"{float(frac[0]):.4g}. Normalised or log-transformed data would be normalised and logged again: pass "
                "the raw counts (e.g. `layer=` holding them)."
            )
    if library_key is not None:
        _check_key(adata.obs, library_key, "adata.obs")
        if adata.obs[library_key].isna().any():  # as str they would be one more section, "nan"
            raise ValueError(
                f"library_key: adata.obs[{library_key!r}] is missing for {int(adata.obs[library_key].isna().sum())} "
                "spots; every spot needs its section."
            )
        groups = adata.obs[library_key].astype(str).to_numpy()
    else:
        groups = np.zeros(adata.n_obs, dtype=str)
    if sections is not None:
        if library_key is None:
            raise ValueError("sections: needs `library_key` (the obs column holding the sections).")
        sections = [sections] if isinstance(sections, str) else [str(x) for x in sections]
        absent = sorted(set(sections) - set(groups))
        if absent or not sections:
            raise ValueError(
                f"sections: {absent or sections} not found in obs[{library_key!r}] ({sorted(set(groups))})."
            )
        use = np.isin(groups, sections)
        X, groups = X[use], groups[use]

    hvg_count = np.zeros(adata.n_vars, dtype=int)
    flat = []
    for g in pd.unique(groups):
        sub = AnnData(X=X[groups == g].astype(np.float32), var=pd.DataFrame(index=adata.var_names))
        sc.pp.normalize_total(sub, target_sum=1e4)
        sc.pp.log1p(sub)
        # scanpy's seurat flavour fails (IndexError) when no gene has a defined normalised dispersion: fewer than
        # 2 spots, no gene varying, or the varying genes tied within their mean bins. Such a section has no HVG.
        # (scanpy takes the log of zero dispersions, and of ones rounded below zero, and masks them itself.)
        with np.errstate(divide="ignore", invalid="ignore"):
            disp = sc.pp.highly_variable_genes(sub, flavor="seurat", inplace=False) if sub.n_obs >= 2 else None
            if disp is None or disp["dispersions_norm"].isna().all():
                flat.append(str(g))
                continue
            res = sc.pp.highly_variable_genes(sub, n_top_genes=min(n_top, adata.n_vars), flavor="seurat",
                                              inplace=False)  # fmt: skip
        hvg_count += res["highly_variable"].to_numpy().astype(int)
    if flat:
        warnings.warn(
            f"select_genes: no gene has a defined normalised dispersion in section(s) {flat[:5]} (fewer than 2 "
            "spots, a single gene, or no gene varying apart from ties); they contribute no highly variable gene.",
            UserWarning,
            stacklevel=2,
        )
    detected = np.asarray((X > 0).sum(axis=0)).ravel() / X.shape[0]
    keep = (hvg_count > 0) & (detected >= min_fraction)

    adata = adata.copy() if copy else adata
    adata.var[key_added] = keep
    adata.var["scst_detected_fraction"] = detected
    adata.var["scst_hvg_sections"] = hvg_count
    adata.uns[key_added] = {"params": {"n_top": n_top, "min_fraction": min_fraction, "library_key": library_key,
                                       "sections": sections, "flavor": "seurat", "target_sum": 1e4}}  # fmt: skip
    logg.info(
        f"select_genes: {int(keep.sum())} genes (union of top-{n_top} HVGs over {len(pd.unique(groups))} "
        f"section(s), detected in ≥ {min_fraction:.0%} of spots) → var[{key_added!r}]"
    )
    return adata if copy else None
