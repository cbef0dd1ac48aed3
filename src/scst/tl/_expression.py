"""Evaluate predicted spot expression against measured counts, and cluster (predicted) expression into domains."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._constants import SECTION_KEY
from .._logging import logg
from .._normalize import log_normalized
from .._utils import _check_key, _colwise_pearson, _get_table, _is_constant, _prediction_block

__all__ = ["evaluate_expression", "spatial_domains", "domain_ari"]

_METRICS = ("pearson", "spearman", "mse", "mae")


def _resolve_genes(adata: AnnData, genes: Any, arg: str) -> np.ndarray | None:
    """Integer gene positions from None / a boolean var column name / names / a boolean mask; None = all."""
    if genes is None:
        return None
    if isinstance(genes, str):
        if genes in adata.var.columns:
            col = adata.var[genes]
            if col.dtype != bool:
                raise ValueError(f"{arg}: var[{genes!r}] must be boolean to select genes, got dtype {col.dtype}.")
            idx = np.flatnonzero(col.to_numpy())
            if idx.size == 0:
                raise ValueError(f"{arg}: var[{genes!r}] selects no gene.")
            return idx
        genes = [genes]
    arr = np.asarray(genes)
    if arr.dtype == bool:
        if arr.shape != (adata.n_vars,):
            raise ValueError(f"{arg}: boolean mask of shape {arr.shape}, expected ({adata.n_vars},).")
        return np.flatnonzero(arr)
    idx = adata.var_names.get_indexer(arr.astype(str))
    if (idx < 0).any():
        missing = arr[idx < 0][:5].tolist()
        raise KeyError(f"{arg}: {int((idx < 0).sum())} gene(s) not in var_names, e.g. {missing}.")
    if len(np.unique(idx)) != len(idx):
        raise ValueError(f"{arg}: duplicate genes.")
    return idx


def _dense(X: Any, cols: np.ndarray | None = None) -> np.ndarray:
    if cols is not None:
        X = X[:, cols]
    return (X.toarray() if sparse.issparse(X) else np.asarray(X)).astype(np.float64)


def _groups(adata: AnnData, by: str | None, rows: np.ndarray | None = None) -> np.ndarray:
    """Group of each spot as a string; missing values are an error on ``rows`` (default all spots)."""
    if by is None:
        return np.full(adata.n_obs, "all", dtype=object)
    _check_key(adata.obs, by, "adata.obs")
    g = adata.obs[by]
    missing = g.isna().to_numpy()
    if (missing if rows is None else missing & rows).any():
        raise ValueError(f"by: obs[{by!r}] has missing values.")
    return g.astype(str).to_numpy()


# ----------------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------------
def _colwise_spearman(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    r = _colwise_pearson(rankdata(pred, axis=0), rankdata(truth, axis=0))
    # Ranks of a constant column are constant too, so the NaN/0 conventions carry over; re-assert on the values.
    r[_is_constant(pred)] = 0.0
    r[_is_constant(truth)] = np.nan
    return r


def _metric(name: str, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    if len(pred) < 2 and name in ("pearson", "spearman"):
        return np.full(pred.shape[1], np.nan)
    if name == "pearson":
        return _colwise_pearson(pred, truth)
    if name == "spearman":
        return _colwise_spearman(pred, truth)
    if name == "mse":
        return ((pred - truth) ** 2).mean(0)
    return np.abs(pred - truth).mean(0)  # mae


def evaluate_expression(
    adata: AnnData | Any,
    layer: str = "predicted",
    *,
    truth_layer: str | None = None,
    genes: str | Sequence[str] | None = None,
    by: str | None = SECTION_KEY,
    metrics: Sequence[Literal["pearson", "spearman", "mse", "mae"]] = ("pearson", "spearman", "mse"),
    key_added: str = "scst_eval",
    copy: bool = False,
) -> AnnData | None:
    """Score predicted expression against the measured one, per gene and section.

    The protocol of ST-Net, HisToGene, Hist2ST and HGGEP: for every gene, the Pearson correlation between
    predicted and measured expression across the spots of one held-out section, then summarised over genes.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used (``copy=True`` then returns a copy of that table), with
        predictions in ``layers[layer]`` (target unit: ``log1p(normalize_total 1e4)``) and raw counts in ``X`` (or
        the truth in ``layers[truth_layer]``).
    layer
        Layer with the predictions. Genes without any finite prediction are skipped when ``genes`` is None;
        spots whose prediction is NaN for every evaluated gene (not predicted) are left out and counted.
    truth_layer
        Layer with the measured expression in the target unit. Default: ``log1p(normalize_total(X, 1e4))``
        computed on the fly from raw counts in ``X`` (library size over all genes of ``X``).
    genes
        Genes to evaluate: names, or the name of a boolean ``var`` column (e.g. ``"highly_variable_scst"``).
    by
        ``obs`` column whose groups are scored separately (default ``"section"``, or e.g. the domains of
        :func:`spatial_domains`); None scores all spots as one group named ``"all"``. It may be missing only on
        spots that are left out (not predicted).
    metrics
        Any of ``"pearson"``, ``"spearman"`` (rank correlation), ``"mse"``, ``"mae"`` (a list, or one name).
    key_added
        Keys to write (see Returns).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or a copy with ``copy=True``); writes

    ``uns[key_added]``
        Long :class:`pandas.DataFrame` with columns ``gene``, ``section`` (the ``by`` group), ``metric``,
        ``value``: one row per gene × group × metric.
    ``var[f"{key_added}_{metric}"]``
        Per-gene mean over groups (NaN where never defined; NaN for genes not evaluated). The columns of metrics
        not computed by this call (left by an earlier one) are removed.
    ``uns[f"{key_added}_params"]``
        ``layer``, ``truth``, ``by``, ``metrics``, ``n_genes``, and per group ``n_spots``,
        ``n_constant_truth`` and ``n_constant_prediction``; ``n_unpredicted_spots``.

    Notes
    -----
    A correlation is NaN where the measured gene is constant in the group (undefined: nothing to predict; these
    genes are counted in ``n_constant_truth``) and 0 where only the prediction is constant (a constant prediction
    ranks no spot above another, e.g. the training-mean baseline; counted in ``n_constant_prediction``).
    """
    adata = _get_table(adata)  # a SpatialData's table (AttributeError on .layers before)
    _check_key(adata.layers, layer, "adata.layers")
    if isinstance(metrics, str):  # one metric by name, not its characters
        metrics = [metrics]
    unknown = [m for m in metrics if m not in _METRICS]
    if unknown or not len(metrics):
        raise ValueError(f"metrics: expected a non-empty subset of {_METRICS}, got {list(metrics)}.")
    metrics = list(dict.fromkeys(metrics))
    if truth_layer is not None:
        _check_key(adata.layers, truth_layer, "adata.layers")
    if by is not None:
        _check_key(adata.obs, by, "adata.obs")  # missing values are checked on the predicted spots below
    gidx = _resolve_genes(adata, genes, "genes")
    # NaN where the layer holds no prediction (var/obs masks of scst.tl.predict_expression, or NaN as stored).
    pred, gidx = _prediction_block(adata, layer, gidx)
    if gidx.size == 0:
        raise ValueError(f"layer: adata.layers[{layer!r}] has no finite prediction.")
    finite = np.isfinite(pred)
    predicted = finite.all(1)
    partial = finite.any(1) & ~predicted
    if partial.any():
        raise ValueError(
            f"layer: {int(partial.sum())} spot(s) have predictions for some evaluated genes but NaN for others, e.g. "
            f"{adata.obs_names[partial][:3].tolist()}; restrict `genes` to the predicted panel."
        )
    n_unpredicted = int((~predicted).sum())
    if predicted.sum() == 0:
        raise ValueError(f"layer: no spot has a finite prediction in adata.layers[{layer!r}] for the evaluated genes.")
    # A spot left out (not predicted) needs no group, e.g. the NaN domain spatial_domains gives it.
    groups = _groups(adata, by, rows=predicted)
    if truth_layer is None:
        truth = log_normalized(adata, gidx, hint="Pass the truth in the target unit via `truth_layer`.")
        truth = truth.astype(np.float64)
        truth_desc = "log1p(normalize_total(X, 1e4))"
    else:
        truth = _dense(adata.layers[truth_layer], cols=gidx)
        truth_desc = f"layers[{truth_layer!r}]"
        if not np.isfinite(truth[predicted]).all():
            raise ValueError(f"truth_layer: adata.layers[{truth_layer!r}] has non-finite values on predicted spots.")

    names = adata.var_names[gidx].astype(str)
    if names.has_duplicates:  # the long table and the per-gene columns are keyed by name: two genes would blend
        dup = sorted(set(names[names.duplicated()]))
        raise ValueError(
            f"genes: {len(dup)} evaluated gene name(s) occur more than once in var_names, e.g. {dup[:5]}; make them "
            "unique first (adata.var_names_make_unique())."
        )
    rows, n_spots, n_const_t, n_const_p = [], {}, {}, {}
    for g in pd.unique(groups[predicted]):
        sel = predicted & (groups == g)
        p, t = pred[sel], truth[sel]
        n_spots[g] = int(sel.sum())
        n_const_t[g] = int(_is_constant(t).sum())
        n_const_p[g] = int((_is_constant(p) & ~_is_constant(t)).sum())
        for m in metrics:
            rows.append(pd.DataFrame({"gene": names, "section": g, "metric": m, "value": _metric(m, p, t)}))
    df = pd.concat(rows, ignore_index=True)
    for c in ("section", "metric"):
        df[c] = df[c].astype(str)

    adata = adata.copy() if copy else adata
    adata.uns[key_added] = df
    adata.uns[f"{key_added}_params"] = {
        "layer": layer,
        "truth": truth_desc,
        "by": by if by is not None else "",
        "metrics": metrics,
        "n_genes": int(len(gidx)),
        "n_spots": n_spots,
        "n_constant_truth": n_const_t,
        "n_constant_prediction": n_const_p,
        "n_unpredicted_spots": n_unpredicted,
    }
    means = df.groupby(["metric", "gene"], sort=False)["value"].mean()
    for m in _METRICS:  # an earlier call's metric that this call does not compute would read as this call's
        if m not in metrics and f"{key_added}_{m}" in adata.var:
            del adata.var[f"{key_added}_{m}"]
    for m in metrics:
        col = np.full(adata.n_vars, np.nan)
        col[gidx] = means.loc[m].reindex(names).to_numpy()
        adata.var[f"{key_added}_{m}"] = col
    summary = ", ".join(
        f"{m} {np.nanmean(adata.var[f'{key_added}_{m}'].to_numpy()[gidx]):.3g}"
        for m in metrics
        if np.isfinite(adata.var[f"{key_added}_{m}"].to_numpy()[gidx]).any()
    )
    n_ct = sum(n_const_t.values())
    logg.info(
        f"evaluate_expression: {len(gidx)} genes × {len(n_spots)} group(s), mean over genes: {summary}; "
        f"{n_ct} gene×group pair(s) with constant truth (correlation NaN), {sum(n_const_p.values())} with constant "
        f"prediction (correlation 0), {n_unpredicted} unpredicted spot(s) left out → uns[{key_added!r}], "
        f"var['{key_added}_<metric>']"
    )
    return adata if copy else None


# ----------------------------------------------------------------------------------------------------------------
# spatial domains
# ----------------------------------------------------------------------------------------------------------------
def _leiden_labels(conn: Any, resolution: float, random_state: int) -> np.ndarray:
    import scanpy as sc

    tmp = AnnData(X=np.zeros((conn.shape[0], 1), dtype=np.float32))
    sc.tl.leiden(
        tmp, resolution=resolution, adjacency=conn, random_state=random_state, flavor="igraph", n_iterations=2,
        directed=False,
    )  # fmt: skip
    return tmp.obs["leiden"].astype(int).to_numpy()


def _leiden_n(conn: Any, n_domains: int, random_state: int, where: str) -> tuple[np.ndarray, float]:
    """Leiden labels with ``n_domains`` clusters: bisect the resolution (more resolution → more clusters)."""
    tried = []

    def run(res: float) -> int:
        lab = _leiden_labels(conn, res, random_state)
        k = len(np.unique(lab))
        tried.append((abs(k - n_domains), res, lab))
        return k

    lo, hi = 0.0, 1.0
    k = run(hi)
    while k < n_domains and hi < 1e3:  # grow until hi gives enough clusters
        lo, hi = hi, hi * 2
        k = run(hi)
    for _ in range(30):
        if k == n_domains:
            break
        mid = (lo + hi) / 2
        k = run(mid)
        lo, hi = (mid, hi) if k < n_domains else (lo, mid)
    diff, res, labels = min(tried, key=lambda t: (t[0], t[1]))
    if diff:
        warnings.warn(
            f"spatial_domains{where}: no Leiden resolution gives exactly {n_domains} domains; using resolution "
            f"{res:.4g} with {len(np.unique(labels))}.",
            UserWarning,
            stacklevel=3,
        )
    return labels, res


def spatial_domains(
    adata: AnnData | Any,
    layer: str | None = "predicted",
    *,
    n_domains: int | None = None,
    method: Literal["leiden", "kmeans"] = "leiden",
    resolution: float = 1.0,
    key_added: str = "domain",
    random_state: int = 0,
    use_genes: str | Sequence[str] | None = None,
    by: str | None = None,
    n_pcs: int = 15,
    n_neighbors: int = 15,
    copy: bool = False,
) -> AnnData | None:
    """Cluster (predicted) expression into spatial domains: PCA, then k-means or Leiden on a kNN graph.

    HGGEP's domain evaluation clusters the predicted expression of each annotated section and compares the
    clusters with the pathologists' regions (ARI; see :func:`domain_ari`).

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used (``copy=True`` then returns a copy of that table), with
        the expression in ``layers[layer]``.
    layer
        Layer to cluster (target unit, e.g. predictions). None: the measured ``log1p(normalize_total(X, 1e4))``.
    n_domains
        Number of domains. Required for ``"kmeans"``; with ``"leiden"`` the resolution is bisected to give
        exactly this many (closest count, with a warning, if none does); None uses ``resolution``.
    method
        ``"leiden"`` (scanpy, igraph flavour, on the symmetrised ``n_neighbors`` graph of the PCs) or
        ``"kmeans"`` (scikit-learn, 10 initialisations, on the PCs).
    resolution
        Leiden resolution when ``n_domains`` is None.
    key_added
        ``obs`` column to write.
    random_state
        Seed of PCA, k-means and Leiden. Domain numbers are arbitrary (compare partitions, e.g. with
        :func:`domain_ari`). k-means++ draws its starting spots, and Leiden visits the spots, in row order: well
        separated domains are the same partition whatever the order of the spots, but where domains blend the
        result changes with the order as it does with the seed.
    use_genes
        Genes to use: names or a boolean ``var`` column; default every gene with finite values in the layer.
    by
        ``obs`` column (e.g. ``"section"``): cluster each group on its own, labels ``f"{group}_{k}"``; default
        all spots together.
    n_pcs
        Principal components (capped by the numbers of spots and genes).
    n_neighbors
        Neighbours of the kNN graph (Leiden).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or a copy); writes ``obs[key_added]`` (categorical; NaN for spots with a non-finite value; one
    domain for a group whose spots are all identical, e.g. a constant prediction) and
    ``uns[key_added]["params"]`` (method, layer, by, n_pcs, n_neighbors, random_state, and per group the number
    of domains and, for Leiden, the resolution used).
    """
    adata = _get_table(adata)  # a SpatialData's table (AttributeError on .layers before)
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.neighbors import kneighbors_graph

    if method not in ("leiden", "kmeans"):
        raise ValueError(f"method: expected 'leiden' or 'kmeans', got {method!r}.")
    if method == "kmeans" and n_domains is None:
        raise ValueError("n_domains: required with method='kmeans'.")
    if n_domains is not None and int(n_domains) < 1:
        raise ValueError(f"n_domains: expected a positive integer, got {n_domains}.")
    if resolution <= 0:
        raise ValueError(f"resolution: expected a positive number, got {resolution}.")
    gidx = _resolve_genes(adata, use_genes, "use_genes")
    if layer is None:
        X = log_normalized(adata, gidx).astype(np.float64)
    else:
        _check_key(adata.layers, layer, "adata.layers")
        X, _ = _prediction_block(adata, layer, gidx)
        if use_genes is None:
            X = X[:, np.isfinite(X).any(0)]
    ok = np.isfinite(X).all(1)
    if not ok.any():
        raise ValueError(f"layer: no spot has finite values in {'X' if layer is None else repr(layer)}.")
    groups = _groups(adata, by)
    labels = np.full(adata.n_obs, None, dtype=object)
    per_group: dict[str, dict[str, Any]] = {}
    for g in pd.unique(groups[ok]):
        sel = np.flatnonzero(ok & (groups == g))
        where = "" if by is None else f" ({by}={g!r})"
        if n_domains is not None and len(sel) < n_domains:
            raise ValueError(f"n_domains: {n_domains} domains requested but only {len(sel)} spots{where}.")
        Xg = X[sel]
        info: dict[str, Any] = {}
        if _is_constant(Xg).all():
            # Identical spots (e.g. a constant prediction) form one domain: there is nothing to cluster.
            warnings.warn(
                f"spatial_domains{where}: every spot has the same values (e.g. a constant prediction); one domain.",
                UserWarning,
                stacklevel=2,
            )
            info["n_domains"] = 1
            per_group[str(g)] = info
            labels[sel] = ["0" if by is None else f"{g}_0"] * len(sel)
            continue
        k = max(1, min(n_pcs, len(sel) - 1, Xg.shape[1]))
        pcs = PCA(n_components=k, random_state=random_state).fit_transform(Xg - Xg.mean(0))
        if method == "kmeans":
            lab = KMeans(n_clusters=int(n_domains), n_init=10, random_state=random_state).fit_predict(pcs)
        else:
            # Symmetrised kNN graph from scikit-learn (scanpy's UMAP connectivities need a numba compile first).
            knn = kneighbors_graph(pcs, n_neighbors=max(1, min(n_neighbors, len(sel) - 1)), include_self=False)
            conn = knn.maximum(knn.T).tocsr()
            if n_domains is None:
                lab, res = _leiden_labels(conn, resolution, random_state), resolution
            else:
                lab, res = _leiden_n(conn, int(n_domains), random_state, where)
            info["resolution"] = float(res)
        info["n_domains"] = int(len(np.unique(lab)))
        per_group[str(g)] = info
        labels[sel] = [str(v) if by is None else f"{g}_{v}" for v in lab]

    adata = adata.copy() if copy else adata
    cats = sorted({v for v in labels if v is not None}, key=lambda s: (len(s), s))
    adata.obs[key_added] = pd.Categorical(labels, categories=cats)
    adata.uns[key_added] = {
        "params": {
            "method": method,
            "layer": "log1p(normalize_total(X, 1e4))" if layer is None else layer,
            "by": by if by is not None else "",
            "n_pcs": int(n_pcs),
            "n_neighbors": int(n_neighbors),
            "random_state": int(random_state),
            "groups": per_group,
        }
    }
    logg.info(
        f"spatial_domains: {method} on {X.shape[1]} genes, "
        + ", ".join(f"{g}: {v['n_domains']} domains" for g, v in per_group.items())
        + f"; {int((~ok).sum())} spot(s) without finite values → obs[{key_added!r}]"
    )
    return adata if copy else None


def domain_ari(
    adata: AnnData | Any, key: str = "domain", truth: str = "label", by: str | None = SECTION_KEY
) -> pd.DataFrame:
    """Adjusted Rand index between domains and reference labels, per group.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used, with ``obs[key]`` (e.g. from :func:`spatial_domains`)
        and ``obs[truth]``.
    key
        Column with the domains.
    truth
        Column with the reference labels (her2st: ``"label"``); spots where it is missing are left out.
    by
        Column whose groups are scored separately (default ``"section"``); None: all spots as ``"all"``.

    Returns
    -------
    DataFrame indexed by group with ``ari``, ``n_spots`` (spots scored), ``n_unlabelled`` (truth missing) and
    ``n_unassigned`` (domain missing, truth present). ``ari`` is NaN for a group with no scored spot.
    """
    adata = _get_table(adata)  # a SpatialData's table (AttributeError on .layers before)
    from sklearn.metrics import adjusted_rand_score

    _check_key(adata.obs, key, "adata.obs")
    _check_key(adata.obs, truth, "adata.obs")
    groups = _groups(adata, by)
    dom, lab = adata.obs[key], adata.obs[truth]
    rows = {}
    for g in pd.unique(groups):
        sel = groups == g
        unlabelled = sel & lab.isna().to_numpy()
        unassigned = sel & ~lab.isna().to_numpy() & dom.isna().to_numpy()
        use = sel & ~unlabelled & ~unassigned
        ari = (
            adjusted_rand_score(lab[use].astype(str), dom[use].astype(str)) if use.any() else np.nan
        )  # fmt: skip
        rows[str(g)] = {
            "ari": float(ari),
            "n_spots": int(use.sum()),
            "n_unlabelled": int(unlabelled.sum()),
            "n_unassigned": int(unassigned.sum()),
        }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = by if by is not None else "group"
    logg.info(
        f"domain_ari: mean ARI {df['ari'].mean():.3f} over {len(df)} group(s); "
        f"{int(df['n_unlabelled'].sum())} unlabelled spot(s) left out"
    )
    return df
