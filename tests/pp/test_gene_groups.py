from __future__ import annotations

import anndata as ad
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from scst.pp import gene_groups


def _adata(genes, n=60, seed=0, modules=None):
    rng = np.random.default_rng(seed)
    X = rng.poisson(5, size=(n, len(genes))).astype(np.float32)
    if modules is not None:  # each module of genes follows its own latent factor
        for m in np.unique(modules):
            f = rng.gamma(2.0, 5.0, size=n)
            X[:, modules == m] = rng.poisson(f[:, None] * np.ones((1, int((modules == m).sum()))))
    return ad.AnnData(X=X, var=pd.DataFrame(index=list(genes)))


def _cliques(sizes, seed=0):
    """Directed graph of dense communities (random directions) plus one edge between consecutive ones."""
    rng = np.random.default_rng(seed)
    g, names, start = nx.DiGraph(), [], 0
    for c, s in enumerate(sizes):
        nodes = [f"G{c}_{i}" for i in range(s)]
        for i in range(s):
            for j in range(s):
                if i != j and rng.random() < 0.6:
                    g.add_edge(nodes[i], nodes[j])
        names += nodes
        start += s
    for c in range(len(sizes) - 1):
        g.add_edge(f"G{c}_0", f"G{c + 1}_0")
    return g, names


def test_louvain_directed_recovers_planted_communities_and_merges_small_ones():
    g, genes = _cliques([12, 10, 8])
    adata = _adata(genes)
    gene_groups(adata, g, n_groups=3)
    truth = np.array([int(n.split("_")[0][1:]) for n in genes])
    assert adjusted_rand_score(truth, adata.var["gene_group"]) == 1.0
    assert adata.uns["gene_group"]["sizes"] == [12, 10, 8]
    assert adata.uns["gene_group"]["modularity"] > 0.5
    # the paper's rule: keep the n-1 largest, merge the rest → 12 | 10+8
    gene_groups(adata, g, n_groups=2)
    expected = np.where(truth == 0, 0, 1)
    assert (adata.var["gene_group"].to_numpy() == expected).all()
    assert adata.uns["gene_group"]["sizes"] == [12, 18]


def test_network_genes_absent_are_ignored_with_a_count_and_unlinked_genes():
    g, genes = _cliques([10, 10])
    g.add_edge("NOT_IN_DATA1", "G0_1")
    g.add_edge("NOT_IN_DATA2", "NOT_IN_DATA3")
    adata = _adata([*genes, "LONELY1", "LONELY2"])
    with pytest.warns(UserWarning, match="of the network's 23 genes, 3 are not in the data and 0 are not in"):
        gene_groups(adata, g, n_groups=3)
    assert adata.uns["gene_group"]["n_network_genes_absent"] == 3
    # genes in the data but outside `genes` are counted apart from those absent from the data
    with pytest.warns(UserWarning, match="23 genes, 3 are not in the data and 10 are not in `genes`"):
        sub = gene_groups(adata, g, genes=[f"G0_{i}" for i in range(10)], n_groups=2, copy=True)
    info = sub.uns["gene_group"]
    assert info["n_network_genes_absent"] == 3 and info["n_network_genes_outside_genes"] == 10
    # the two genes outside the network form the extra group
    assert adata.var.loc[["LONELY1", "LONELY2"], "gene_group"].tolist() == [2, 2]
    with pytest.warns(UserWarning):
        gene_groups(adata, g, n_groups=3, unlinked="drop")
    assert adata.var.loc[["LONELY1", "LONELY2"], "gene_group"].tolist() == [-1, -1]
    assert adata.uns["gene_group"]["n_unlinked"] == 2


def test_knn_coexpression_fallback_finds_planted_modules():
    modules = np.repeat([0, 1, 2], [15, 12, 9])
    adata = _adata([f"g{i}" for i in range(len(modules))], n=200, modules=modules)
    gene_groups(adata, None, n_groups=3, n_neighbors=5)
    assert adjusted_rand_score(modules, adata.var["gene_group"]) == 1.0
    assert "fallback" in adata.uns["gene_group"]["network"]


