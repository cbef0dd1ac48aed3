"""Ligand–receptor pair scores, their permutation nulls (positions shuffled within sections) and rank aggregation."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import beta, false_discovery_control

__all__ = [
    "lr_scores",
    "BASELINES",
    "section_permutations",
    "permutation_pvalues",
    "bh_fdr",
    "robust_rank_aggregate",
    "score_function",
    "spot_inclusive_weights",
]

#: Unsupervised scores, all computed on the same normalised expression as GCNG.
BASELINES = ("pearson", "spatial_pearson", "expression")
#: liana's local bivariate metrics offered as ``method="bivariate"`` (``local_name``).
LIANA_LOCAL = ("cosine", "pearson", "spearman", "jaccard", "product", "norm_product", "morans")
#: Weight matrices of fewer cells are densified for liana's local metrics (as liana does); larger ones stay sparse.
DENSE_WEIGHTS_BELOW = 10_000


#: liana local metrics that normalise over all spots (ranks, maxima, z-scores, the weights' total): per section.
POOLED_LOCAL = ("spearman", "norm_product", "morans")


def _local_weights(w: sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    """Weights for liana's local metrics: an ``n × n`` array only when small, else sparse (the same values)."""
    return w.toarray() if w.shape[0] < DENSE_WEIGHTS_BELOW else w


