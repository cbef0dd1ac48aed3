"""How much of each gene's spot-to-spot variation is signal: binomial thinning of the counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scst._normalize import log_normalize_counts, raw_counts
from scst._utils import _colwise_pearson, _get_table, _is_constant

__all__ = ["gene_reliability"]


def thinning_reliability(counts: np.ndarray, n_draws: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half-depth reliability ``r`` and its Spearman–Brown step ``2r / (1 + r)`` per gene of a spots × genes matrix.

    Each draw splits every count at random into two halves (binomial, p = 1/2), log-normalises both like the
    expression targets (each half by its own library size) and correlates them gene by gene across spots; ``r`` is
    the mean over draws. A draw in which either half of a gene is constant (a sparse gene whose few molecules all
    fell on one side) counts 0 for it; a gene constant at full depth is NaN (it has no variation to explain).
    """
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    r = np.zeros(counts.shape[1])
    for _ in range(n_draws):
        half = rng.binomial(counts, 0.5)
        y1, y2 = (log_normalize_counts(c, c.sum(1)) for c in (half, counts - half))
        r += np.nan_to_num(_colwise_pearson(y1, y2), nan=0.0) / n_draws  # symmetric: either half constant → 0
    r[_is_constant(log_normalize_counts(counts, counts.sum(1)))] = np.nan
    return r, 2 * r / (1 + r)


def gene_reliability(
    adata: AnnData | Any,
    *,
    layer: str | None = None,
    library_key: str | None = "section",
    n_draws: int = 5,
    seed: int = 0,
    key_added: str = "reliability",
    copy: bool = False,
) -> AnnData | None:
    """Signal share of each gene's spot-to-spot variation, estimated from the counts alone (binomial thinning).

    A spot's log1p(normalize_total) expression is the gene's underlying level plus counting noise. Splitting each
    spot's molecules at random into two halves gives two independent draws of the same levels; their per-gene
    correlation across spots, ``r``, is the reliability at half depth, and ``ρ = 2r / (1 + r)`` (Spearman–Brown) at
    full depth. ``sqrt(ρ)`` is the highest correlation any prediction of the underlying level — from an image or
    anything else — can reach with the observed values, and the sd ratio of a calibrated one; ``sqrt(r)`` is a
    lower bound of it (log1p of low counts follows Spearman–Brown only roughly: docs/benchmarks/reliability.md
    checks both on planted counts). Use it to see which genes a histology model can be asked to predict at all.
    Each section is thinned as a dense int64 array (8 bytes × spots × genes of the largest section; subset the genes
    first for bin-level data such as Visium HD).

    Parameters
    ----------
    adata
        AnnData (or SpatialData: its ``"table"``) with raw counts (non-negative integers) in ``X`` or ``layer``.
    layer
        Layer with the counts instead of ``X``.
    library_key
        ``obs`` column with the section: each section's spots are thinned and correlated on their own, and the
        values are averaged over sections (weighted by spots); ``None``: all spots together.
    n_draws
        Random splits averaged per section.
    seed
        Seed of the splits.
    key_added
        ``var`` columns written: ``{key_added}`` (ρ), ``{key_added}_half`` (r) and ``{key_added}_ceiling``
        (``sqrt(max(ρ, 0))``); ``uns[key_added]`` holds the parameters and the per-section ρ (genes × sections).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    The AnnData with the new columns if ``copy``, else ``None``. Genes constant in a section are NaN there.
    """
    adata = _get_table(adata)
    if int(n_draws) < 1:
        raise ValueError(f"n_draws: expected a positive integer, got {n_draws!r}.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer: {layer!r} not in adata.layers (available: {list(adata.layers)}).")
    X = raw_counts(adata, layer, "gene_reliability", "Thinning splits molecules: pass the counts' layer.")
    if library_key is not None and library_key not in adata.obs:
        raise KeyError(f"library_key: {library_key!r} not in adata.obs; pass None to use all spots together.")
    if library_key is not None and adata.obs[library_key].isna().any():  # as str they would be a section "nan"
        n = int(adata.obs[library_key].isna().sum())
        raise ValueError(f"library_key: {n} spot(s) have no value in obs[{library_key!r}]; drop or label them.")
    labels = adata.obs[library_key].astype(str).to_numpy() if library_key is not None else np.full(adata.n_obs, "all")
    sections = list(dict.fromkeys(labels))
    half, rho, n_spots = [], [], []
    for s in sections:  # one section dense at a time
        rows = np.flatnonzero(labels == s)
        if len(rows) < 3:
            raise ValueError(f"library_key: section {s!r} has {len(rows)} spots; at least 3 are needed.")
        block = X[rows]
        r, p = thinning_reliability(block.toarray() if sp.issparse(block) else block, n_draws=int(n_draws), seed=seed)
        half.append(r)
        rho.append(p)
        n_spots.append(len(rows))
    w = np.asarray(n_spots, dtype=float)[:, None]

    def spot_weighted_mean(per_section: list[np.ndarray]) -> np.ndarray:
        m = np.stack(per_section)
        ok = np.isfinite(m)
        total = (ok * w).sum(0)
        return np.where(total > 0, (np.where(ok, m, 0) * w).sum(0) / np.where(total > 0, total, 1), np.nan)

    adata = adata.copy() if copy else adata
    rho_mean = spot_weighted_mean(rho)
    adata.var[key_added] = rho_mean
    adata.var[f"{key_added}_half"] = spot_weighted_mean(half)
    adata.var[f"{key_added}_ceiling"] = np.sqrt(np.clip(rho_mean, 0, None))
    adata.uns[key_added] = {
        "params": {"layer": layer, "library_key": library_key, "n_draws": int(n_draws), "seed": seed},
        "per_section": pd.DataFrame(np.stack(rho, 1), index=adata.var_names, columns=sections),
    }
    return adata if copy else None