def test_ligand_receptor_list_as_a_real_directed_graph(her2st_counts):
    import scst

    lr = scst.datasets.ligand_receptor()
    genes = sorted(set(lr["ligand"]) | set(lr["receptor"]))
    panel = [g for g in her2st_counts.var_names if g in set(genes)]
    adata = her2st_counts[:50, panel].copy()
    with pytest.warns(UserWarning, match="not in `genes`"):
        gene_groups(adata, lr, n_groups=7, unlinked="drop")
    info = adata.uns["gene_group"]
    pairs = {(a, b) for a, b in zip(lr["ligand"], lr["receptor"]) if a in set(panel) and b in set(panel) and a != b}
    assert info["n_edges"] == len(pairs)  # every L→R pair among the data's genes, once
    assert info["n_clusters"] > 7 and len(info["sizes"]) == 7
    assert info["sizes"] == sorted(info["sizes"][:6], reverse=True) + info["sizes"][6:]
    grouped = adata.var["gene_group"].to_numpy() >= 0
    assert grouped.sum() == sum(info["sizes"])


def test_chromosome_and_pathway_groupings():
    genes = [f"g{i}" for i in range(12)]
    adata = _adata(genes)
    adata.var["chromosome"] = ["1"] * 5 + ["2"] * 4 + ["X"] * 2 + [None]
    gene_groups(adata, method="chromosome", n_groups=None, unlinked="drop")
    assert adata.var["gene_group"].tolist() == [0] * 5 + [1] * 4 + [2] * 2 + [-1]
    gene_groups(adata, method="chromosome", n_groups=3)  # 2 chromosomes kept + the rest merged + the unplaced gene
    assert adata.var["gene_group"].tolist() == [0] * 5 + [1] * 6 + [2]
    sets = {"A": genes[:6], "B": genes[4:9], "C": ["g11", "absent"]}
    gene_groups(adata, method="pathway", gene_sets=sets, n_groups=None, unlinked="drop")
    # g4, g5 are in A and B: they go to the larger set A
    assert adata.var["gene_group"].tolist() == [0] * 6 + [1] * 3 + [-1, -1, 2]
    # a set without a gene of the panel is no cluster
    gene_groups(adata, method="pathway", gene_sets={**sets, "D": ["absent"]}, n_groups=None, unlinked="drop")
    assert adata.uns["gene_group"]["n_clusters"] == 3 and adata.uns["gene_group"]["sizes"] == [6, 3, 1]


def test_gene_groups_bad_input():
    adata = _adata(["a", "b", "c"])
    with pytest.raises(ValueError, match="only 3 genes"):
        gene_groups(adata, None, n_groups=7)
    with pytest.raises(ValueError, match="method"):
        gene_groups(adata, method="position")
    with pytest.raises(ValueError, match="no edge"), pytest.warns(UserWarning, match="network's 2 genes, 2 are not"):
        gene_groups(adata, [("x", "y")], n_groups=2)
    # named errors (were a slice TypeError, a gene-symbol hint); a gene named twice is one gene
    with pytest.raises(ValueError, match="n_groups: expected a positive integer or None, got 2.5"):
        gene_groups(adata, None, n_groups=2.5)
    with pytest.raises(ValueError, match="n_neighbors: expected a positive integer, got 0"):
        gene_groups(adata, None, n_groups=2, n_neighbors=0)
    with pytest.raises(ValueError, match="only 2 genes"):
        gene_groups(adata, None, genes=["a", "a", "b"], n_groups=3)
    with pytest.raises(ValueError, match="gene_sets"):
        gene_groups(adata, method="pathway", n_groups=2)
    with pytest.raises(ValueError, match="columns"):
        gene_groups(adata, pd.DataFrame({"u": ["a"], "v": ["b"]}), n_groups=2)


def test_integer_graph_nodes_match_gene_names_and_the_kept_count_includes_the_unlinked_group():
    """A networkx graph with integer nodes matches genes named "0", "1", ... as edge lists and DataFrames do (it
    matched nothing); with fewer clusters than asked, the warning counts the unlinked genes' own group."""
    import networkx as nx

    g = nx.DiGraph([(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)])
    adata = _adata([str(i) for i in range(6)] + ["LONELY"])
    with pytest.warns(UserWarning, match=r"only 2 clusters for n_groups=7; keeping 3 groups \(the clusters and"):
        gene_groups(adata, g, n_groups=7)
    assert adata.var["gene_group"].tolist() == [0, 0, 0, 1, 1, 1, 2]  # (ties by first gene name)
    assert adata.uns["gene_group"]["n_network_genes_absent"] == 0


