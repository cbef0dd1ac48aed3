"""Gene groups: the tokens of the multimodal RNA encoder (Berjaoui, Sanchez et al. 2024, §2.2).

The paper clusters the directed protein–protein interaction graph with the directed-modularity Louvain method
(Dugué & Perez, its ref. [9]; modularity ``Q_d = 1/m Σ_ij [A_ij − d_i^out d_j^in / m] δ(c_i, c_j)``), gets 11
clusters and groups the clusters with "significantly less nodes" together, ending with 7 groups. networkx's
``louvain_communities`` optimises exactly this directed modularity on a :class:`networkx.DiGraph`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._logging import logg
from .._normalize import log_normalize_counts
from .._utils import _check_key, _positive_int

__all__ = ["gene_groups"]

_METHODS = ("louvain_directed", "chromosome", "pathway")


def _merge_small(communities: list[list[str]], n_groups: int) -> list[list[str]]:
    """Keep the ``n_groups - 1`` largest communities and put all the others together (the paper's rule)."""
    comms = sorted((sorted(c) for c in communities if len(c)), key=lambda c: (-len(c), c[0]))
    if len(comms) <= n_groups:
        return comms
    rest = sorted(g for c in comms[n_groups - 1 :] for g in c)
    return [*comms[: n_groups - 1], rest]


def _as_digraph(network: Any) -> Any:
    """A :class:`networkx.DiGraph` from a DiGraph/Graph, a DataFrame (source, target[, weight]) or an edge list."""
    import networkx as nx

    if isinstance(network, nx.Graph):  # node names as strings, as the other forms give them (gene symbols)
        g = network if network.is_directed() else network.to_directed()
        return nx.relabel_nodes(g, {n: str(n) for n in g.nodes if not isinstance(n, str)}, copy=True)
    g = nx.DiGraph()
    if isinstance(network, pd.DataFrame):
        cols = [c for c in ("source", "target") if c in network.columns]
        if len(cols) < 2:
            cols = [c for c in ("ligand", "receptor") if c in network.columns]
        if len(cols) < 2:
            raise ValueError(
                "network: a DataFrame needs columns ('source', 'target') or ('ligand', 'receptor') (optional "
                f"'weight'); got {list(network.columns)}."
            )
        w = network["weight"].to_numpy(dtype=float) if "weight" in network.columns else np.ones(len(network))
        for s, t, wi in zip(network[cols[0]].astype(str), network[cols[1]].astype(str), w):
            g.add_edge(s, t, weight=float(wi))
        return g
    if isinstance(network, Sequence | np.ndarray) and not isinstance(network, str):
        for i, e in enumerate(network):
            if len(e) not in (2, 3):
                raise ValueError(f"network: edge {i} is {e!r}; expected (source, target) or (source, target, weight).")
            g.add_edge(str(e[0]), str(e[1]), weight=float(e[2]) if len(e) == 3 else 1.0)
        return g
    raise TypeError(
        "network: expected a networkx graph, a DataFrame of edges, a list of (source, target[, weight]) or None "
        f"(kNN co-expression fallback); got {type(network).__name__}."
    )


def _log_expression(adata: AnnData, genes: list[str], layer: str | None) -> np.ndarray:
    full = adata.X if layer is None else adata.layers[layer]
    X = full[:, adata.var_names.get_indexer(genes)]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    full_vals = full.data if sparse.issparse(full) else np.asarray(full)
    if not np.isfinite(full_vals).all():  # library sizes run over all genes
        raise ValueError("adata: NaN or infinite expression values; the kNN co-expression fallback needs finite ones.")
    if X.size and X.min() >= 0 and np.allclose(X, np.round(X)):  # raw counts → scst's log1p(normalize_total(1e4))
        return log_normalize_counts(X, np.asarray(full.sum(axis=1)).ravel()).astype(np.float64)
    return X.astype(np.float64)


def _knn_coexpression(adata: AnnData, genes: list[str], layer: str | None, k: int) -> Any:
    """Directed kNN graph of genes: ``i → j`` iff ``j`` is among the ``k`` genes most correlated with ``i``."""
    import networkx as nx

    if adata.n_obs < 2:
        raise ValueError(
            f"adata: the kNN co-expression fallback (network=None) correlates genes over spots; got {adata.n_obs} "
            "spot(s), need at least 2 (or pass a network)."
        )
    X = _log_expression(adata, genes, layer)
    sd = X.std(0)
    Z = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
    corr = Z.T @ Z / max(len(X), 1)
    np.fill_diagonal(corr, -np.inf)
    k = min(k, len(genes) - 1)
    nbrs = np.argpartition(-corr, kth=k - 1, axis=1)[:, :k]
    g = nx.DiGraph()
    g.add_nodes_from(genes)
    for i, row in enumerate(nbrs):
        for j in row:
            g.add_edge(genes[i], genes[j], weight=float(max(corr[i, j], 0.0)) + 1e-6)
    return g


def gene_groups(
    adata: AnnData,
    network: Any = None,
    method: Literal["louvain_directed", "chromosome", "pathway"] = "louvain_directed",
    n_groups: int | None = 7,
    *,
    genes: str | Sequence[str] | None = None,
    gene_sets: Mapping[str, Sequence[str]] | None = None,
    chromosome_key: str = "chromosome",
    unlinked: Literal["drop", "group"] = "group",
    n_neighbors: int = 10,
    resolution: float = 1.0,
    layer: str | None = None,
    seed: int = 0,
    key_added: str = "gene_group",
    copy: bool = False,
) -> AnnData | None:
    """Assign genes to groups; each group becomes one token of :class:`scst.models.MultimodalST`'s RNA encoder.

    ``method="louvain_directed"`` (the paper's): cluster a directed gene network with directed-modularity Louvain
    (:func:`networkx.community.louvain_communities` on a DiGraph), then keep the ``n_groups - 1`` largest
    clusters and merge all smaller ones into one group (the paper: 11 PPI clusters → 7 groups). ``network`` is
    user-supplied (e.g. a PPI or ``scst.datasets.ligand_receptor()``); with ``network=None`` the documented
    fallback is a directed kNN co-expression graph of the genes (``i → j`` for the ``n_neighbors`` genes ``j`` most
    Pearson-correlated with ``i`` on log1p(normalize_total) expression). Ablations of the paper's table:
    ``"chromosome"`` (genes grouped by ``var[chromosome_key]``) and ``"pathway"`` (``gene_sets``; a gene in
    several sets goes to the largest set). The same merge rule brings chromosomes and pathways to ``n_groups``.

    Parameters
    ----------
    adata
        Genes in ``var_names``; expression in ``X`` (or ``layer``) for the fallback network.
    network
        Directed gene network: a :class:`networkx.DiGraph` (an undirected graph is made directed both ways), a
        DataFrame with ``source``/``target`` (or ``ligand``/``receptor``) and optional ``weight`` columns, or a
        list of ``(source, target[, weight])``. Nodes are gene symbols (non-string nodes are taken as their
        ``str``); those absent from ``adata`` or outside ``genes`` are ignored (both counts logged and warned).
        None: the kNN co-expression fallback.
    method
        ``"louvain_directed"``, ``"chromosome"`` or ``"pathway"``.
    n_groups
        Number of groups after merging (None: keep all clusters).
    genes
        Genes to group: a boolean ``var`` column name (e.g. ``"highly_variable_scst"``) or a list; default all.
    gene_sets
        ``{name: genes}`` for ``method="pathway"``.
    chromosome_key
        ``var`` column with the chromosome for ``method="chromosome"``.
    unlinked
        Genes of ``genes`` that the network / sets / chromosome column does not cover: ``"group"`` puts them in one
        extra group (counted in ``n_groups``), ``"drop"`` leaves them out (group -1).
    n_neighbors
        Out-degree of the kNN co-expression fallback.
    resolution, seed
        Louvain resolution and random seed. networkx's seeded Louvain visits the genes in the order they enter the
        graph (the order of ``var``, or of the network's rows), so the same seed with the genes in another order
        can give other groups of similar modularity; keep ``var`` (and the network) in one order to reproduce a
        grouping, or store ``var[key_added]`` with the data.
    layer
        Layer for the fallback's expression (raw counts are log1p-normalised; anything else is used as is).
    key_added
        ``var`` column written.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy, with ``var[key_added]`` (int group 0..n-1; -1 = not grouped) and ``uns[key_added]``:
    ``method``, ``sizes`` (in group order), ``n_clusters`` (before merging), ``modularity`` (directed, of the
    clusters found), ``n_edges``, ``n_network_genes_absent`` (network genes not in ``adata``),
    ``n_network_genes_outside_genes`` (in ``adata`` but not in ``genes``), ``n_unlinked`` and the parameters.
    Groups are numbered in this order: the kept clusters, largest first (ties by first gene name); then the merged
    smaller clusters, whatever their total size; then, with ``unlinked="group"``, the unlinked genes (with
    ``n_groups=1`` they join the one group). So the last group or two may be larger than those before them.
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}.")
    if n_groups is not None:
        n_groups = _positive_int("n_groups", n_groups, what="a positive integer or None")
    n_neighbors = _positive_int("n_neighbors", n_neighbors)
    if unlinked not in ("drop", "group"):
        raise ValueError(f"unlinked: expected 'drop' or 'group', got {unlinked!r}.")
    if genes is None:
        panel = list(adata.var_names)
    elif isinstance(genes, str):
        _check_key(adata.var, genes, "adata.var")
        panel = list(adata.var_names[adata.var[genes].to_numpy(dtype=bool)])
    else:
        panel = list(dict.fromkeys(str(g) for g in genes))  # a gene named twice is one gene to group
        missing = pd.Index(panel).difference(adata.var_names)
        if len(missing):
            raise KeyError(f"genes: {len(missing)} genes are not in adata.var_names, e.g. {list(missing[:5])}.")
    if n_groups is not None and len(panel) < n_groups:
        raise ValueError(f"n_groups: {n_groups} groups asked for but only {len(panel)} genes to group.")
    info: dict[str, Any] = {"method": method, "n_groups": n_groups, "unlinked": unlinked}
    in_panel = set(panel)

    if method == "louvain_directed":
        import networkx as nx

        if network is None:
            if len(panel) < 2:  # the kNN graph would have no edge, and the error would blame a network never passed
                raise ValueError(
                    f"genes: the kNN co-expression fallback (network=None) links genes to each other and needs at "
                    f"least 2; got {len(panel)}."
                )
            g = _knn_coexpression(adata, panel, layer, n_neighbors)
            info["network"] = f"kNN co-expression fallback (n_neighbors={n_neighbors})"
            info["n_network_genes_absent"] = info["n_network_genes_outside_genes"] = 0  # built from `genes` itself
        else:
            g = _as_digraph(network)
            in_data = set(map(str, adata.var_names))
            absent = [n for n in g.nodes if n not in in_data]
            outside = [n for n in g.nodes if n in in_data and n not in in_panel]
            info["network"] = "user"
            info["n_network_genes_absent"] = len(absent)  # not in the data at all
            info["n_network_genes_outside_genes"] = len(outside)  # in the data, not in `genes`
            if absent or outside:
                msg = (
                    f"of the network's {g.number_of_nodes()} genes, {len(absent)} are not in the data and "
                    f"{len(outside)} are not in `genes`; ignored."
                )
                logg.info(f"gene_groups: {msg}")
                warnings.warn(f"gene_groups: {msg}", UserWarning, stacklevel=2)
            g = g.subgraph([n for n in g.nodes if n in in_panel]).copy()
            g.remove_edges_from(list(nx.selfloop_edges(g)))
            g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
        if g.number_of_edges() == 0:
            raise ValueError("network: no edge joins two genes of `genes`; check gene symbols (case) and the panel.")
        comms = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
        info["n_edges"] = int(g.number_of_edges())
        info["n_clusters"] = len(comms)
        info["modularity"] = float(nx.community.modularity(g, comms, weight="weight", resolution=resolution))
        clusters = [list(c) for c in comms]
    elif method == "chromosome":
        _check_key(adata.var, chromosome_key, "adata.var")
        chrom = adata.var.loc[panel, chromosome_key]
        clusters = [
            list(idx) for _, idx in chrom.dropna().astype(str).groupby(chrom.dropna().astype(str)).groups.items()
        ]
        info["n_clusters"] = len(clusters)
    else:
        if not gene_sets:
            raise ValueError("gene_sets: method='pathway' needs a non-empty {name: genes} mapping.")
        sets = {k: [g for g in dict.fromkeys(map(str, v)) if g in in_panel] for k, v in gene_sets.items()}
        order = sorted(sets, key=lambda k: (-len(sets[k]), k))
        owner: dict[str, str] = {}
        for k in order:
            for gname in sets[k]:
                owner.setdefault(gname, k)
        if not owner:
            raise ValueError("gene_sets: no set contains a gene of `genes`.")
        clusters = [[gn for gn, k in owner.items() if k == name] for name in order]
        clusters = [c for c in clusters if c]
        info["n_clusters"] = len(clusters)

    covered = {g for c in clusters for g in c}
    rest = [g for g in panel if g not in covered]
    n_target = n_groups
    if n_groups is not None and rest and unlinked == "group":
        n_target = max(n_groups - 1, 1)
    if n_target is not None and len(clusters) < n_target:
        kept = len(clusters) + bool(rest and unlinked == "group")  # the unlinked genes add a group of their own
        warnings.warn(
            f"gene_groups: only {len(clusters)} clusters for n_groups={n_groups}; keeping {kept} groups"
            + (" (the clusters and the unlinked genes)." if kept > len(clusters) else "."),
            UserWarning,
            stacklevel=2,
        )
    groups = _merge_small(clusters, n_target if n_target is not None else len(clusters))
    info["n_unlinked"] = len(rest)
    if rest and unlinked == "group":
        if n_groups is not None and len(groups) >= n_groups:  # n_groups=1: the unlinked genes join the one group
            groups[-1] = sorted([*groups[-1], *rest])
        else:
            groups.append(rest)
    elif rest:
        logg.info(f"gene_groups: {len(rest)} genes not covered by the {method} grouping are left out (group -1).")

    adata = adata.copy() if copy else adata
    assign = pd.Series(-1, index=adata.var_names, dtype=np.int64)
    for i, c in enumerate(groups):
        assign.loc[c] = i
    adata.var[key_added] = assign.to_numpy()
    info["sizes"] = [len(c) for c in groups]
    info.update({"resolution": resolution, "seed": seed, "n_neighbors": n_neighbors})
    adata.uns[key_added] = info
    logg.info(f"gene_groups ({method}): {len(groups)} groups of sizes {info['sizes']} → var[{key_added!r}]")
    return adata if copy else None
