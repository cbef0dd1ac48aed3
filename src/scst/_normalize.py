"""scst's expression unit, defined once: ``log1p(normalize_total(counts, target_sum=1e4))``.

The library size is a spot's total count over **all** genes of the table (as :func:`scanpy.pp.normalize_total`
computes it), so the panel columns equal those of the usual scanpy normalisation of the whole table. Models
(training targets), the evaluation in :mod:`scst.tl`, the plots and the MuData builders all use these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["TARGET_SUM", "UNITS", "log_normalize_counts", "log_normalized", "panel_targets", "raw_counts"]

#: Counts per spot after scaling (scanpy's ``normalize_total(target_sum=1e4)``).
TARGET_SUM = 1e4
#: The unit of every predicted layer and of the models' targets.
UNITS = "log1p(normalize_total(counts, target_sum=1e4))"


def raw_counts(adata: Any, layer: str | None, where: str, hint: str = "") -> Any:
    """``X`` (or ``layers[layer]``) after checking it holds raw counts.

    ``where`` names the caller in errors; ``hint`` (a sentence) tells its user what to do instead.
    """
    X = adata.X if layer is None else adata.layers[layer]
    if X is None:
        raise ValueError(f"{where}: adata.X is empty; raw counts are needed.")
    vals = X.data if sparse.issparse(X) else np.asarray(X)
    # inf passes the integer test (round(inf) == inf) and would make a spot's library size infinite
    if vals.size and (vals.min() < 0 or not np.array_equal(vals, np.round(vals)) or not np.isfinite(vals).all()):
        src = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise ValueError(
            f"{where}: {src}: expected raw counts (non-negative integers); it holds negative, non-integer or "
            "infinite values." + (f" {hint}" if hint else "")
        )
    return X


def log_normalize_counts(counts: Any, library_size: np.ndarray) -> np.ndarray:
    """Dense float32 ``log1p(counts * 1e4 / library_size)`` per row; rows with library size 0 stay 0."""
    lib = np.asarray(library_size, dtype=np.float64).ravel()
    scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0)
    dense = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    return np.log1p(dense.astype(np.float64) * scale[:, None]).astype(np.float32)


def _gene_index(adata: Any, genes: Sequence[str] | np.ndarray | None) -> np.ndarray:
    if genes is None:
        return np.arange(adata.n_vars)
    idx = np.asarray(genes)
    if idx.dtype.kind not in "iu":
        idx = adata.var_names.get_indexer(idx.astype(str))
        if (idx < 0).any():
            raise KeyError(f"genes: {int((idx < 0).sum())} gene(s) not in var_names.")
    return idx


def log_normalized(
    adata: Any, genes: Sequence[str] | np.ndarray | None = None, layer: str | None = None, hint: str = ""
) -> np.ndarray:
    """``log1p(normalize_total(counts, 1e4))`` of raw counts for ``genes``: scst's expression target unit.

    Parameters
    ----------
    adata
        Raw counts in ``X`` or ``layer``.
    genes
        Gene names or integer positions (default all genes).
    layer
        Layer with raw counts instead of ``X``.
    hint
        Added to the error when the matrix does not hold raw counts (what the caller's user can do instead).

    Returns
    -------
    Dense float32 ``(n_obs, n_genes)``; the library size is the total over all genes, spots with no counts stay 0.
    """
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer: {layer!r} is not in adata.layers ({sorted(adata.layers)}).")
    X = raw_counts(adata, layer, "log_normalized", hint)
    lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    return log_normalize_counts(X[:, _gene_index(adata, genes)], lib)


def panel_targets(
    adata: Any, layer: str | None, genes: Sequence[str], rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training targets of ``rows``: log-normalised panel expression, raw panel counts and library sizes.

    Raises
    ------
    ValueError
        The counts hold NaN or inf.
    """
    X = (adata.X if layer is None else adata.layers[layer])[rows]
    lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    counts = X[:, adata.var_names.get_indexer(list(genes))]
    counts = (counts.toarray() if sparse.issparse(counts) else np.asarray(counts)).astype(np.float32)
    if not (np.isfinite(lib).all() and np.isfinite(counts).all()):
        bad = np.flatnonzero(~np.isfinite(lib))
        raise ValueError(
            f"Counts contain NaN/inf (e.g. in spots {adata.obs_names[rows[bad[:5]]].tolist()}); expected raw counts."
        )
    return log_normalize_counts(counts, lib), counts, lib