def test_group_numbering_puts_the_unlinked_genes_last_whatever_their_number():
    """The documented numbering (benchmarks depend on it): kept clusters largest first, then the unlinked genes as
    the last group even when it is the largest (8 unlinked genes after two linked pairs); with n_groups=1 the
    unlinked genes join the one group."""
    adata = _adata([f"g{i}" for i in range(12)])
    net = [("g0", "g1"), ("g1", "g0"), ("g2", "g3"), ("g3", "g2")]
    gene_groups(adata, net, n_groups=3)
    assert adata.var["gene_group"].tolist() == [0, 0, 1, 1] + [2] * 8
    assert adata.uns["gene_group"]["sizes"] == [2, 2, 8]
    gene_groups(adata, net, n_groups=1)
    assert adata.var["gene_group"].tolist() == [0] * 12 and adata.uns["gene_group"]["sizes"] == [12]


def test_undirected_network_is_made_directed_both_ways_and_self_loops_are_ignored():
    g, genes = _cliques([8, 6])
    und = nx.Graph(g)  # symmetric version
    und.add_edge("SELF", "SELF")  # a gene whose only edge is a self-loop is unlinked
    adata = _adata([*genes, "SELF"])
    gene_groups(adata, und, n_groups=3)
    info = adata.uns["gene_group"]
    assert info["n_edges"] == 2 * (und.number_of_edges() - 1)  # each undirected edge both ways, no self-loop
    assert info["n_unlinked"] == 1 and info["sizes"] == [8, 6, 1]
    assert adata.var.loc["SELF", "gene_group"] == 2
    both = nx.DiGraph(und.to_directed())
    both.remove_node("SELF")
    b = _adata(genes)
    gene_groups(b, both, n_groups=2)
    assert b.uns["gene_group"]["modularity"] == pytest.approx(info["modularity"])


def test_fallback_log_normalises_raw_counts_over_all_genes():
    from scst.pp._gene_groups import _log_expression

    a = ad.AnnData(X=np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0]], dtype=np.float32))
    a.var_names = ["g0", "g1", "g2"]
    # library sizes 4 and 8 over all three genes, not over the two selected
    expected = np.log1p(np.array([[1e4 / 4, 3e4 / 4], [2e4 / 8, 2e4 / 8]]))
    np.testing.assert_allclose(_log_expression(a, ["g0", "g1"], None), expected, rtol=1e-6)
    a.layers["log"] = np.log1p(a.X)  # not counts: used as is
    np.testing.assert_allclose(_log_expression(a, ["g1"], "log"), np.log1p([[3.0], [2.0]]), rtol=1e-6)


def test_knn_coexpression_graph_matches_a_brute_force_correlation_ranking():
    """Each gene points to its k most Pearson-correlated other genes (on log1p-normalised counts), weighted by the
    correlation clipped at 0 (+1e-6); no self-loops, and k beyond the other genes links every pair."""
    from scst.pp._gene_groups import _knn_coexpression, _log_expression

    genes = [f"g{i}" for i in range(7)]
    adata = _adata(genes, n=40, seed=3, modules=np.array([0, 0, 0, 1, 1, 2, 2]))
    adata.X[:, 6] *= 1 + np.arange(40) % 3  # different scales per gene: the z-scoring matters
    corr = np.corrcoef(_log_expression(adata, genes, None).T)
    g = _knn_coexpression(adata, genes, None, k=2)
    for i, a in enumerate(genes):
        others = [j for j in np.argsort(-corr[i], kind="stable") if j != i][:2]
        assert set(g.successors(a)) == {genes[j] for j in others}
        for j in others:
            assert g[a][genes[j]]["weight"] == pytest.approx(max(corr[i, j], 0.0) + 1e-6, abs=1e-9)
    full = _knn_coexpression(adata, genes, None, k=50)
    assert full.number_of_edges() == 7 * 6 and nx.number_of_selfloops(full) == 0


