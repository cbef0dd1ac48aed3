"""Ligand–receptor scores: GCNG and three unsupervised baselines, written as a long table to ``adata.uns``."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._logging import logg
from .._utils import _check_key, _get_table
from ..datasets._ligand_receptor import _check_lr_table, lr_pairs_in_genes
from ..datasets._ligand_receptor import ligand_receptor as _lr_resource
from ..models._gcng import GCNG, entity_expression, normalized_expression

__all__ = ["ligand_receptor", "lr_scores", "BASELINES", "LIGREC_METHODS"]

#: Unsupervised scores, all computed on the same normalised expression as GCNG.
BASELINES = ("pearson", "spatial_pearson", "expression")
LIGREC_METHODS = ("gcng", *BASELINES)


def _zscore(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    return np.divide(x - mu, sd, out=np.zeros_like(x, dtype=np.float64), where=sd > 0)


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


def _local_scores(lig: np.ndarray, rec: np.ndarray, adjacency: Any) -> np.ndarray:
    """Per-cell score: z(ligand in the cell) × mean z(receptor in its neighbours)."""
    a = sp.csr_matrix(adjacency, dtype=np.float64)
    a = sp.csr_matrix((a != 0).astype(np.float64))
    a.setdiag(0)
    a.eliminate_zeros()
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    neigh = sp.diags(inv) @ a @ _zscore(rec)
    return _zscore(lig) * neigh


def _guess_organism(var_names: pd.Index) -> str:
    names = [str(v) for v in var_names[:2000] if str(v)[:1].isalpha()]
    upper = np.mean([v == v.upper() for v in names]) if names else 1.0
    return "human" if upper > 0.5 else "mouse"


def ligand_receptor(
    adata: AnnData | Any,
    model: GCNG | None = None,
    *,
    pairs: pd.DataFrame | None = None,
    method: Literal["gcng", "pearson", "spatial_pearson", "expression"] = "gcng",
    key_added: str = "scst_ligrec",
    connectivity_key: str = "spatial_connectivities",
    layer: str | None = None,
    normalize: bool = True,
    log1p: bool = True,
    local_scores: bool | int = False,
    copy: bool = False,
) -> AnnData | None:
    """Score ligand–receptor pairs with a trained GCNG or an unsupervised baseline.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used. For ``method="gcng"`` the data the model was set up
        with (GCNG is tied to its cells).
    model
        A trained :class:`scst.models.GCNG` (required for ``method="gcng"``).
    pairs
        Candidate pairs (``ligand``, ``receptor``; extra columns are kept), e.g. from
        :func:`scst.datasets.ligand_receptor`. Default: GCNG's list (Ramilowski 2015) in the data's organism
        (guessed from the symbol case). Pairs whose genes (all complex subunits) are absent are skipped with a
        warning; an error is raised when none remain.
    method
        ``"gcng"`` (model probability), ``"pearson"`` (within cells), ``"spatial_pearson"`` (ligand in a cell vs
        receptor in its neighbours) or ``"expression"`` (``mean(L)·mean(R)``); see :func:`lr_scores`.
    key_added
        ``uns`` key of the results.
    connectivity_key
        ``obsp`` cell graph for ``"spatial_pearson"`` and the local scores.
    layer, normalize, log1p
        Expression used by the baselines and the local scores: ``layer`` (default ``X``) scaled to 10,000 per cell
        when ``normalize``, then ``log1p``. GCNG uses its own setup and config.
    local_scores
        Also write per-cell local interaction scores — z(ligand in the cell) × mean z(receptor in its
        neighbours) — for the top ``local_scores`` pairs (``True``: 50).
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    - ``uns[key_added]``: long DataFrame, one row per pair, best first: ``ligand``, ``receptor``, ``score``
      (higher = more likely interacting), ``rank`` (1 = best), ``method``, ``ligand_mean``, ``receptor_mean``
      (normalised expression means), then the extra columns of ``pairs``;
    - ``uns[f"{key_added}_params"]``: the parameters (method, keys, normalisation, numbers of pairs, and the
      GCNG config and graph for ``"gcng"``);
    - with ``local_scores``: ``obsm[f"{key_added}_local"]``, a cells × pairs DataFrame (columns
      ``"LIGAND^RECEPTOR"``).
    """
    if method not in LIGREC_METHODS:
        raise ValueError(f"method: expected one of {list(LIGREC_METHODS)}, got {method!r}.")
    adata = _get_table(adata)
    if copy:
        adata = adata.copy()
    if pairs is None:
        pairs = _lr_resource("gcng", organism=_guess_organism(adata.var_names))
    _check_lr_table(pairs)
    present = lr_pairs_in_genes(pairs, adata.var_names)
    n_in = len(pairs.drop_duplicates(["ligand", "receptor"]))
    if present.empty:
        raise ValueError(f"pairs: none of the {n_in} pairs has both genes (all subunits) in adata.var_names.")
    if len(present) < n_in:
        logg.warning(f"ligand_receptor: skipped {n_in - len(present)} of {n_in} pairs with genes absent from the data.")
    norm = normalized_expression(adata, layer, normalize=normalize, log1p=log1p)
    lig = entity_expression(norm, adata.var_names, present["ligand"])
    rec = entity_expression(norm, adata.var_names, present["receptor"])
    need_graph = method == "spatial_pearson" or bool(local_scores)
    if need_graph:
        _check_key(adata.obsp, connectivity_key, "adata.obsp (build the cell graph with scst.pp.cell_graph)")
    params: dict[str, Any] = {
        "method": method,
        "layer": layer,
        "normalize": normalize,
        "log1p": log1p,
        "n_pairs_input": int(n_in),
        "n_pairs_scored": int(len(present)),
    }
    if method == "gcng":
        if model is None:
            raise ValueError("method='gcng' needs a trained `model` (scst.models.GCNG).")
        if not isinstance(model, GCNG):
            raise TypeError(f"`model` must be a scst.models.GCNG, got {type(model).__name__}.")
        if not model.is_trained:
            raise ValueError("`model` is not trained; call `model.train(pairs)` first.")
        saved = (model.data, model.adata, getattr(model, "_expr_cache", None))
        try:
            if model.adata is not adata:  # score this AnnData (same cells) without re-pointing the model for good
                model._attach(adata)
            pred = model.predict(present[["ligand", "receptor"]])
        finally:
            if model.adata is not saved[1]:
                model.data, model.adata = saved[0], saved[1]
                if saved[1] is not None:
                    model._set_graph()
                model._expr_cache = saved[2]
        score = pred.set_index(["ligand", "receptor"])["score"]
        score = score.reindex(pd.MultiIndex.from_frame(present[["ligand", "receptor"]])).to_numpy()
        params.update(graph_key=model.registry["graph_key"], model_config=dict(model.config))
    else:
        adj = adata.obsp[connectivity_key] if method == "spatial_pearson" else None
        score = lr_scores(lig, rec, method, adj)
        if method == "spatial_pearson":
            params["connectivity_key"] = connectivity_key
    extra = [c for c in present.columns if c not in ("ligand", "receptor")]
    res = pd.DataFrame(
        {
            "ligand": present["ligand"].to_numpy(),
            "receptor": present["receptor"].to_numpy(),
            "score": np.asarray(score, dtype=np.float64),
            "method": method,
            "ligand_mean": lig.mean(axis=0).astype(np.float64),
            "receptor_mean": rec.mean(axis=0).astype(np.float64),
        }
    )
    for c in extra:
        res[c] = present[c].to_numpy()
    res["rank"] = res["score"].rank(ascending=False, method="min").astype(int)
    res = res.sort_values(["rank", "ligand", "receptor"]).reset_index(drop=True)
    res = res[["ligand", "receptor", "score", "rank", "method", "ligand_mean", "receptor_mean", *extra]]
    adata.uns[key_added] = res
    if local_scores:
        n_top = 50 if local_scores is True else int(local_scores)
        top = res.head(n_top)
        col = {p: i for i, p in enumerate(zip(present["ligand"], present["receptor"]))}
        idx = [col[p] for p in zip(top["ligand"], top["receptor"])]
        local = _local_scores(lig[:, idx], rec[:, idx], adata.obsp[connectivity_key])
        adata.obsm[f"{key_added}_local"] = pd.DataFrame(
            local.astype(np.float32),
            index=adata.obs_names,
            columns=[f"{lg}^{rc}" for lg, rc in zip(top["ligand"], top["receptor"])],
        )
        params["local_scores_key"] = f"{key_added}_local"
        params["connectivity_key"] = connectivity_key
    adata.uns[f"{key_added}_params"] = params
    logg.info(f"ligand_receptor: scored {len(res)} pairs with {method!r} → adata.uns[{key_added!r}]")
    return adata if copy else None