def _section_local(
    fun: Callable[[np.ndarray, np.ndarray, Any], np.ndarray],
    w: sp.csr_matrix,
    groups: Sequence[Any] | None = None,
    local_name: str = "cosine",
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``f(x, y) -> (n_spots, n_pairs)``: liana's local metric ``fun`` on the weights ``w``.

    The metrics of :data:`POOLED_LOCAL` rank, scale or standardise over all spots they are given: with ``groups``
    (one section label per spot) and no weight across sections they run on each section alone, so a section's
    values do not change with the other sections of the object. The other metrics only see a spot's weighted
    neighbourhood: one call.
    """
    blocks = None
    if groups is not None and local_name in POOLED_LOCAL:
        groups = np.asarray(groups)
        a = sp.coo_matrix(w)
        if not (groups[a.row] != groups[a.col])[a.data != 0].any():  # weights across sections: one shared frame
            blocks = [np.flatnonzero(groups == g) for g in pd.unique(groups)]
    if blocks is None or len(blocks) < 2:
        wl = _local_weights(w)
        return lambda x, y: np.asarray(fun(x, y, wl))
    w = sp.csr_matrix(w)
    parts = [(idx, _local_weights(w[idx][:, idx])) for idx in blocks]

    def local(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = None
        for idx, wl in parts:
            v = np.asarray(fun(x[idx], y[idx], wl))
            if out is None:
                out = np.empty((x.shape[0], *v.shape[1:]), dtype=v.dtype)
            out[idx] = v
        return out

    return local


def _zscore(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    return np.divide(x - mu, sd, out=np.zeros_like(x, dtype=np.float64), where=sd > 0)


def _zscore_within(x: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """:func:`_zscore` of the rows of each group on their own (``groups`` None: all rows together)."""
    if groups is None:
        return _zscore(x)
    out = np.empty_like(x, dtype=np.float64)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = _zscore(x[rows])
    return out


def _edges(adjacency: Any) -> tuple[np.ndarray, np.ndarray]:
    a = sp.coo_matrix(adjacency)
    keep = (a.data != 0) & (a.row != a.col)
    return a.row[keep], a.col[keep]


def lr_scores(
    lig: np.ndarray,
    rec: np.ndarray,
    method: Literal["pearson", "spatial_pearson", "expression"],
    adjacency: Any = None,
) -> np.ndarray:
    """Unsupervised ligand–receptor scores for column-paired expression matrices.

    Parameters
    ----------
    lig, rec
        ``(n_cells, n_pairs)`` expression of each pair's ligand and receptor (column ``k`` is pair ``k``).
    method
        - ``"pearson"``: Pearson correlation of ligand and receptor *within* cells (single-cell PC);
        - ``"spatial_pearson"``: Pearson correlation over the directed edges ``i → j`` of the cell graph of the
          ligand in cell ``i`` and the receptor in its neighbour ``j`` (spatial PC);
        - ``"expression"``: ``mean(L) · mean(R)``, the expression-level control (no co-expression, no space).
    adjacency
        ``(n_cells, n_cells)`` cell graph (non-zero = neighbours; self-loops ignored), for ``"spatial_pearson"``.

    Returns
    -------
    ``(n_pairs,)`` scores; a constant gene gives correlation 0.
    """
    lig = np.asarray(lig, dtype=np.float64)
    rec = np.asarray(rec, dtype=np.float64)
    if lig.shape != rec.shape:
        raise ValueError(f"lig and rec must have the same shape, got {lig.shape} and {rec.shape}.")
    if method == "expression":
        return lig.mean(axis=0) * rec.mean(axis=0)
    if method == "pearson":
        return (_zscore(lig) * _zscore(rec)).mean(axis=0)
    if method == "spatial_pearson":
        if adjacency is None:
            raise ValueError("method='spatial_pearson' needs the cell graph (`adjacency`).")
        src, dst = _edges(adjacency)
        if len(src) == 0:
            warnings.warn("The cell graph has no edges; spatial Pearson is 0 for every pair.", stacklevel=2)
            return np.zeros(lig.shape[1])
        return (_zscore(lig[src]) * _zscore(rec[dst])).mean(axis=0)
    raise ValueError(f"method: expected one of {list(BASELINES)}, got {method!r}.")


def spot_inclusive_weights(adjacency: Any) -> sp.csr_matrix:
    """Binarised cell graph with every spot its own neighbour (``A + I``): spot data hold signal *within* spots."""
    a = sp.csr_matrix(adjacency, dtype=np.float32)
    a = sp.csr_matrix((a != 0).astype(np.float32))
    a.setdiag(1.0)
    a.eliminate_zeros()
    return a


def _liana_local(local_name: str) -> Callable[[np.ndarray, np.ndarray, Any], np.ndarray]:
    try:
        from liana.method.sp._bivariate._local_functions import LocalFunction
    except ImportError as err:  # pragma: no cover - liana is a declared dependency
        raise ImportError("method='bivariate' uses liana's local metrics: `pip install liana`.") from err
    if local_name not in LIANA_LOCAL or local_name not in LocalFunction.instances:
        raise ValueError(f"local_name: expected one of {list(LIANA_LOCAL)}, got {local_name!r}.")
    fun = LocalFunction.instances[local_name]
    if local_name == "morans":  # liana rescales inputs and weights for Moran's R before its formula
        return lambda x, y, w: fun(x_mat=sp.csr_matrix(x), y_mat=sp.csr_matrix(y), weight=w, n_perms=None, seed=0,
                                   mask_negatives=False, verbose=False)[0]  # fmt: skip
    return lambda x, y, w: np.asarray(fun.fun(x, y, w))


def score_function(
    method: str, adjacency: Any = None, *, local_name: str = "cosine", weights: Any = None, groups: Any = None
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]:
    """A pair-score function ``f(lig, rec) -> (n_pairs,)`` and the default null of its permutation test.

    Nulls: ``"positions"`` (rows of ligand *and* receptor permuted together within sections: the spots' positions
    shuffled, within-spot co-expression kept — for spatial Pearson, whose neighbour edges exclude the spot),
    ``"ligand"`` (only the ligand's rows permuted: the ligand–receptor association broken, each gene's own spatial
    pattern kept — single-cell Pearson, and liana's bivariate metrics, which on the spot-inclusive graph mostly
    measure co-expression in and around a spot) or ``"none"`` (the expression control changes under no
    permutation). GCNG is handled by the tool (its models score the pairs). ``weights``: the bivariate metric's
    proximity weights (default the spot-inclusive graph ``A + I`` of ``adjacency``). ``groups``: the section of
    each spot; the bivariate metrics that normalise over the spots (:data:`POOLED_LOCAL`: ``spearman``,
    ``norm_product``, ``morans``) then run per section (unless weights join sections), so one section's local
    values do not depend on the other sections, and single-cell / spatial Pearson standardise each gene within each
    section (pooled, sections differing in both genes' levels scored as correlated).
    """
    if method == "expression":
        return (lambda lig, rec: lr_scores(lig, rec, "expression")), "none"
    # Pearson-type scores standardise within each section: pooled, a section's higher level of both genes read as
    # a strong correlation (the permutation test, within sections, stayed calibrated, but not the score's rank)
    codes = None if groups is None else pd.factorize(np.asarray(groups))[0]
    if method == "pearson":

        def pearson(lig: np.ndarray, rec: np.ndarray) -> np.ndarray:
            lig, rec = np.asarray(lig, np.float64), np.asarray(rec, np.float64)
            return (_zscore_within(lig, codes) * _zscore_within(rec, codes)).mean(axis=0)

        return pearson, "ligand"
    if method == "spatial_pearson":
        src, dst = _edges(adjacency)
        if len(src) == 0:
            raise ValueError("method='spatial_pearson': the cell graph has no edges.")
        edge_groups = None if codes is None else codes[src]  # the section of an edge's sender

        def spatial(lig: np.ndarray, rec: np.ndarray) -> np.ndarray:
            zl = _zscore_within(np.asarray(lig, np.float64)[src], edge_groups)
            zr = _zscore_within(np.asarray(rec, np.float64)[dst], edge_groups)
            return (zl * zr).mean(axis=0)

        return spatial, "positions"
    if method == "bivariate":
        fun = _liana_local(local_name)
        w = spot_inclusive_weights(adjacency) if weights is None else sp.csr_matrix(weights, dtype=np.float32)
        local_fn = _section_local(fun, w, groups, local_name)

        def bivariate(lig: np.ndarray, rec: np.ndarray) -> np.ndarray:
            local = local_fn(np.asarray(lig, np.float32), np.asarray(rec, np.float32))
            return np.asarray(local, dtype=np.float64).mean(axis=0)

        return bivariate, "ligand"
    raise ValueError(f"method: expected one of {[*BASELINES, 'bivariate']}, got {method!r}.")


def section_permutations(groups: Sequence[Any] | None, n: int, n_perms: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_perms`` permutations of ``n`` cells, each keeping every cell within its group (section / field of view).

    ``groups``: one label per cell (array or list), or None (one group).
    """
    rng = np.random.default_rng(seed)
    if groups is not None:  # a list compared with == to a label gave no block: every "permutation" was the identity
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups: expected one label per cell ({n}), got shape {groups.shape}.")
        missing = int(pd.isna(groups).sum())
        if missing:  # NaN != NaN: those cells formed no block and were never permuted
            raise ValueError(
                f"groups: {missing} of {n} cells have no group (NaN); give every cell a group (e.g. its section), or "
                "pass `groups=None` to permute all cells together."
            )
    blocks = [np.arange(n)] if groups is None else [np.flatnonzero(groups == g) for g in pd.unique(groups)]
    for _ in range(n_perms):
        perm = np.arange(n)
        for idx in blocks:
            perm[idx] = idx[rng.permutation(len(idx))]
        yield perm


def tie_tolerance(observed: np.ndarray) -> np.ndarray:
    """How far below ``observed`` a permuted score still ties with it.

    The scores are float32: a permutation that gives the same score in exact arithmetic differs by ~1e-7 relative,
    and a tie must never count as a win.
    """
    return 1e-6 * np.maximum(1.0, np.abs(np.asarray(observed, dtype=np.float64)))


def permutation_pvalues(
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    lig: np.ndarray,
    rec: np.ndarray,
    observed: np.ndarray,
    *,
    null: Literal["positions", "ligand", "none"],
    groups: Sequence[Any] | None,
    n_perms: int,
    seed: int = 0,
) -> np.ndarray:
    """One-sided permutation p-values ``(1 + #{null ≥ observed}) / (1 + n_perms)`` (higher score = interacting).

    The null shuffles cells within ``groups`` (``null="positions"``: ligand and receptor rows together;
    ``"ligand"``: the ligand's rows only); ``"none"`` gives NaN. Under exchangeable spots the p-values are uniform on
    ``{1, …, n_perms + 1} / (n_perms + 1)``.
    """
    observed = np.asarray(observed, dtype=np.float64)
    if null == "none" or n_perms <= 0:
        return np.full(observed.shape, np.nan)
    exceed = np.zeros(observed.shape, dtype=np.int64)
    tol = tie_tolerance(observed)
    for perm in section_permutations(groups, lig.shape[0], n_perms, seed):
        s = score_fn(lig[perm], rec[perm]) if null == "positions" else score_fn(lig[perm], rec)
        exceed += np.asarray(s) >= observed - tol
    return (1.0 + exceed) / (1.0 + n_perms)


def bh_fdr(pvals: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values; NaN stays NaN."""
    p = np.asarray(pvals, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def robust_rank_aggregate(scores: np.ndarray, ascending: Sequence[bool]) -> np.ndarray:
    """LIANA's rank aggregate: RRA (Kolde et al. 2012) of per-method ranks, lower = better.

    Each column is ranked (``ascending[j]``: lower is better, e.g. p-values), ranks are divided by their maximum,
    and each row gets ``min_k BetaCDF(r_(k); k, m - k + 1) · m`` (capped at 1) over its ``m`` sorted normalised
    ranks. With one method this is the normalised rank ``rank / max(rank)`` (liana's rule; ties share their average
    rank, so it equals ``rank / n`` only when no scores tie at the bottom). Columns all NaN are left out; a NaN inside
    a column ranks last.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s.reshape(len(s), -1)
    cols = [j for j in range(s.shape[1]) if not np.isnan(s[:, j]).all()]
    if not cols:
        return np.full(len(s), np.nan)
    ranks = []
    for j in cols:
        v = s[:, j] if ascending[j] else -s[:, j]
        v = np.where(np.isnan(v), np.inf, v)
        r = pd.Series(v).rank(method="average").to_numpy()
        ranks.append(r / r.max())
    r = np.sort(np.column_stack(ranks), axis=1)
    m = r.shape[1]
    k = np.arange(1, m + 1)
    rho = beta.cdf(r, k, m - k + 1).min(axis=1) * m
    return np.minimum(rho, 1.0)