def test_louvain_uses_the_given_resolution_seed_and_edge_weights():
    """The clusters are networkx's directed Louvain with the same resolution and seed (a random graph where both
    matter); the weights of a DataFrame or an edge list are used: a ring whose heavy edges pair its nodes."""
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(30)]
    net = nx.DiGraph()
    net.add_nodes_from(genes)
    net.add_edges_from((a, b) for a in genes for b in genes if a != b and rng.random() < 0.15)
    adata = _adata(genes)
    for resolution, seed in ((1.0, 0), (2.5, 0), (1.0, 1), (1.0, 2)):
        gene_groups(adata, net, n_groups=None, resolution=resolution, seed=seed)
        want = nx.community.louvain_communities(net, resolution=resolution, seed=seed)
        got = adata.var["gene_group"]
        assert adjusted_rand_score([next(i for i, c in enumerate(want) if g in c) for g in genes], got) == 1.0
        q = nx.community.modularity(net, want, resolution=resolution)
        assert adata.uns["gene_group"]["modularity"] == pytest.approx(q)
    ring = [f"r{i}" for i in range(6)]
    edges = []
    for i in range(6):
        a, b = ring[i], ring[(i + 1) % 6]
        w = 10.0 if i % 2 == 0 else 0.1
        edges += [(a, b, w), (b, a, w)]
    weighted = nx.DiGraph()
    weighted.add_weighted_edges_from(edges)
    q = nx.community.modularity(weighted, [{"r0", "r1"}, {"r2", "r3"}, {"r4", "r5"}], weight="weight")
    small = _adata(ring)
    for network in (edges, pd.DataFrame(edges, columns=["source", "target", "weight"])):
        gene_groups(small, network, n_groups=None)
        assert small.var["gene_group"].tolist() == [0, 0, 1, 1, 2, 2]
        assert small.uns["gene_group"]["modularity"] == pytest.approx(q)


def test_clusters_of_equal_size_are_numbered_by_their_first_gene_name():
    """Two clusters of two genes: {a0, z9} (first name a0) before {b0, b1}, whatever their last names."""
    adata = _adata(["b0", "b1", "a0", "z9"])
    net = [("a0", "z9"), ("z9", "a0"), ("b0", "b1"), ("b1", "b0")]
    gene_groups(adata, net, n_groups=2)
    assert adata.var["gene_group"].tolist() == [1, 1, 0, 0]


def test_panel_from_a_boolean_column_and_group_counts_at_the_edges():
    """genes= a boolean var column: only its genes are grouped (others -1); as many groups as genes is allowed,
    n_groups=0 is not; fewer clusters than asked is warned about and keeps what there is."""
    adata = _adata(["a", "b", "c", "d", "x", "y"])
    adata.var["hv"] = [True, True, True, True, False, False]
    net = [("a", "b"), ("b", "a"), ("c", "d"), ("d", "c"), ("x", "y"), ("y", "x")]
    with pytest.warns(UserWarning, match="network's 6 genes, 0 are not in the data and 2 are not in `genes`"):
        gene_groups(adata, net, n_groups=2, genes="hv")
    assert adata.var["gene_group"].tolist() == [0, 0, 1, 1, -1, -1]
    with pytest.warns(UserWarning, match="only 2 clusters for n_groups=4; keeping 2"):
        gene_groups(adata, net[:4], n_groups=4, genes=["a", "b", "c", "d"])
    assert adata.uns["gene_group"]["sizes"] == [2, 2]
    with pytest.warns(UserWarning, match="clusters for n_groups=6"):  # one group per gene at most: no error
        gene_groups(adata, None, n_groups=6, n_neighbors=1)
    with pytest.raises(ValueError, match="n_groups: expected a positive integer"):
        gene_groups(adata, net, n_groups=0)


@pytest.mark.parametrize(
    ("kw", "err", "match"),
    [
        ({"network": [("a", "b", 1.0, "x")]}, ValueError,
         r"network: edge 0 is \('a', 'b', 1.0, 'x'\); expected \(source, target\) or \(source, target, weight\)"),
        ({"network": 5}, TypeError, "network: expected a networkx graph, a DataFrame of edges.*got int"),
        ({"network": None, "unlinked": "keep"}, ValueError, "unlinked: expected 'drop' or 'group', got 'keep'"),
        ({"network": None, "genes": ["a", "zz"]}, KeyError,
         r"genes: 1 genes are not in adata.var_names, e.g. \['zz'\]"),
        ({"method": "pathway", "gene_sets": {"P": ["zz"]}}, ValueError, "gene_sets: no set contains a gene of `genes`"),
    ],
)  # fmt: skip
def test_gene_groups_more_bad_input(kw, err, match):
    with pytest.raises(err, match=match):
        gene_groups(_adata(["a", "b", "c"]), n_groups=2, **kw)
