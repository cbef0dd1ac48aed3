"""HGGEP's feature/position k-NN hypergraph stored on an AnnData (squidpy-style graph tool)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scst._logging import logg
from scst._utils import _check_key, _get_table
from scst.nn._hypergraph import _use_dense, hyperedge_index_to_incidence, knn_hyperedges

__all__ = ["hypergraph"]


def hypergraph(
    adata: AnnData | Any,
    use_rep: str = "X_pca",
    *,
    spatial_key: str = "spatial",
    k: int = 3,
    n_candidates: int | None = 16,
    exact: bool | None = None,
    library_key: str | None = "section",
    key_added: str = "hypergraph",
    copy: bool = False,
) -> AnnData | None:
    """Build the HGGEP hypergraph (feature + position k-NN hyperedges) for each section.

    Hyperedge ``e`` is centred on spot ``e`` and holds the ``k`` spots (``e`` included) that minimise
    ``Norm(feature distance) + Norm(position distance)`` (HGGEP Eq. 16); see
    :func:`scst.nn._hypergraph.knn_hyperedges` for the normalisation, the fast path and ties. Spots of
    different sections (``adata.obs[library_key]``) never share a hyperedge.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used (``copy=True`` then returns a copy of that table).
    use_rep
        Features: a key of ``adata.obsm`` (e.g. ``"X_pca"``, patch embeddings ``"X_<encoder>"``) or ``"X"``.
    spatial_key
        Key of ``adata.obsm`` with ``(n, 2)`` spot coordinates.
    k
        Hyperedge size, the centre spot included; ``1 <= k <=`` the size of every section.
    n_candidates
        Spatially nearest spots (centre included) ranked per spot on the fast path; ``None``: all.
    exact
        ``True``: dense ranking over the whole section; ``False``: fast path; ``None``: dense for
        sections of at most 2048 spots.
    library_key
        Column of ``adata.obs`` with the section of each spot. ``None`` builds one hypergraph over all spots; so
        does a column that is absent, with a ``UserWarning`` (sections may then share hyperedges).
    key_added
        Prefix of the keys written.
    copy
        Return a modified copy instead of editing ``adata`` in place.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    - ``.obsp[f"{key_added}_incidence"]``: ``(n_obs, n_obs)`` CSR float32 incidence matrix ``H`` with
      ``H[i, e] = 1`` iff spot ``i`` belongs to the hyperedge centred on spot ``e``.
    - ``.uns[key_added]``: ``{"params": {...}, "incidence_key": f"{key_added}_incidence"}``.

    Examples
    --------
    Use the stored hypergraph with PyG::

        import scst
        from scst.nn._hypergraph import incidence_to_hyperedge_index
        from torch_geometric.nn import HypergraphConv

        scst.pp.hypergraph(adata, use_rep="X_pca", k=3)
        hyperedge_index, num_edges = incidence_to_hyperedge_index(adata.obsp["hypergraph_incidence"])
        x = torch.as_tensor(adata.obsm["X_pca"], dtype=torch.float32)
        out = HypergraphConv(x.shape[1], 64)(x, hyperedge_index, num_edges=num_edges)
    """
    data = _get_table(adata)
    if copy:
        data = data.copy()

    if use_rep == "X":
        feats_all = data.X
    else:
        _check_key(data.obsm, use_rep, "adata.obsm (argument `use_rep`; or pass use_rep='X')")
        feats_all = data.obsm[use_rep]
    _check_key(data.obsm, spatial_key, "adata.obsm (argument `spatial_key`)")
    feats_all = feats_all.to_numpy() if isinstance(feats_all, pd.DataFrame) else feats_all
    coords = np.asarray(data.obsm[spatial_key])
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"adata.obsm[{spatial_key!r}] must have shape (n_obs, 2), got {coords.shape}.")
    if feats_all.ndim != 2 or feats_all.shape[0] != data.n_obs:
        raise ValueError(f"Features {use_rep!r} must have shape (n_obs, d), got {feats_all.shape}.")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`k` must be an int >= 1, got {k!r}.")
    k = int(k)  # a numpy integer as a Python int (uns params, model registries are JSON)
    if data.n_obs == 0:
        raise ValueError("adata: no spots (n_obs = 0); a hypergraph needs at least `k` spots.")
    if not np.isfinite(coords).all():
        raise ValueError(f"adata.obsm[{spatial_key!r}] (argument `spatial_key`) holds NaN or infinite coordinates.")
    if not np.isfinite(feats_all.data if sp.issparse(feats_all) else np.asarray(feats_all, dtype=float)).all():
        raise ValueError(f"Features {use_rep!r} (argument `use_rep`) hold NaN or infinite values.")

    sections = _sections(data, library_key)
    for name, idx in sections:
        if k > idx.size:
            where = f"section {name!r} ({library_key!r})" if name is not None else "adata"
            raise ValueError(f"`k` = {k} exceeds the {idx.size} spots of {where}.")

    start = logg.info(
        f"Creating hypergraph with k={k} from `{use_rep}` and `{spatial_key}` over {len(sections)} section(s)."
    )
    rows, cols = [], []
    for name, idx in sections:
        f = feats_all[idx]
        f = f.toarray() if sp.issparse(f) else np.asarray(f)
        hei = knn_hyperedges(
            torch.as_tensor(f, dtype=torch.float32),
            torch.as_tensor(coords[idx], dtype=torch.float64),
            k,
            n_candidates=n_candidates,
            exact=exact,
        )
        mode = "dense" if _use_dense(idx.size, n_candidates, exact) else "fast"
        logg.debug(f"section {name!r}: {idx.size} spots, {mode} ranking")
        # Local -> global spot indices; nodes and hyperedge centres are both spots.
        local = hei.numpy()
        rows.append(idx[local[0]])
        cols.append(idx[local[1]])

    hei_all = torch.as_tensor(np.stack([np.concatenate(rows), np.concatenate(cols)]))
    coo = hyperedge_index_to_incidence(hei_all, data.n_obs, data.n_obs)
    i, e = coo.indices().numpy()
    incidence = sp.csr_matrix(
        (coo.values().numpy().astype(np.float32), (i, e)), shape=(data.n_obs, data.n_obs), dtype=np.float32
    )

    incidence_key = f"{key_added}_incidence"
    data.obsp[incidence_key] = incidence
    data.uns[key_added] = {
        "params": {
            "use_rep": use_rep,
            "spatial_key": spatial_key,
            "k": k,
            "n_candidates": n_candidates,
            "exact": exact,
            "library_key": library_key if len(sections) > 1 or sections[0][0] is not None else None,
        },
        "incidence_key": incidence_key,
    }
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added\n    '{incidence_key}', hypergraph incidence (adata.obsp)"
            f"\n    '{key_added}', parameters (adata.uns)"
        ),
    )
    return data if copy else None


def _sections(data: AnnData, library_key: str | None) -> list[tuple[Any, np.ndarray]]:
    """``(section name, integer row indices)``; one ``(None, all rows)`` without sections."""
    if library_key is None or library_key not in data.obs:
        if library_key is not None:  # None asks for one hypergraph; an absent column pools sections unasked
            warnings.warn(
                f"hypergraph: library_key={library_key!r} is not a column of adata.obs; building one hypergraph "
                "over all spots (spots of different sections may share hyperedges). Pass library_key=None for "
                "one hypergraph on purpose, or the obs column holding the sections.",
                UserWarning,
                stacklevel=3,
            )
        return [(None, np.arange(data.n_obs))]
    labels = data.obs[library_key]
    if labels.isna().any():
        raise ValueError(f"adata.obs[{library_key!r}] (argument `library_key`) has missing values.")
    codes, uniques = pd.factorize(labels, sort=True)
    return [(uniques[c], np.flatnonzero(codes == c)) for c in range(len(uniques))]
