"""scst.tl.ligand_receptor, its baselines, GCNG's gene-disjoint CV, metrics and function assignment."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import average_precision_score, roc_auc_score

from scst.models._gcng import GCNG
from scst.pp._graph_matrix import cell_graph, graph_matrix
from scst.tl._ligrec import ligand_receptor, lr_scores
from scst.tl._ligrec_cv import (
    LRFold,
    gene_function_cv,
    ligrec_cv,
    ligrec_metrics,
    lr_folds,
    read_gmt,
    shuffle_graph,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FAST = {**GCNG.fast_config, "max_epochs": 4, "patience": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    if not os.environ.get("SCST_DATA_DIR") and SHARED.is_dir():
        monkeypatch.setenv("SCST_DATA_DIR", str(SHARED))


def quadrant_data(n_side: int = 8, n_pairs: int = 120, seed: int = 0):
    """Known pairs (L_k, R_k) are co-expressed in one random quadrant each; every gene has the same level.

    A random negative (L_k, R_j) is in the same quadrant only 1 time in 4, so co-location separates the classes.
    """
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(n_side) for j in range(n_side)], float)
    quad = (xy[:, 0] >= n_side / 2) * 2 + (xy[:, 1] >= n_side / 2)
    cols, names, pairs, q_of = [], [], [], []
    for k in range(n_pairs):
        q = rng.integers(4)
        cols += [rng.poisson(1 + 5 * (quad == q)), rng.poisson(1 + 5 * (quad == q))]
        names += [f"L{k}", f"R{k}"]
        pairs.append((f"L{k}", f"R{k}"))
        q_of.append(q)
    cols.append(rng.poisson(10, size=(len(xy), 30)))
    names += [f"B{i}" for i in range(30)]
    adata = AnnData(sp.csr_matrix(np.column_stack(cols).astype(np.float32)), obsm={"spatial": xy})
    adata.var_names = names
    cell_graph(adata, radius=1.1, library_key=None)
    return adata, pd.DataFrame(pairs, columns=["ligand", "receptor"]).assign(quadrant=q_of)


def test_baseline_scores_by_hand():
    lig = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    rec = np.array([[2.0, 1.0], [4.0, 0.0], [6.0, 1.0], [9.0, 0.0]])
    np.testing.assert_allclose(
        lr_scores(lig, rec, "pearson"), [np.corrcoef(lig[:, i], rec[:, i])[0, 1] for i in (0, 1)]
    )
    np.testing.assert_allclose(lr_scores(lig, rec, "expression"), lig.mean(0) * rec.mean(0))
    path = sp.csr_matrix(np.diag(np.ones(3), 1) + np.diag(np.ones(3), -1))  # 0-1-2-3
    src, dst = [0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]
    expected = [np.corrcoef(lig[src, i], rec[dst, i])[0, 1] for i in (0, 1)]
    np.testing.assert_allclose(lr_scores(lig, rec, "spatial_pearson", path), expected)
    assert lr_scores(lig, np.ones_like(rec), "pearson").tolist() == [0.0, 0.0]  # constant gene → 0


def test_spatial_pearson_sees_exocrine_signal():
    # Receptor expressed next to ligand cells, never in them: within-cell Pearson < 0, spatial Pearson > 0.
    adata = AnnData(np.zeros((100, 2), dtype=np.float32))
    adata.obsm["spatial"] = np.array([(i, j) for i in range(10) for j in range(10)], float)
    cell_graph(adata, radius=1.1, library_key=None)
    a = adata.obsp["spatial_connectivities"]
    src = np.zeros(100)
    src[np.random.default_rng(0).choice(100, 12, replace=False)] = 1
    recv = ((a @ src) > 0) & (src == 0)
    lig, rec = (5 * src + 1)[:, None], (5 * recv + 1)[:, None].astype(float)
    assert lr_scores(lig, rec, "pearson")[0] < 0 < lr_scores(lig, rec, "spatial_pearson", a)[0]


def test_tool_writes_long_table_params_and_local_scores():
    adata, pairs = quadrant_data(n_pairs=20)
    extra = pd.concat([pairs, pd.DataFrame({"ligand": ["NOPE"], "receptor": ["R0"], "quadrant": [0]})])
    kept = r"\(the count is kept in uns\['scst_ligrec_params'\]\['n_pairs_absent'\]\)"
    with pytest.warns(UserWarning, match=r"skipped 1 of 21 pairs with genes absent from the data " + kept):
        out = ligand_receptor(adata, pairs=extra, method="spatial_pearson", local_scores=5, n_perms=19, copy=True)
    assert "scst_ligrec" not in adata.uns
    res = out.uns["scst_ligrec"]
    assert list(res.columns) == [
        "ligand_complex", "receptor_complex", "ligand_means", "ligand_props", "receptor_means", "receptor_props",
        "spatial_pearson_score", "spatial_pearson_pvals", "spatial_pearson_fdr", "magnitude_rank",
        "specificity_rank", "quadrant",
    ]  # fmt: skip
    assert len(res) == 20 and res["magnitude_rank"].is_monotonic_increasing
    assert res["spatial_pearson_score"].is_monotonic_decreasing  # one method: magnitude rank = score rank / n
    np.testing.assert_allclose(res["magnitude_rank"], np.arange(1, 21) / 20)
    assert res["spatial_pearson_pvals"].between(1 / 20, 1).all()
    assert (res["spatial_pearson_fdr"] >= res["spatial_pearson_pvals"] - 1e-12).all()
    params = out.uns["scst_ligrec_params"]
    assert params["n_pairs_input"] == 21 and params["n_pairs_absent"] == 1 and params["n_pairs_scored"] == 20
    assert params["nulls"] == {"spatial_pearson": "positions"} and params["n_perms"] == 19
    # the score is spatial Pearson of the normalised expression (hand-checkable formula in test_baseline_scores)
    from scst.models._gcng import entity_expression, normalized_expression

    norm = normalized_expression(adata, log1p=True)
    lig = entity_expression(norm, adata.var_names, res["ligand_complex"])
    rec = entity_expression(norm, adata.var_names, res["receptor_complex"])
    a = adata.obsp["spatial_connectivities"]
    np.testing.assert_allclose(res["spatial_pearson_score"], lr_scores(lig, rec, "spatial_pearson", a), rtol=1e-5)
    np.testing.assert_allclose(res["ligand_props"], (lig > 0).mean(0))
    local = out.obsm["scst_ligrec_local"]
    top = f"{res.ligand_complex[0]}^{res.receptor_complex[0]}"
    assert local.shape == (adata.n_obs, 5) and local.columns[0] == top
    # liana's local cosine on the spot-inclusive graph A + I, by hand for one spot
    w = (a != 0).toarray().astype(float) + np.eye(adata.n_obs)
    x, y = lig[:, 0].astype(float), rec[:, 0].astype(float)
    i = 9
    expect = (w[i] @ (x * y)) / np.sqrt((w[i] @ x**2) * (w[i] @ y**2))
    assert local.iloc[i, 0] == pytest.approx(expect, rel=1e-4)
    ligand_receptor(adata, pairs=pairs, method=["expression", "pearson"], key_added="expr", n_perms=9)
    e = adata.uns["expr"]
    np.testing.assert_allclose(e["expression_score"], e["ligand_means"] * e["receptor_means"], rtol=1e-6)
    assert e["expression_pvals"].isna().all() and e["pearson_pvals"].notna().all()  # no null for the control
    assert adata.uns["expr_params"]["nulls"] == {"expression": "none", "pearson": "ligand"}


def null_data(n_side: int = 12, n_sections: int = 2, n_pairs: int = 150, seed: int = 0):
    """Sections of exchangeable spots: every gene i.i.d. over spots (negative-binomial counts, abundance spread)."""
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(n_side) for j in range(n_side)], float)
    n = len(xy) * n_sections
    mu = rng.lognormal(0.5, 1.0, 2 * n_pairs + 50)
    counts = rng.negative_binomial(2, 2 / (2 + mu), size=(n, len(mu))).astype(np.float32)
    adata = AnnData(sp.csr_matrix(counts), obsm={"spatial": np.vstack([xy] * n_sections)})
    adata.var_names = [f"L{k}" for k in range(n_pairs)] + [f"R{k}" for k in range(n_pairs)] + [
        f"B{i}" for i in range(50)]  # fmt: skip
    adata.obs["section"] = np.repeat([f"s{i}" for i in range(n_sections)], len(xy))
    cell_graph(adata, radius=1.1, library_key="section")
    pairs = pd.DataFrame({"ligand": [f"L{k}" for k in range(n_pairs)], "receptor": [f"R{k}" for k in range(n_pairs)]})
    return adata, pairs


def test_pvalues_uniform_under_shuffled_data():
    from scipy.stats import kstest

    adata, pairs = null_data()
    ligand_receptor(adata, pairs=pairs, method=["spatial_pearson", "pearson", "bivariate"], n_perms=99, seed=1,
                    expr_prop=0.05)  # fmt: skip
    res = adata.uns["scst_ligrec"]
    assert len(res) > 120
    for m in ("spatial_pearson", "pearson", "bivariate"):
        p = res[f"{m}_pvals"].to_numpy()
        assert kstest(p, "uniform").pvalue > 0.01, m
        assert 0.4 < p.mean() < 0.6 and (res[f"{m}_fdr"] > 0.2).all(), m
    # the other null (positions of both genes shuffled) is uniform on exchangeable spots too
    ligand_receptor(adata, pairs=pairs, method="bivariate", null="positions", n_perms=99, key_added="pos")
    assert adata.uns["pos_params"]["nulls"] == {"bivariate": "positions"}
    assert kstest(adata.uns["pos"]["bivariate_pvals"], "uniform").pvalue > 0.01


def test_planted_pair_gets_a_small_pvalue():
    adata, pairs = null_data(n_pairs=30, seed=2)
    a = adata.obsp["spatial_connectivities"]
    x = adata.X.toarray()
    rng = np.random.default_rng(0)
    src = rng.random(adata.n_obs) < 0.1  # ligand-expressing spots; the receptor responds in their neighbours
    x[:, 0] = rng.poisson(np.where(src, 20, 0.3))
    near = np.asarray(a @ src.astype(float)).ravel() > 0
    x[:, 30] = rng.poisson(np.where(near, 15, 0.5))  # R0
    adata.X = sp.csr_matrix(x)
    ligand_receptor(adata, pairs=pairs, method=["spatial_pearson", "expression"], n_perms=999, expr_prop=0.05)
    res = adata.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])
    assert res.loc[("L0", "R0"), "spatial_pearson_pvals"] == pytest.approx(1 / 1000)
    assert res.loc[("L0", "R0"), "spatial_pearson_fdr"] < 0.05
    assert (res.drop(index=[("L0", "R0")])["spatial_pearson_fdr"] > 0.05).all()
    assert res["spatial_pearson_score"].idxmax() == ("L0", "R0") == res["specificity_rank"].idxmin()


def test_pairs_spelled_in_two_cases_are_one_pair_not_an_absent_one():
    """Matching is case-insensitive, so ("L0", "R0") and ("l0", "r0") are one pair: none is absent."""
    adata, _ = quadrant_data(n_pairs=2)
    pairs = [("L0", "R0"), ("l0", "r0"), ("L1", "R1"), ("L1", "NOPE")]
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 pairs with genes absent"):
        ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0)
    params = adata.uns["scst_ligrec_params"]
    assert (params["n_pairs_input"], params["n_pairs_absent"], params["n_pairs_scored"]) == (3, 1, 2)
    with warnings.catch_warnings():  # every pair present: nothing skipped, no warning
        warnings.simplefilter("error")
        ligand_receptor(adata, pairs=pairs[:3], method="pearson", n_perms=0, expr_prop=0)


def test_a_previous_result_rescored_as_pairs_gets_fresh_scores():
    """Re-scoring a previous table's pairs on other data: its score, rank and p-value columns overwrote the new
    ones (and another method's columns showed up as a method of this run)."""
    adata, pairs = quadrant_data(n_side=6, n_pairs=6)
    other, _ = quadrant_data(n_side=6, n_pairs=6, seed=5)
    ligand_receptor(adata, pairs=pairs, method=["spatial_pearson", "expression"], n_perms=5, expr_prop=0)
    old = adata.uns["scst_ligrec"].rename(columns={"ligand_complex": "ligand", "receptor_complex": "receptor"})
    with pytest.warns(UserWarning, match=r"pairs: column\(s\) \['ligand_means'.*'magnitude_rank'.* are dropped"):
        ligand_receptor(other, pairs=old, method="spatial_pearson", n_perms=5, expr_prop=0)
    fresh = ligand_receptor(other, pairs=pairs, method="spatial_pearson", n_perms=5, expr_prop=0, copy=True)
    got, want = other.uns["scst_ligrec"], fresh.uns["scst_ligrec"]
    pd.testing.assert_frame_equal(got[want.columns], want)
    assert "expression_score" not in got and "quadrant" in got  # the resource's own extra column is kept


def test_a_method_given_twice_is_an_error():
    """A repeated method entered the rank aggregates twice: magnitude_rank (and the order) changed silently."""
    adata, pairs = quadrant_data(n_pairs=4)
    with pytest.raises(ValueError, match="method: each method at most once"):
        ligand_receptor(adata, pairs=pairs, method=["spatial_pearson", "expression", "spatial_pearson"], n_perms=0)
    assert "scst_ligrec" not in adata.uns


def test_a_kernel_no_method_uses_is_an_error():
    """``kernel_key`` weighs only the bivariate metric and the local scores; with other methods it was ignored."""
    from scst.tl._ligrec_local import lr_kernel

    adata, pairs = quadrant_data(n_pairs=4)
    lr_kernel(adata, 2.0, um_per_unit=1.0)
    with pytest.raises(ValueError, match="kernel_key: the weights are used by method 'bivariate' and the local"):
        ligand_receptor(adata, pairs=pairs, method="spatial_pearson", kernel_key="scst_lr_kernel", n_perms=0)
    assert "scst_ligrec" not in adata.uns
    ligand_receptor(adata, pairs=pairs, method="pearson", kernel_key="scst_lr_kernel", n_perms=0, local_scores=2)
    assert adata.uns["scst_ligrec_params"]["kernel_key"] == "scst_lr_kernel"


def test_expr_prop_filter_is_counted():
    adata, pairs = quadrant_data(n_pairs=6)
    x = adata.X.toarray()
    x[:, 0] = 0
    x[:2, 0] = 5  # L0 detected in 2 of 64 spots (3 %)
    adata.X = sp.csr_matrix(x)
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0.1)
    params = adata.uns["scst_ligrec_params"]
    assert params["n_entities_below_expr_prop"] == 1 and params["entities_below_expr_prop"] == ["L0"]
    assert params["n_pairs_below_expr_prop"] == 1 and params["n_pairs_scored"] == 5
    assert "L0" not in set(adata.uns["scst_ligrec"]["ligand_complex"])
    assert "specificity_rank" not in adata.uns["scst_ligrec"]  # no permutations, no p-values
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0.01)
    assert adata.uns["scst_ligrec_params"]["n_pairs_scored"] == 6


def test_tool_bad_input():
    adata, pairs = quadrant_data(n_pairs=4)
    with pytest.raises(ValueError, match="none of the 1 pairs"):
        ligand_receptor(adata, pairs=pd.DataFrame({"ligand": ["X"], "receptor": ["Y"]}), method="pearson")
    with pytest.raises(ValueError, match="lacks required column"):
        ligand_receptor(adata, pairs=pairs.rename(columns={"receptor": "target"}), method="pearson")
    with pytest.raises(TypeError, match="liana's format"):
        ligand_receptor(adata, pairs=42, method="pearson")
    with pytest.raises(ValueError, match="tuples"):
        ligand_receptor(adata, pairs=["L0-R0"], method="pearson")
    with pytest.raises(ValueError, match="unknown ligand"):
        ligand_receptor(adata, pairs="not_a_resource", method="pearson")
    with pytest.raises(ValueError, match="method"):
        ligand_receptor(adata, pairs=pairs, method="cellphonedb")
    with pytest.raises(ValueError, match="null"):
        ligand_receptor(adata, pairs=pairs, null="labels")
    with pytest.raises(ValueError, match="local_name"):
        ligand_receptor(adata, pairs=pairs, method="bivariate", local_name="nope")
    with pytest.raises(KeyError, match="nope"):
        ligand_receptor(adata, pairs=pairs, method="spatial_pearson", connectivity_key="nope")
    with pytest.raises(ValueError, match="expr_prop"):
        ligand_receptor(adata, pairs=pairs, method="pearson", expr_prop=1e9)  # no pair left: clear message
    # a complex with a missing subunit: skipped with a warning naming it, counted; only such pairs: error
    cplx = pd.concat([pairs, pd.DataFrame({"ligand": ["L1"], "receptor": ["R1_MISSING"]})])
    with pytest.warns(UserWarning, match=r"R1_MISSING \(no MISSING\)"):
        ligand_receptor(adata, pairs=cplx, method="pearson", n_perms=0)
    assert adata.uns["scst_ligrec_params"]["complexes_missing_subunit"] == {"R1_MISSING": ["MISSING"]}
    with pytest.warns(UserWarning, match="missing|lack"), pytest.raises(ValueError, match="none of the 1 pairs"):
        ligand_receptor(adata, pairs=cplx.iloc[-1:], method="pearson")
    # a section without a graph
    sec = adata.copy()
    sec.obs["section"] = np.where(np.arange(sec.n_obs) < 60, "a", "b")
    sec.obsp["spatial_connectivities"] = sp.csr_matrix(sec.obsp["spatial_connectivities"].multiply(
        (np.arange(sec.n_obs) < 60)[:, None] & (np.arange(sec.n_obs) < 60)[None, :]))  # fmt: skip
    with pytest.raises(ValueError, match=r"Section\(s\) \['b'\] have no edges"):
        ligand_receptor(sec, pairs=pairs, method="spatial_pearson")
    ligand_receptor(sec, pairs=pairs, method="pearson", n_perms=9)  # non-spatial methods need no graph
    with pytest.raises(ValueError, match="no usable ligand"):
        lr_folds(pairs.iloc[:0])


def test_resources_in_liana_format():
    from scst.datasets._ligand_receptor import as_lr_table
    from scst.datasets._ligand_receptor import ligand_receptor as resource

    cpdb = resource("cellphonedb")  # through liana.resource.select_resource
    assert cpdb.attrs["resource"] == "cellphonedb" and cpdb["receptor"].str.contains("_").any()  # complexes
    omni = as_lr_table(pd.DataFrame({"source_genesymbol": ["A"], "target_genesymbol": ["B_C"]}))
    assert omni[["ligand", "receptor"]].values.tolist() == [["A", "B_C"]]
    assert as_lr_table([("A", "B")]).values.tolist() == [["A", "B"]]
    adata, pairs = quadrant_data(n_pairs=4)
    ligand_receptor(adata, pairs=[("L0", "R0"), ("L1", "R1_R2")], method="pearson", n_perms=0)
    assert adata.uns["scst_ligrec"]["receptor_complex"].tolist()[:2] in (["R0", "R1_R2"], ["R1_R2", "R0"])


def test_folds_are_gene_disjoint_with_complexes():
    from scst.datasets._ligand_receptor import complex_subunits
    from scst.datasets._ligand_receptor import ligand_receptor as lr_list

    pairs = lr_list("liana", "human").iloc[:800]
    folds = lr_folds(pairs, n_folds=10, seed=3)
    n_test = 0
    for f in folds:
        train_genes = {g for e in pd.concat([f.train.ligand, f.train.receptor]) for g in complex_subunits(e)}
        test_genes = {g for e in pd.concat([f.test.ligand, f.test.receptor]) for g in complex_subunits(e)}
        assert not train_genes & test_genes and not train_genes & f.test_genes
        assert (f.train.label == 1).sum() == (f.train.label == 0).sum()  # one negative per positive
        known = set(zip(pairs.ligand, pairs.receptor))
        assert not set(zip(f.train.ligand[f.train.label == 0], f.train.receptor[f.train.label == 0])) & known
        n_test += f.n_test_positives
    assert 0.05 * len(pairs) < n_test < 0.15 * len(pairs)  # ≈ 1 % of pairs per fold


def test_fold_genes_ignore_pair_order_and_never_reach_training():
    """The gene split is drawn over sorted names: the same pairs in another order give the same test genes, and no
    test gene (or subunit) is in a fold's training pairs, positives or drawn negatives."""
    from scst.datasets._ligand_receptor import complex_subunits

    pairs = pd.DataFrame({"ligand": [f"L{i % 12}" for i in range(30)] + ["L0", "R3"],
                          "receptor": [f"R{(i * 7) % 15}" for i in range(30)] + ["R1_R2", "R4_R5"]})  # fmt: skip
    folds = lr_folds(pairs, n_folds=3, seed=2)
    shuffled = lr_folds(pairs.sample(frac=1, random_state=0), n_folds=3, seed=2)
    assert [f.test_genes for f in folds] == [f.test_genes for f in shuffled]
    for f in folds + shuffled:
        seen = {g for e in pd.concat([f.train.ligand, f.train.receptor]) for g in complex_subunits(e)}
        assert f.test_genes and not seen & f.test_genes


def test_direction_and_permuted_folds():
    pairs = pd.DataFrame({"ligand": [f"L{i}" for i in range(40)] + ["A"], "receptor": [f"R{i}" for i in range(40)] +
                          ["L0"]})  # fmt: skip
    pairs = pd.concat([pairs, pd.DataFrame({"ligand": ["L0"], "receptor": ["A"]})])  # listed both ways: dropped
    for f in lr_folds(pairs, n_folds=4, task="direction"):
        pos, neg = f.train[f.train.label == 1], f.train[f.train.label == 0]
        assert list(zip(neg.ligand, neg.receptor)) == list(zip(pos.receptor, pos.ligand))
        assert "A" not in set(f.train.ligand) | set(f.test.ligand)
    perm = lr_folds(pairs.iloc[:40], n_folds=2, permute_labels=True, seed=1)
    pos = pd.concat([f.train[f.train.label == 1] for f in perm] + [f.test[f.test.label == 1] for f in perm])
    assert (pos.ligand.str[1:] != pos.receptor.str[1:]).mean() > 0.8  # re-paired
    with pytest.raises(ValueError, match="needs `expression`"):
        lr_folds(pairs, negatives="expression_matched")


def test_expression_matched_negatives_match_partner_level():
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"ligand": [f"L{i}" for i in range(300)], "receptor": [f"R{i}" for i in range(300)]})
    expr = pd.Series(rng.lognormal(0, 1.5, 300), index=pairs.receptor)
    rank = expr.rank()
    gap = {}
    for scheme in ("random", "expression_matched"):
        folds = lr_folds(pairs, n_folds=2, negatives=scheme, expression=expr, seed=0)
        t = pd.concat([f.train for f in folds])
        pos, neg = t[t.label == 1], t[t.label == 0]
        gap[scheme] = np.abs(rank[pos.receptor].to_numpy() - rank[neg.receptor].to_numpy()).mean()
    # random partners differ by ~1/3 of the ranks; matched ones by less than a decile of the fold's receptors
    assert gap["random"] > 70 and gap["expression_matched"] < 20


def niche_folds(n_side: int = 8, n_pairs: int = 60, seed: int = 0):
    """True pairs co-expressed in the left half (the niche), decoy receptors at the same level in the right half."""
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(n_side) for j in range(n_side)], float)
    niche = xy[:, 0] < n_side / 2
    cols, names, rows = [], [], []
    for k in range(n_pairs):
        lam = rng.uniform(1, 4)
        cols += [rng.poisson(lam * (1 + 2 * niche)), rng.poisson(lam * (1 + 2 * niche)),
                 rng.poisson(lam * (1 + 2 * ~niche))]  # fmt: skip
        names += [f"L{k}", f"R{k}", f"D{k}"]
        rows += [(f"L{k}", f"R{k}", 1, k % 3), (f"L{k}", f"D{k}", 0, k % 3)]
    adata = AnnData(sp.csr_matrix(np.column_stack(cols).astype(np.float32)), obsm={"spatial": xy})
    adata.var_names = names
    cell_graph(adata, radius=1.1, library_key=None)
    table = pd.DataFrame(rows, columns=["ligand", "receptor", "label", "fold"])
    folds = [LRFold(k, table[table.fold != k].drop(columns="fold"), table[table.fold == k].drop(columns="fold"))
             for k in range(3)]  # fmt: skip
    return adata, folds


def test_cv_finds_planted_signal_and_controls():
    adata, folds = niche_folds()
    methods = {"GCNG autocrine+": {"method": "gcng", "kind": "autocrine+"}, "expression": {"method": "expression"}}
    pred = ligrec_cv(adata, folds=folds, config=FAST, seed=0, methods=methods)
    assert set(pred.columns) == {"method", "fold", "ligand", "receptor", "label", "score"}
    m = ligrec_metrics(pred, n_boot=50).set_index("method")
    assert m.loc["GCNG autocrine+", "auroc"] > 0.9  # held-out genes: the model learnt *where*, not *which*
    assert m.loc["GCNG autocrine+", "auroc_lo"] <= m.loc["GCNG autocrine+", "auroc"] <= m.loc["GCNG autocrine+",
                                                                                              "auroc_hi"]  # fmt: skip
    assert abs(m.loc["expression", "auroc"] - 0.5) < 0.2  # decoys are as expressed as true partners
    # Co-location in one of four quadrants: spatial Pearson finds it, shuffled positions and permuted labels do not.
    qdata, pairs = quadrant_data()
    sp_methods = {"sp": {"method": "spatial_pearson"}, "sp shuffled": {"method": "spatial_pearson",
                                                                      "shuffle_positions": True}}  # fmt: skip
    q = ligrec_metrics(ligrec_cv(qdata, pairs, n_folds=3, methods=sp_methods, seed=0), n_boot=0).set_index("method")
    assert q.loc["sp", "auroc"] > 0.8 and q.loc["sp shuffled", "auroc"] < q.loc["sp", "auroc"] - 0.2
    perm_methods = {"GCNG": methods["GCNG autocrine+"], "sp": sp_methods["sp"]}
    perm = ligrec_cv(qdata, pairs, n_folds=3, methods=perm_methods, config=FAST, permute_labels=True, seed=0)
    pm = ligrec_metrics(perm, n_boot=0).set_index("method")
    assert abs(pm.loc["GCNG", "auroc"] - 0.5) < 0.2 and abs(pm.loc["sp", "auroc"] - 0.5) < 0.2


def test_cv_names_a_missing_shuffle_column():
    adata, pairs = quadrant_data(n_side=4, n_pairs=12)
    methods = {"sp": {"method": "spatial_pearson", "shuffle_positions": "fov"}}
    with pytest.raises(KeyError, match=r"'fov' not found in adata.obs \(methods\['sp'\]\['shuffle_positions'\]\)"):
        ligrec_cv(adata, pairs, methods=methods, n_folds=2)


def test_metrics_by_hand():
    pred = pd.DataFrame({"method": "m", "fold": [0, 0, 0, 0, 1, 1], "ligand": ["a", "a", "b", "b", "c", "c"],
                         "label": [1, 0, 1, 0, 1, 0], "score": [0.9, 0.1, 0.2, 0.8, 0.7, 0.7]})  # fmt: skip
    m = ligrec_metrics(pred, n_boot=20).iloc[0]
    # pooled: positives (.9, .2, .7) vs negatives (.1, .8, .7): 3 + 1 + 1.5 (a tie counts half) wins of 9
    assert m["auroc"] == pytest.approx(5.5 / 9)
    assert m["ligand_auroc_mean"] == pytest.approx((1 + 0 + 0.5) / 3) and m["ligand_auroc_median"] == 0.5
    assert m["fold_auroc_mean"] == pytest.approx((3 / 4 + 0.5) / 2) and m["n_folds_scored"] == 2
    with pytest.raises(ValueError, match="missing column"):
        ligrec_metrics(pred.drop(columns="score"))


def test_metrics_leave_out_nan_scores_as_the_roc_plot_does():
    """A NaN score crashed ligrec_metrics ("Input contains NaN") while pl.ligrec_roc drops it: both leave it out."""
    pred = pd.DataFrame({"method": "m", "fold": [0, 0, 0, 0, 1, 1], "ligand": ["a", "a", "b", "b", "c", "c"],
                         "label": [1, 0, 1, 0, 1, 0], "score": [0.9, 0.1, 0.2, 0.8, 0.7, 0.7]})  # fmt: skip
    unscored = pd.DataFrame({"method": ["m", "m", "u"], "fold": [0, 1, 0], "ligand": ["a", "c", "a"],
                             "label": [0, 1, 1], "score": np.nan})  # fmt: skip
    with pytest.warns(UserWarning, match="3 of 9 pairs have a NaN score"):
        m = ligrec_metrics(pd.concat([pred, unscored]), n_boot=20)
    want = ligrec_metrics(pred, n_boot=20)
    pd.testing.assert_frame_equal(m.iloc[:1], want)
    assert m.iloc[1]["method"] == "u" and (m.iloc[1]["n_pos"], m.iloc[1]["n_neg"]) == (0, 0)
    assert np.isnan(m.iloc[1]["auroc"]) and m.iloc[1]["n_folds_scored"] == 0


def test_shuffle_graph_stays_within_groups():
    a = sp.csr_matrix(np.diag(np.ones(5), 1) + np.diag(np.ones(5), -1))
    groups = np.array([0, 0, 0, 1, 1, 1])
    a[2, 3] = a[3, 2] = 0
    a.eliminate_zeros()
    s = shuffle_graph(a, groups, seed=0)
    assert s[:3, 3:].nnz == 0 and s.nnz == a.nnz
    assert sorted(np.asarray(s.sum(1)).ravel()) == sorted(np.asarray(a.sum(1)).ravel())


def test_shuffle_graph_names_cells_without_a_group():
    """NaN == NaN is False: cells with a NaN group formed no group and silently stayed in place (the control only
    partly shuffled); now an error. A permutation keeps each group's degrees."""
    a = sp.csr_matrix(np.ones((6, 6)) - np.eye(6))
    a[0, 1:] = a[1:, 0] = 0
    a.eliminate_zeros()
    groups = np.array(["s1", "s1", "s1", np.nan, np.nan, "s2"], dtype=object)
    with pytest.raises(ValueError, match=r"groups: 2 of 6 cells have no group \(NaN\)"):
        shuffle_graph(a, groups, seed=0)
    with pytest.raises(ValueError, match="no group"):
        shuffle_graph(a, pd.Series(["a", "a", "a", "b", "b", None], dtype="category").to_numpy(), seed=0)
    ok = np.array(["s1", "s1", "s1", "s2", "s2", "s2"])
    s = shuffle_graph(a, ok, seed=0)
    for g in ("s1", "s2"):
        idx = ok == g
        assert sorted(np.asarray(s[idx].sum(1)).ravel()) == sorted(np.asarray(a[idx].sum(1)).ravel())


def test_function_assignment_beats_chance(tmp_path):
    adata, pairs = quadrant_data(n_pairs=40, seed=1)
    graph_matrix(adata, "autocrine+")
    q0 = pairs[pairs.quadrant == 0]
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("quadrant0\tplanted\t" + "\t".join([*q0.ligand, *q0.receptor]) + "\n")
    sets = read_gmt(gmt)
    assert sets["quadrant0"][0] == q0.ligand.iloc[0]
    res = gene_function_cv(adata, str(gmt), n_folds=3, background_ratio=3, config=FAST, seed=0)
    frac = res.groupby("method")["fraction"].mean()
    assert set(res.columns) >= {"gene_set", "fold", "method", "hits", "fraction"}
    assert frac["GCNG"] > 0.6 and frac["GBA"] > 0.6  # chance is 0.2
    with pytest.raises(ValueError, match="need at least"):
        gene_function_cv(adata, ["L0", "R0"], n_folds=3)


@pytest.mark.slow
def test_function_assignment_names_a_missing_layer():
    adata, _ = quadrant_data(n_side=4, n_pairs=12)
    graph_matrix(adata)
    with pytest.raises(KeyError, match=r"Key 'counts' not found in adata.layers \(argument `layer`\)"):
        gene_function_cv(adata, [f"L{i}" for i in range(12)], layer="counts", n_folds=2)


@pytest.mark.parametrize("as_path", [str, Path])
def test_function_assignment_names_a_missing_gmt_file(tmp_path, as_path):
    adata, _ = quadrant_data(n_side=4, n_pairs=12)
    graph_matrix(adata)
    with pytest.raises(FileNotFoundError, match="gene_sets: no GMT file at .*nope.gmt"):
        gene_function_cv(adata, as_path(tmp_path / "nope.gmt"), n_folds=2)


def test_seqfish_field0_folds_mostly_without_positives():
    from scst.datasets import _ligand_receptor as lr
    from scst.datasets._seqfish import seqfish_cortex

    adata = seqfish_cortex()
    cell_graph(adata, radius=140)
    pred = ligrec_cv(adata, lr.ligand_receptor("gcng", "mouse"), methods={
        "diag": {"method": "gcng", "kind": "diagonal"}, "sp": {"method": "spatial_pearson"}}, config=FAST)  # fmt: skip
    folds = pred.attrs["folds"]
    assert pred.attrs["n_pairs"] == 68
    assert sum(f.n_test_positives > 0 for f in folds) <= 3  # a fold without positives is the normal case here
    assert set(pred["method"]) <= {"diag", "sp"} and (pred["label"].isin([0, 1])).all()


def test_bivariate_matches_liana_and_um_kernel():
    import liana as li

    from scst.models._gcng import normalized_expression
    from scst.tl._ligrec_local import lr_kernel

    adata, pairs = quadrant_data(n_pairs=8)
    ligand_receptor(adata, pairs=pairs, method="bivariate", n_perms=0, local_scores=3)
    ours = adata.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])["bivariate_score"]
    # liana.mt.bivariate itself, on the same normalised expression and the spot-inclusive graph A + I
    ref = AnnData(normalized_expression(adata, log1p=True).tocsr(), obsm={"spatial": adata.obsm["spatial"]})
    ref.var_names = adata.var_names
    ref.obsp["w"] = sp.csr_matrix((adata.obsp["spatial_connectivities"] != 0).astype(np.float32) + sp.eye(64))
    lr = li.mt.bivariate(ref, local_name="cosine", resource=pairs[["ligand", "receptor"]], connectivity_key="w",
                         nz_prop=0.0, use_raw=False, verbose=False)  # fmt: skip
    theirs = lr.var.set_index(["ligand", "receptor"])["mean"]
    np.testing.assert_allclose(ours.loc[theirs.index], theirs, rtol=1e-4)
    # Distance kernel in µm: 1 unit = 50 µm, bandwidth 50 µm → the 4 grid neighbours weigh exp(-1/2) ≈ 0.61,
    # diagonals (70.7 µm) exp(-1) ≈ 0.37, two steps exp(-2) = 0.14 (> cutoff 0.1); the spot itself 1.
    lr_kernel(adata, 50, um_per_unit=50.0, groups_key=None)
    w = adata.obsp["scst_lr_kernel"].toarray()
    i = 3 * 8 + 3
    assert w[i, i] == 1 and w[i, i + 1] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert w[i, i + 9] == pytest.approx(np.exp(-1), rel=1e-5) and w[i, i + 2] == pytest.approx(np.exp(-2), rel=1e-5)
    assert w[i, i + 3] == 0  # exp(-4.5) < cutoff
    ligand_receptor(adata, pairs=pairs, method="bivariate", kernel_key="scst_lr_kernel", n_perms=0, key_added="k")
    assert adata.uns["k_params"]["kernel_key"] == "scst_lr_kernel"
    assert not np.allclose(adata.uns["k"]["bivariate_score"].sort_values(), ours.sort_values())
    adata.obs["section"] = "s"
    with pytest.raises(ValueError, match="um_per_px"):
        lr_kernel(adata, 50)  # no scst geometry for µm


def test_magnitude_rank_of_one_method_is_rank_over_largest_rank_with_ties():
    """liana's normalisation: rank / max(rank), ties at their average rank (here not rank / n)."""
    adata, pairs = quadrant_data(n_pairs=4)
    x = adata.X.toarray()
    x[:, [4, 5, 6, 7]] = 0.0  # L2, R2, L3, R3 never detected: within-cell Pearson 0 for pairs 2 and 3 (a tie)
    adata.X = sp.csr_matrix(x)
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0)
    res = adata.uns["scst_ligrec"].set_index("ligand_complex")
    assert res.loc[["L2", "L3"], "pearson_score"].tolist() == [0.0, 0.0] and (res["pearson_score"].iloc[:2] > 0).all()
    np.testing.assert_allclose(res["magnitude_rank"], [1 / 3.5, 2 / 3.5, 1.0, 1.0])  # ranks 1, 2, 3.5, 3.5


def test_lr_kernel_rejects_um_per_unit_none():
    from scst.tl._ligrec_local import lr_kernel

    adata, _ = quadrant_data(n_pairs=2)
    with pytest.raises(ValueError, match="um_per_unit: expected a positive number or 'auto', got None"):
        lr_kernel(adata, 2.0, um_per_unit=None)


def test_lr_kernel_takes_numpy_scalars_as_um_per_unit():
    """A µm-per-unit computed with numpy (np.float32, np.int64) is a number, not an error."""
    from scst.tl._ligrec_local import lr_kernel

    adata, _ = quadrant_data(n_pairs=2)
    ref = lr_kernel(adata, 2.0, um_per_unit=0.5, copy=True).obsp["scst_lr_kernel"]
    for value in (np.float32(0.5), np.float64(0.5)):
        out = lr_kernel(adata, 2.0, um_per_unit=value, copy=True)
        assert (out.obsp["scst_lr_kernel"] != ref).nnz == 0
    lr_kernel(adata, 2.0, um_per_unit=np.int64(1))
    assert adata.uns["scst_lr_kernel_params"]["um_per_unit"] == {"0": 1.0}
    for bad in (np.float32(0.0), np.float64("nan"), np.inf, True):
        with pytest.raises(ValueError, match="um_per_unit: expected"):
            lr_kernel(adata, 2.0, um_per_unit=bad, copy=True)


@pytest.mark.parametrize("bandwidth", [float("nan"), np.inf, 0, -5.0, None])
def test_lr_kernel_rejects_a_bandwidth_that_is_not_a_finite_positive_distance(bandwidth):
    """A NaN bandwidth gave NaN weights and an infinite one weight 1 to every neighbour, without an error."""
    from scst.tl._ligrec_local import lr_kernel

    adata, _ = quadrant_data(n_pairs=2)
    with pytest.raises(ValueError, match="bandwidth: expected a finite positive distance in µm"):
        lr_kernel(adata, bandwidth, um_per_unit=1.0)
    assert "scst_lr_kernel" not in adata.obsp


@pytest.mark.parametrize("cutoff", [np.nan, -0.1, 1.0, True])
def test_lr_kernel_rejects_a_cutoff_that_is_not_a_weight(cutoff):
    """A NaN cutoff left every spot with only itself (no weight compared below NaN), without an error."""
    from scst.tl._ligrec_local import lr_kernel

    adata, _ = quadrant_data(n_pairs=2)
    with pytest.raises(ValueError, match=r"cutoff: expected a weight in \[0, 1\)"):
        lr_kernel(adata, 2.0, um_per_unit=1.0, cutoff=cutoff)
    assert "scst_lr_kernel" not in adata.obsp
    lr_kernel(adata, 2.0, um_per_unit=1.0, cutoff=np.float32(0.1))  # numpy floats are weights too
    assert "scst_lr_kernel" in adata.obsp


def test_lr_kernel_names_cells_with_nan_coordinates():
    from scst.tl._ligrec_local import lr_kernel

    adata, _ = quadrant_data(n_pairs=2)
    adata.obsm["spatial"][3, 0] = np.nan
    with pytest.raises(ValueError, match=r"adata.obsm\['spatial'\] \(argument `spatial_key`\): 1 cell\(s\) have NaN"):
        lr_kernel(adata, 2.0, um_per_unit=1.0)


def test_spatial_pearson_is_directed_ligand_to_receptor_and_ignores_self_loops():
    """Edges ``i → j`` pair the ligand of ``i`` with the receptor of ``j``: on the directed graph 0→1, 2→3 (plus
    self-loops, which are ignored) a ligand in 0 and a receptor in 1 correlate perfectly; swapped, not at all."""
    from scst.tl._ligrec_scores import score_function

    a = np.eye(4)  # self-loops i→i
    a[0, 1] = a[2, 3] = 1.0  # 0→1, 2→3
    adj = sp.csr_matrix(a)
    lig = np.array([[1.0], [0.0], [0.0], [0.0]])
    rec = np.array([[0.0], [1.0], [0.0], [0.0]])
    np.testing.assert_allclose(lr_scores(lig, rec, "spatial_pearson", adj), [1.0])
    np.testing.assert_allclose(lr_scores(rec, lig, "spatial_pearson", adj), [0.0])
    fn, null = score_function("spatial_pearson", adj)
    assert null == "positions"
    np.testing.assert_allclose(fn(lig, rec), [1.0])
    np.testing.assert_allclose(fn(rec, lig), [0.0])


def test_permutation_pvalues_ties_count_and_the_ligand_null_moves_only_the_ligand():
    """p = (1 + #{null ≥ observed}) / (1 + n_perms): a null equal to the observed score (exactly, or up to float
    noise) counts against it; the ligand null permutes the ligand's rows and hands the receptor over untouched."""
    from scst.tl._ligrec_scores import permutation_pvalues

    lig = np.arange(6.0)[:, None]
    rec = 10 + np.arange(6.0)[:, None]
    obs = np.array([0.1 + 0.2])  # 0.30000000000000004
    groups = np.array(["a"] * 3 + ["b"] * 3)
    p = permutation_pvalues(lambda lg, rc: np.array([0.3]), lig, rec, obs, null="ligand", groups=groups, n_perms=9)
    np.testing.assert_array_equal(p, [1.0])
    p = permutation_pvalues(lambda lg, rc: obs.copy(), lig, rec, obs, null="positions", groups=groups, n_perms=9)
    np.testing.assert_array_equal(p, [1.0])
    seen = []

    def record(lg, rc):
        seen.append((lg[:, 0].copy(), rc[:, 0].copy()))
        return np.array([0.0])

    permutation_pvalues(record, lig, rec, np.array([1.0]), null="ligand", groups=groups, n_perms=5)
    assert len(seen) == 5
    for lg, rc in seen:
        np.testing.assert_array_equal(rc, rec[:, 0])  # receptor untouched
        assert sorted(lg[:3]) == [0, 1, 2] and sorted(lg[3:]) == [3, 4, 5]  # ligand shuffled within sections
    assert any((lg != lig[:, 0]).any() for lg, _ in seen)


def test_section_permutations_take_groups_as_a_list():
    """groups as a list (the annotation says Sequence) gave no block, so every permutation was the identity and every
    permutation p-value 1; a label per cell is now required."""
    from scst.tl._ligrec_scores import section_permutations

    groups = ["a", "a", "a", "b", "b", "b"]
    from_list = list(section_permutations(groups, 6, 20, seed=1))
    np.testing.assert_array_equal(from_list, list(section_permutations(np.array(groups), 6, 20, seed=1)))
    assert any((p != np.arange(6)).any() for p in from_list)
    assert all(sorted(p[:3]) == [0, 1, 2] for p in from_list)
    with pytest.raises(ValueError, match=r"groups: expected one label per cell \(6\), got shape \(5,\)"):
        next(section_permutations(groups[:5], 6, 1))
    # a cell without a group (NaN != NaN) formed no block and was never permuted
    with pytest.raises(ValueError, match=r"groups: 2 of 6 cells have no group \(NaN\)"):
        next(section_permutations([1.0, 1.0, np.nan, 2.0, 2.0, np.nan], 6, 1))


def test_rank_aggregate_by_hand():
    """RRA of two methods: min_k BetaCDF(r_(k); k, m-k+1) · m capped at 1; a NaN score ranks last; an all-NaN
    column is left out."""
    from scst.tl._ligrec_scores import robust_rank_aggregate

    s = np.array([[3.0, 1.0], [2.0, 3.0], [1.0, 2.0]])  # higher is better: ranks (1, 3), (2, 1), (3, 2) of 3
    # row 0: sorted (1/3, 1): min(1 - (2/3)², 1) · 2 = 10/9 → 1; row 1: (1/3, 2/3): min(5/9, 4/9) · 2 = 8/9
    np.testing.assert_allclose(robust_rank_aggregate(s, [False, False]), [1.0, 8 / 9, 1.0])
    one = robust_rank_aggregate(np.array([np.nan, 1.0, 2.0]), [False])
    np.testing.assert_allclose(one, [1.0, 2 / 3, 1 / 3])
    with_nan_col = np.column_stack([[np.nan, 1.0, 2.0], [np.nan] * 3])
    np.testing.assert_allclose(robust_rank_aggregate(with_nan_col, [False, True]), one)


def test_rank_aggregate_is_lianas_on_average_ranks_with_ties():
    """The docstring's claim: LIANA's RRA. liana's own ``_robust_rank_aggregate`` on the average ranks (ties shared,
    ``ascending`` per column) gives the same values for one to five methods."""
    from liana.method._pipe_utils._aggregate import _robust_rank_aggregate
    from scipy.stats import rankdata

    from scst.tl._ligrec_scores import robust_rank_aggregate

    rng = np.random.default_rng(0)
    for m in range(1, 6):
        s = np.round(rng.normal(size=(40, m)), 1)  # rounded: ties within every column
        ascending = [bool(j % 2) for j in range(m)]
        signed = [s[:, j] if a else -s[:, j] for j, a in enumerate(ascending)]
        ranks = np.column_stack([rankdata(v, method="average") for v in signed])
        np.testing.assert_allclose(robust_rank_aggregate(s, ascending), _robust_rank_aggregate(ranks), rtol=1e-12)


def test_direction_folds_group_reversed_pairs_under_their_true_ligand():
    """task='direction': the negative of (L, R) is (R, L), and a per-ligand AUROC must compare it with (L, R): both
    belong to the group of the true ligand L; no fold's test positive is a training positive."""
    pairs = pd.DataFrame({"ligand": [f"L{i}" for i in range(12)], "receptor": [f"R{i}" for i in range(12)]})
    for f in lr_folds(pairs, n_folds=3, task="direction", seed=2):
        for split in (f.train, f.test):
            pos, neg = split[split.label == 1], split[split.label == 0]
            assert list(pos.group) == list(pos.ligand) and list(neg.group) == list(neg.receptor)
            assert set(split.group) <= set(pairs.ligand)
        train_pos = set(zip(f.train.ligand[f.train.label == 1], f.train.receptor[f.train.label == 1]))
        assert not train_pos & set(zip(f.test.ligand, f.test.receptor))


def test_lr_kernel_blocks_per_section_with_their_own_um_per_px():
    """Interleaved sections: weights stay inside each section, at that section's µm scale, diagonal 1."""
    from scst.tl._ligrec_local import lr_kernel

    adata = AnnData(np.zeros((4, 1), dtype=np.float32), obsm={"spatial": np.array([[0, 0], [0, 0], [1, 0], [2, 0.0]])})
    adata.obs["section"] = ["a", "b", "a", "b"]
    # both within-section pairs are 50 µm apart: 1 px x 50 µm (a) and 2 px x 25 µm (b); across sections 0 px
    adata.uns["scst"] = {"sections": {"a": {"um_per_px": 50.0}, "b": {"um_per_px": 25.0}}}
    lr_kernel(adata, 50)
    e = np.exp(-0.5)
    expected = [[1, 0, e, 0], [0, 1, 0, e], [e, 0, 1, 0], [0, e, 0, 1]]
    np.testing.assert_allclose(adata.obsp["scst_lr_kernel"].toarray(), expected, rtol=1e-5)
    assert adata.uns["scst_lr_kernel_params"]["um_per_unit"] == {"a": 50.0, "b": 25.0}
    with pytest.raises(ValueError, match="expected > 0"):
        lr_kernel(adata, 50, um_per_unit=0)


# ---------------------------------------------------------------------------------------------------------------
# GCNG cross-fitting and its permutation null, with stub models (no training)
# ---------------------------------------------------------------------------------------------------------------
class _StubGCNG:
    """Scores ``id + 0.5`` for the given known pairs, ``id`` otherwise; records what it was fit on and asked."""

    def __init__(self, model_id, train, pool, known, seed):
        from scst.models._gcng import sample_negatives

        self.id, self.train, self.pool, self.seed = model_id, train, list(pool), seed
        self.known = set(zip(known["ligand"], known["receptor"]))
        neg = sample_negatives(train, pool, known=known, seed=seed)
        self.training_pairs = pd.concat(
            [train.assign(label=1), neg[["ligand", "receptor", "label"]]], ignore_index=True
        )
        self._train_split, self._val_split, self.history = self.training_pairs, None, None
        self.calls = []

    def predict(self, pairs, cell_order=None, ligand_only=False):
        self.calls.append((list(zip(pairs["ligand"], pairs["receptor"])), cell_order, ligand_only))
        score = [self.id + 0.5 * (p in self.known) for p in zip(pairs["ligand"], pairs["receptor"])]
        return pairs.assign(score=score)


def test_gcng_scores_cross_fit_by_hand(monkeypatch):
    import scst.tl._ligrec_gcng as lg

    fits = []

    def fake_fit(adata, graph_key, train, pool, known, config, layer, normalize, seed, train_kwargs):
        fits.append(_StubGCNG(len(fits), train, pool, known, seed))
        return fits[-1]

    monkeypatch.setattr(lg, "_fit", fake_fit)
    known = pd.DataFrame(
        [(f"L{k}", f"R{(k + j) % 6}") for k in range(6) for j in (0, 1)], columns=["ligand", "receptor"]
    )
    new = pd.DataFrame({"ligand": [f"L{k}" for k in range(6)], "receptor": [f"N{k}" for k in range(6)]})
    cand = pd.concat([known, new], ignore_index=True)
    res = lg.gcng_scores(None, cand, known, graph_key="g", config={}, n_folds=3, seed=5)
    # fold models: the other folds' known pairs (whole ligands, two per fold); then one model on all known pairs
    assert len(fits) == len(res.models) == len(res.fit) == 4 and [f.seed for f in fits] == [5, 6, 7, 8]
    held = [set(known["ligand"]) - set(f.train["ligand"]) for f in fits[:3]]
    assert [len(h) for h in held] == [2, 2, 2] and set().union(*held) == set(known["ligand"])
    pd.testing.assert_frame_equal(fits[3].train.reset_index(drop=True), known)
    assert all(f.pool == [f"R{k}" for k in range(6)] + [f"N{k}" for k in range(6)] for f in fits)  # negatives' pool
    t = res.table
    fold_of = {lig: k for k, h in enumerate(held) for lig in h}
    is_known = t["receptor"].str.startswith("R").to_numpy()
    # a known pair is scored by the model of its fold (out-of-fold), a new pair by the model on all known pairs
    want_model = np.where(is_known, t["ligand"].map(fold_of), 3)
    np.testing.assert_array_equal(t["model"], want_model)
    np.testing.assert_allclose(t["score"], want_model + 0.5 * is_known)  # scored by that model
    seen = [set(zip(f.training_pairs["ligand"], f.training_pairs["receptor"])) for f in fits]
    want_in = [p in seen[m] for p, m in zip(zip(t["ligand"], t["receptor"]), want_model)]
    assert t["in_training"].tolist() == want_in and not t.loc[is_known, "in_training"].any()
    for k, row in enumerate(res.fit[:3]):  # held-out pairs against negatives of their ligands (stub: perfect score)
        assert row["model"] == f"fold {k}" and row["n_heldout_pairs"] == 8 and row["heldout_auroc"] == 1.0
        assert row["n_train_pairs"] == 16 and row["n_val_pairs"] == 0 and row["train_auroc"] == 1.0
    assert res.fit[3]["model"] == "all known pairs" and "heldout_auroc" not in res.fit[3]
    # as many folds as ligands works; fewer ligands, fewer than 2 folds, or one training receptor do not
    fits.clear()
    assert len(lg.gcng_scores(None, cand, known, graph_key="g", config={}, n_folds=6).models) == 7
    with pytest.raises(ValueError, match="cannot fill"):
        lg.gcng_scores(None, cand, known, graph_key="g", config={}, n_folds=7)
    with pytest.raises(ValueError, match="n_folds: expected >= 2"):
        lg.gcng_scores(None, cand, known, graph_key="g", config={}, n_folds=1)
    one_rec = pd.DataFrame({"ligand": ["L0", "L1", "L2"], "receptor": ["R0", "R0", "R1"]})
    with pytest.raises(ValueError, match="fewer than 2 training receptors"):
        lg.gcng_scores(None, one_rec, one_rec, graph_key="g", config={}, n_folds=3)


@pytest.mark.parametrize("null", ["ligand", "positions"])
def test_gcng_null_pvalues_by_hand(null):
    from scst.tl._ligrec_gcng import GCNGScores, gcng_null_pvalues
    from scst.tl._ligrec_scores import section_permutations

    class Stub:
        def __init__(self):
            self.calls = []

        def predict(self, pairs, cell_order=None, ligand_only=False):
            self.calls.append((list(pairs["ligand"]), np.asarray(cell_order).copy(), ligand_only))
            return pairs.assign(score=cell_order[0] / 10.0)  # the null score: which cell moved to cell 0

    groups = np.repeat(["a", "b"], 5)
    table = pd.DataFrame({"ligand": ["L0", "L1", "L2"], "receptor": ["R0", "R1", "R2"], "score": [0.0, 0.25, 0.2],
                          "model": [0, 1, 0]})  # fmt: skip
    result = GCNGScores(table, [Stub(), Stub()])
    p = gcng_null_pvalues(result, groups=groups, n_perms=20, seed=3, n_obs=10, null=null)
    m0, m1 = (m.calls for m in result.models)
    assert len(m0) == len(m1) == 20 and all(c[0] == ["L0", "L2"] for c in m0) and all(c[0] == ["L1"] for c in m1)
    assert all(c[2] == (null == "ligand") for c in m0 + m1)
    perms = np.array([c[1] for c in m0])
    np.testing.assert_array_equal(perms, list(section_permutations(groups, 10, 20, 3)))
    assert (np.sort(perms[:, :5], axis=1) == np.arange(5)).all()  # cells stay in their section
    null_scores = perms[:, 0] / 10.0
    want = [(1 + (null_scores >= s).sum()) / 21 for s in table["score"]]  # ties count as exceeding
    np.testing.assert_allclose(p, want)
    assert p[0] == 1.0
    assert np.isnan(gcng_null_pvalues(result, groups=groups, n_perms=0, seed=3, n_obs=10, null=null)).all()


@pytest.mark.parametrize("learned", [{"method": "gcng", "kind": "autocrine+"}, {"method": "gene_features"}])
def test_cv_fold_with_one_training_class_warns_and_scores_the_other_methods(learned):
    adata, folds = niche_folds(n_pairs=12)
    only_pos = folds[0].train[folds[0].train.label == 1]
    one_class = [LRFold(0, only_pos, folds[0].test)]
    methods = {"learned": learned, "expression": {"method": "expression"}}
    with pytest.warns(UserWarning, match=r"fold 0 has a single training class .*'learned' is not scored on its 8 test"):
        pred = ligrec_cv(adata, folds=one_class, config=FAST, seed=0, methods=methods)
    assert set(pred["method"]) == {"expression"}
    assert len(pred) == len(folds[0].test)


def test_cv_without_test_positives_warns():
    adata, folds = niche_folds(n_pairs=12)
    negatives_only = [LRFold(f.fold, f.train, f.test[f.test.label == 0]) for f in folds]
    with pytest.warns(UserWarning, match="no fold has a test positive"):
        ligrec_cv(adata, folds=negatives_only, seed=0, methods={"expression": {"method": "expression"}})


def test_metrics_groups_counts_and_bootstrap_by_hand():
    # `group` (the true ligand of a reversed pair) is the per-ligand unit, within each fold; single-class ligands and
    # folds are not scored. Per-(fold, group) AUROCs: (0, a) = 1, (0, b) = 1, (1, a) = 0; (1, c) and (2, d) one class.
    pred = pd.DataFrame({"method": "m", "fold": [0, 0, 0, 0, 1, 1, 1, 2],
                         "ligand": ["a", "x", "b", "b", "a", "a", "c", "d"],
                         "group": ["a", "a", "b", "b", "a", "a", "c", "d"],
                         "label": [1, 0, 1, 0, 1, 0, 1, 0],
                         "score": [0.9, 0.1, 0.8, 0.3, 0.2, 0.6, 0.5, 0.4]})  # fmt: skip
    m = ligrec_metrics(pred, n_boot=200, ci=0.8, seed=7).iloc[0]
    assert (m["n_pos"], m["n_neg"]) == (4, 4)
    assert m["auroc"] == pytest.approx(12 / 16)  # positives .9, .8 beat all four negatives, .2 one, .5 three
    assert m["n_ligands_scored"] == 3 and m["ligand_auroc_mean"] == pytest.approx(2 / 3)
    assert m["ligand_auroc_median"] == 1.0
    assert m["n_folds_scored"] == 2 and m["fold_auroc_mean"] == pytest.approx(0.5)  # fold 0: 1, fold 1: 0
    # bootstrap: positives and negatives resampled separately with the given seed, [10, 90] percentiles for ci=0.8
    rng = np.random.default_rng(7)
    y, s = pred["label"].to_numpy(), pred["score"].to_numpy()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    lab = np.r_[np.ones(4), np.zeros(4)]
    boots = []
    for _ in range(200):
        b = np.r_[s[rng.choice(pos, 4)], s[rng.choice(neg, 4)]]
        boots.append((roc_auc_score(lab, b), average_precision_score(lab, b)))
    lo_hi = np.percentile(np.array(boots), [10, 90], axis=0)
    np.testing.assert_allclose([m["auroc_lo"], m["auroc_hi"]], lo_hi[:, 0])
    np.testing.assert_allclose([m["auprc_lo"], m["auprc_hi"]], lo_hi[:, 1])
    assert not np.isclose(lo_hi[0, 0], lo_hi[0, 1])  # the AUROC and AUPRC bounds differ here


def test_metrics_warn_on_few_pairs_and_give_no_interval_for_a_single_pair():
    """GCNG's folds on seqFISH+ field 0 (docs/gcng.md) scored one positive and one negative: AUROC 1 with a bootstrap
    interval [1, 1], which resampling a single pair of each class cannot widen."""
    one = pd.DataFrame({"method": "m", "fold": 0, "ligand": "a", "label": [1, 0], "score": [0.9, 0.1]})
    msg = r"1 group\(s\) scored on fewer than 10 pairs of a class.*m: 1 positive.*no bootstrap interval where a class"
    with pytest.warns(UserWarning, match=msg):
        m = ligrec_metrics(one, n_boot=50).iloc[0]
    assert m["auroc"] == 1.0 and np.isnan(m[["auroc_lo", "auroc_hi", "auprc_lo", "auprc_hi"]].to_numpy(float)).all()
    # 2 positives, 9 negatives: warned (naming the counts and the group), still bootstrapped
    few = pd.DataFrame({"method": ["m"] * 11, "fold": 0, "ligand": "a", "label": [1, 1] + [0] * 9,
                        "score": [0.9, 0.3] + list(np.linspace(0, 1, 9))})  # fmt: skip
    with pytest.warns(UserWarning, match=r"m: 2 positive\(s\), 9 negative\(s\)\)\.$"):  # no single-pair clause
        m = ligrec_metrics(few, n_boot=50).iloc[0]
    assert m["auroc_lo"] < m["auroc_hi"]
    # 10 of each class: no warning
    many = pd.DataFrame({"method": "m", "fold": np.arange(20) % 2, "ligand": "a", "label": [1] * 10 + [0] * 10,
                         "score": np.r_[np.linspace(0.3, 1, 10), np.linspace(0, 0.7, 10)]})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ligrec_metrics(many, n_boot=50).iloc[0]
    assert m["auroc_lo"] < m["auroc_hi"] and (m["n_pos"], m["n_neg"]) == (10, 10)


class _CVStub:
    """A fitted-GCNG stand-in for ligrec_cv: scores pairs by their position in the request."""

    def __init__(self, train):
        self._train_split, self._val_split, self.history = train, None, None

    def predict(self, pairs):
        return pairs.assign(score=np.arange(len(pairs), dtype=float))


def test_cv_seeds_each_fold_and_shares_its_normalisation_only_when_it_matches(monkeypatch):
    import scst.tl._ligrec_cv as cv
    from scst.models._gcng import normalized_expression

    adata, folds = niche_folds(n_pairs=12)
    calls = []

    def fake_fit(work, gkey, train, cfg, layer, normalize, seed, train_kwargs, norm=None):
        calls.append((seed, norm))
        return _CVStub(train)

    monkeypatch.setattr(cv, "_fit_gcng", fake_fit)
    methods = {
        "log": {"method": "gcng", "kind": "autocrine+"},  # config log1p = the CV's log1p: the CV's matrix is reused
        "raw": {"method": "gcng", "kind": "autocrine+", "config": {"log1p": False}},  # differs: the model's own
        "expr": {"method": "expression"},
    }
    pred = ligrec_cv(adata, folds=folds, config={**FAST, "log1p": True}, seed=5, methods=methods)
    assert [c[0] for c in calls] == [5, 6, 7, 5, 6, 7]  # seed + fold, per method
    want = normalized_expression(adata, log1p=True).toarray()
    for _, norm in calls[:3]:
        np.testing.assert_allclose(norm.toarray(), want)
    assert all(norm is None for _, norm in calls[3:])
    # an explicit log1p=False wins over the config's for the baselines: mean(L) * mean(R) of the scaled counts
    pred = ligrec_cv(adata, folds=folds, config={**FAST, "log1p": True}, log1p=False, methods={"e": methods["expr"]})
    x = pd.DataFrame(normalized_expression(adata, log1p=False).toarray(), columns=adata.var_names).mean()
    np.testing.assert_allclose(pred["score"], x[pred["ligand"]].to_numpy() * x[pred["receptor"]].to_numpy(), rtol=1e-5)


def test_cv_builds_its_folds_with_the_seed_matched_negatives_and_shuffle_groups(monkeypatch):
    import scst.tl._ligrec_cv as cv
    from scst.models._gcng import normalized_expression

    qdata, pairs = quadrant_data(n_pairs=40)
    pairs = pairs[["ligand", "receptor"]]
    qdata.obs["half"] = np.where(qdata.obsm["spatial"][:, 1] < 4, "low", "high")
    seen = []

    def recording_shuffle(matrix, groups=None, seed=0):
        seen.append(groups)
        return shuffle_graph(matrix, groups, seed=seed)

    monkeypatch.setattr(cv, "shuffle_graph", recording_shuffle)
    methods = {"e": {"method": "expression"}, "s": {"method": "spatial_pearson", "shuffle_positions": "half"}}
    pred = ligrec_cv(qdata, pairs, n_folds=3, negatives="expression_matched", log1p=True, seed=3, methods=methods)
    # expression_matched negatives: bins of each receptor's mean expression (the CV's normalisation)
    x = pd.DataFrame(normalized_expression(qdata, log1p=True).toarray(), columns=qdata.var_names).mean()
    want = lr_folds(pairs, n_folds=3, negatives="expression_matched", expression=x[pairs["receptor"]], seed=3)
    for got, exp in zip(pred.attrs["folds"], want, strict=True):
        pd.testing.assert_frame_equal(got.train, exp.train)
        pd.testing.assert_frame_equal(got.test, exp.test)
    assert len(seen) == 1 and seen[0].tolist() == qdata.obs["half"].tolist()  # cells permuted within obs["half"]


# ---------------------------------------------------------------------------------------------------------------
# Pair scores, nulls and the tool's table: known answers (mutation sweep)
# ---------------------------------------------------------------------------------------------------------------
def test_spot_inclusive_weights_binarise_the_graph_and_weigh_every_spot_one():
    """``A + I`` on a weighted graph: every edge weighs 1 whatever its weight, an explicit 0 is no edge, the diagonal
    is 1 (also where the graph had a self-loop of another weight)."""
    from scst.tl._ligrec_scores import score_function, spot_inclusive_weights

    a = sp.csr_matrix(([3.0, 2.5, 4.0, 0.5, 0.0], [0, 1, 2, 0, 2], [0, 3, 5, 5]), shape=(3, 3))  # (1, 2): a stored 0
    # rows stay rows (row i: the neighbours of spot i, as liana weighs them): the directed edge 0 → 2 is not 2 → 0
    np.testing.assert_array_equal(spot_inclusive_weights(a).toarray(), [[1, 1, 1], [1, 1, 0], [0, 0, 1]])
    # the bivariate score sees the binarised graph: a weighted graph scores as its 0/1 version
    rng = np.random.default_rng(0)
    lig, rec = rng.poisson(3, (3, 2)).astype(float) + 1, rng.poisson(3, (3, 2)).astype(float) + 1
    fn_w, _ = score_function("bivariate", a)
    fn_b, _ = score_function("bivariate", sp.csr_matrix((a != 0).astype(float)))
    np.testing.assert_allclose(fn_w(lig, rec), fn_b(lig, rec), rtol=1e-6)


def test_default_nulls_of_the_score_functions():
    """Within-cell Pearson and liana's bivariate metrics: ligand null; spatial Pearson: positions; the expression
    control: none."""
    from scst.tl._ligrec_scores import score_function

    adj = sp.csr_matrix(np.diag(np.ones(3), 1) + np.diag(np.ones(3), -1))
    want = {"pearson": "ligand", "spatial_pearson": "positions", "bivariate": "ligand", "expression": "none"}
    assert {m: score_function(m, adj)[1] for m in want} == want


def test_spatial_pearson_without_edges_warns_or_raises():
    """Self-loops are no edges: ``lr_scores`` warns and returns 0, ``score_function`` refuses the graph."""
    from scst.tl._ligrec_scores import score_function

    lig = np.arange(8.0).reshape(4, 2)
    with pytest.warns(UserWarning, match="no edges"):
        out = lr_scores(lig, lig[::-1], "spatial_pearson", sp.eye(4, format="csr"))
    np.testing.assert_array_equal(out, [0.0, 0.0])
    with pytest.raises(ValueError, match="no edges"):
        score_function("spatial_pearson", sp.eye(4, format="csr"))


def test_permutation_pvalues_are_one_sided_and_exact_for_one_permutation():
    """Only nulls at least as *high* as the observed score count: a null far below a positive score (larger in
    absolute value) does not; a strongly negative observed score gets p = 1. One permutation: p in {1/2, 1}."""
    from scst.tl._ligrec_scores import permutation_pvalues

    lig = np.arange(6.0)[:, None]
    rec = np.arange(6.0)[:, None]
    low = permutation_pvalues(lambda lg, rc: np.array([-6.0, 0.0]), lig, rec, np.array([5.0, -5.0]), null="ligand",
                              groups=None, n_perms=9)  # fmt: skip
    np.testing.assert_allclose(low, [1 / 10, 1.0])
    one = permutation_pvalues(lambda lg, rc: np.array([0.0, 2.0]), lig, rec, np.array([1.0, 1.0]), null="positions",
                              groups=None, n_perms=1)  # fmt: skip
    np.testing.assert_allclose(one, [0.5, 1.0])


def test_tool_means_props_by_hand_with_a_complex_at_its_scarcest_subunit():
    """Raw values (no normalisation): the ligand columns describe the ligand, the receptor columns the receptor; a
    complex is the minimum over its subunits (liana's rule), in its means and props."""
    x = np.array([[2, 0, 0], [0, 1, 2], [4, 1, 0], [0, 1, 5]], dtype=np.float32)  # genes L, R, B
    adata = AnnData(x)
    adata.var_names = ["L", "R", "B"]
    ligand_receptor(adata, pairs=[("L", "R"), ("L", "R_B")], method="expression", n_perms=0, expr_prop=0,
                    normalize=False, log1p=False, groups_key=None)  # fmt: skip
    res = adata.uns["scst_ligrec"].set_index("receptor_complex")
    # L = (2, 0, 4, 0); R = (0, 1, 1, 1); R_B = min(R, B) = (0, 1, 0, 1)
    np.testing.assert_allclose(res.loc[["R", "R_B"], "ligand_means"], [1.5, 1.5])
    np.testing.assert_allclose(res.loc[["R", "R_B"], "ligand_props"], [0.5, 0.5])
    np.testing.assert_allclose(res.loc[["R", "R_B"], "receptor_means"], [0.75, 0.5])
    np.testing.assert_allclose(res.loc[["R", "R_B"], "receptor_props"], [0.75, 0.5])
    np.testing.assert_allclose(res.loc[["R", "R_B"], "expression_score"], [1.5 * 0.75, 1.5 * 0.5])
    assert (res["ligand_complex"] == "L").all()


def test_expr_prop_keeps_an_entity_detected_in_exactly_that_fraction():
    """An entity detected in exactly ``expr_prop`` of the spots is kept; under it, its pairs go, whether it is the
    ligand or the receptor."""
    x = np.array([[3, 1, 0, 1], [0, 2, 0, 1], [0, 1, 5, 1], [0, 4, 0, 1]], dtype=np.float32)
    adata = AnnData(x)  # L and R2 detected in 1 of 4 spots, R and L2 in all
    adata.var_names = ["L", "R", "R2", "L2"]
    kw = {"pairs": [("L", "R"), ("L2", "R2"), ("L2", "R")], "method": "pearson", "n_perms": 0, "groups_key": None}
    ligand_receptor(adata, expr_prop=0.25, **kw)
    assert adata.uns["scst_ligrec_params"]["n_pairs_scored"] == 3
    ligand_receptor(adata, expr_prop=0.26, **kw)
    params, res = adata.uns["scst_ligrec_params"], adata.uns["scst_ligrec"]
    assert params["entities_below_expr_prop"] == ["L", "R2"] and params["n_pairs_below_expr_prop"] == 2
    assert res[["ligand_complex", "receptor_complex"]].values.tolist() == [["L2", "R"]]


def test_tool_null_groups_seed_and_bad_values():
    """The ligand null shuffles within sections (``groups_key="auto"`` finds ``section``): a ligand constant within
    each section never changes, so p = 1 (and the score, standardised within sections, is 0); all spots as one group,
    the score is the pooled correlation and its p falls to 1 / (1 + n_perms). The expression
    control gets no null whatever ``null`` says; the seed drives the permutations."""
    rng = np.random.default_rng(0)
    lig = np.repeat([5.0, 1.0], 8)  # constant within each section
    rec = np.concatenate([rng.uniform(3, 6, 8), rng.uniform(0, 2, 8)])  # higher in the ligand-rich section
    adata = AnnData(np.column_stack([lig, rec]).astype(np.float32))
    adata.var_names = ["L", "R"]
    adata.obs["section"] = np.repeat(["s0", "s1"], 8)
    kw = {"pairs": [("L", "R")], "method": "pearson", "n_perms": 19, "expr_prop": 0, "normalize": False,
          "log1p": False}  # fmt: skip
    ligand_receptor(adata, **kw)
    assert adata.uns["scst_ligrec_params"]["groups_key"] == "section"
    res = adata.uns["scst_ligrec"]
    # within sections the ligand does not vary: no correlation (pooled, the sections' levels read as 0.8+), p = 1
    assert res["pearson_score"].iloc[0] == 0.0 and res["pearson_pvals"].iloc[0] == 1.0
    ligand_receptor(adata, **{**kw, "groups_key": None})
    assert adata.uns["scst_ligrec"]["pearson_score"].iloc[0] > 0.8
    assert adata.uns["scst_ligrec"]["pearson_pvals"].iloc[0] == pytest.approx(1 / 20)
    # explicit null: the control stays without p-values; the seed changes the permutations, the same seed repeats
    data, pairs = null_data(n_side=6, n_sections=1, n_pairs=6)  # exchangeable spots: p-values spread over (0, 1]
    run = {"pairs": pairs, "method": ["expression", "spatial_pearson"], "n_perms": 19, "expr_prop": 0}
    ligand_receptor(data, null="positions", key_added="a", seed=0, **run)
    ligand_receptor(data, null="positions", key_added="b", seed=0, **run)
    ligand_receptor(data, null="positions", key_added="c", seed=1, **run)
    assert data.uns["a_params"]["nulls"] == {"expression": "none", "spatial_pearson": "positions"}
    assert data.uns["a"]["expression_pvals"].isna().all() and data.uns["a"]["expression_fdr"].isna().all()
    pa, pb, pc = (data.uns[k].set_index("ligand_complex")["spatial_pearson_pvals"].sort_index() for k in "abc")
    pd.testing.assert_series_equal(pa, pb)
    assert not np.allclose(pa, pc)
    with pytest.raises(ValueError, match="n_perms: expected >= 0"):
        ligand_receptor(data, pairs=pairs, method="pearson", n_perms=-1)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"expr_prop: expected a fraction in \[0, 1\]"):
            ligand_receptor(data, pairs=pairs, method="pearson", expr_prop=bad)


def test_a_methods_pvalues_do_not_depend_on_the_other_methods_listed():
    """Each method's permutations came from ``seed + 7919 * position``: the same method, data and seed gave other
    p-values when another method was listed before it."""
    data, pairs = null_data(n_side=6, n_sections=1, n_pairs=6)
    run = {"pairs": pairs, "n_perms": 19, "expr_prop": 0, "seed": 3}
    ligand_receptor(data, method="spatial_pearson", key_added="alone", **run)
    ligand_receptor(data, method=["pearson", "expression", "spatial_pearson"], key_added="third", **run)
    ligand_receptor(data, method="pearson", key_added="pearson_alone", **run)
    ligand_receptor(data, method=["spatial_pearson", "pearson"], key_added="second", **run)

    def pvals(key, m):
        return data.uns[key].set_index("ligand_complex")[f"{m}_pvals"].sort_index()

    pd.testing.assert_series_equal(pvals("alone", "spatial_pearson"), pvals("third", "spatial_pearson"))
    pd.testing.assert_series_equal(pvals("pearson_alone", "pearson"), pvals("second", "pearson"))
    assert pvals("alone", "spatial_pearson").nunique() > 2  # p-values that could differ


def test_tool_needs_edges_besides_self_loops():
    adata, pairs = quadrant_data(n_pairs=2)
    adata.obsp["spatial_connectivities"] = sp.eye(adata.n_obs, format="csr")  # self-loops only
    with pytest.raises(ValueError, match="has no edges; build the cell graph first"):
        ligand_receptor(adata, pairs=pairs, method="bivariate", n_perms=0, groups_key=None)


def test_local_scores_on_a_kernel_by_hand_and_all_pairs_up_to_fifty():
    """``local_scores=True``: every pair (up to 50); on ``kernel_key`` the local cosine uses the kernel's weights
    as they are (not binarised), and the bivariate score is its mean over spots."""
    from scst.models._gcng import entity_expression, normalized_expression
    from scst.tl._ligrec_local import lr_kernel

    adata, pairs = quadrant_data(n_pairs=4)
    lr_kernel(adata, 50, um_per_unit=50.0, groups_key=None)
    ligand_receptor(adata, pairs=pairs, method="bivariate", kernel_key="scst_lr_kernel", n_perms=0, local_scores=True)
    res, local = adata.uns["scst_ligrec"], adata.obsm["scst_ligrec_local"]
    assert list(local.columns) == [f"{lg}^{rc}" for lg, rc in zip(res["ligand_complex"], res["receptor_complex"])]
    assert local.shape == (adata.n_obs, 4)
    norm = normalized_expression(adata, log1p=True)
    w = adata.obsp["scst_lr_kernel"].toarray().astype(float)
    for j, (lg, rc) in enumerate(zip(res["ligand_complex"], res["receptor_complex"])):
        x = entity_expression(norm, adata.var_names, [lg])[:, 0].astype(float)
        y = entity_expression(norm, adata.var_names, [rc])[:, 0].astype(float)
        expect = (w @ (x * y)) / np.sqrt((w @ x**2) * (w @ y**2))
        np.testing.assert_allclose(local.iloc[:, j], expect, rtol=1e-4)
        assert res["bivariate_score"].iloc[j] == pytest.approx(expect.mean(), rel=1e-4)


def test_kernel_across_sections_is_warned_about():
    adata, pairs = quadrant_data(n_pairs=2)
    adata.obs["section"] = np.where(np.arange(adata.n_obs) < 32, "a", "b")
    adata.obsp["k"] = sp.csr_matrix(np.full((adata.n_obs, adata.n_obs), 0.5, dtype=np.float32))
    with pytest.warns(UserWarning, match=r"adata.obsp\['k'\] join cells of different sections"):
        ligand_receptor(adata, pairs=pairs, method="bivariate", kernel_key="k", n_perms=0, expr_prop=0)


def test_organism_is_guessed_from_the_symbols_case():
    from scst.tl._ligrec import _guess_organism

    assert _guess_organism(pd.Index(["Actb", "Col1a1", "Lrp1", "ACTB"])) == "mouse"
    assert _guess_organism(pd.Index(["ACTB", "COL1A1", "LRP1", "Actb"])) == "human"


def test_gcng_fit_trains_on_its_pairs_against_unknown_negatives_with_its_seed(monkeypatch):
    """``_fit`` (one cross-fitting model): the given seed overrides the config's, the training table is the fold's
    known pairs (label 1) and one negative each that is not a known pair of *any* fold, and the caller's train
    arguments reach :meth:`GCNG.train` on top of the quiet CPU defaults."""
    import scst.tl._ligrec_gcng as lg

    calls = {}

    class Recorder:
        @staticmethod
        def setup_anndata(adata, **kw):
            calls["setup"] = kw

        def __init__(self, adata, **kw):
            calls["init"] = kw

        def train(self, table, **kw):
            calls["table"], calls["train"] = table, kw

    monkeypatch.setattr(lg, "GCNG", Recorder)
    train = pd.DataFrame({"ligand": [f"L{k}" for k in range(5)], "receptor": ["R0"] * 5})
    # every ligand is also known to bind R1 and R2 (pairs of other folds): R3 is its only possible negative
    known = pd.concat([train, train.assign(receptor="R1"), train.assign(receptor="R2")], ignore_index=True)
    lg._fit("adata", "g", train, ["R0", "R1", "R2", "R3"], known, {"seed": 99, "lr": 0.1}, "counts", False, 5,
            {"max_epochs": 3})  # fmt: skip
    assert calls["setup"] == {"graph_key": "g", "layer": "counts", "normalize": False}
    assert calls["init"] == {"seed": 5, "lr": 0.1}
    t = calls["table"]
    pd.testing.assert_frame_equal(t.loc[t.label == 1, ["ligand", "receptor"]].reset_index(drop=True), train)
    neg = t[t.label == 0]
    assert sorted(neg["ligand"]) == list(train["ligand"]) and set(neg["receptor"]) == {"R3"}
    assert calls["train"] == {"enable_progress_bar": False, "accelerator": "cpu", "max_epochs": 3}


def test_tool_cross_fitted_gcng_null_shuffles_positions_within_sections(monkeypatch):
    """Cross-fitted GCNG (``gcng_scores`` replaced by a stub): its null re-scores with cell orders that keep every
    cell in its section, ligand and receptor together by default (``null="auto"`` → positions)."""
    import scst.tl._ligrec as tool
    from scst.tl._ligrec_gcng import GCNGScores

    calls = []

    class Stub:
        def predict(self, pairs, cell_order=None, ligand_only=False):
            calls.append((np.asarray(cell_order).copy(), ligand_only))
            return pairs.assign(score=0.0)

    def fake_scores(adata, cand, known, **kwargs):
        return GCNGScores(cand.assign(score=0.5, in_training=False, model=0), [Stub()])

    monkeypatch.setattr(tool, "gcng_scores", fake_scores)
    adata, pairs = quadrant_data(n_pairs=6)
    adata.obs["section"] = np.where(np.arange(adata.n_obs) < 32, "a", "b")
    cell_graph(adata, radius=1.1, library_key="section")
    ligand_receptor(adata, pairs=pairs, method="gcng", n_perms=4, expr_prop=0)
    assert adata.uns["scst_ligrec_params"]["nulls"] == {"gcng": "positions"} and len(calls) == 4
    for order, ligand_only in calls:
        assert not ligand_only
        assert sorted(order[:32]) == list(range(32)) and sorted(order[32:]) == list(range(32, 64))
    np.testing.assert_allclose(adata.uns["scst_ligrec"]["gcng_pvals"], 1 / 5)  # null 0 < observed 0.5 every time


def test_cross_fitted_gcng_warns_about_a_graph_matrix_of_another_cell_graph(monkeypatch):
    """obsp["gcng_autocrine_plus"] is built only when absent: after the cell graph is rebuilt, a second call used
    the first call's matrix without a word."""
    import scst.tl._ligrec as tool
    from scst.tl._ligrec_gcng import GCNGScores

    graphs = []

    def fake_scores(adata, cand, known, *, graph_key, **kwargs):
        graphs.append(adata.obsp[graph_key].copy())
        return GCNGScores(cand.assign(score=0.5, in_training=False, model=0), [])

    monkeypatch.setattr(tool, "gcng_scores", fake_scores)
    adata, pairs = quadrant_data(n_pairs=6)
    kw = dict(pairs=pairs, method="gcng", n_perms=0, expr_prop=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ligand_receptor(adata, **kw)  # builds it
        ligand_receptor(adata, **kw)  # the same cell graph: reused without a warning
    cell_graph(adata, radius=2.5, library_key=None)  # the cell graph rebuilt
    with pytest.warns(UserWarning, match=r"obsp\['gcng_autocrine_plus'\] is not the autocrine\+ matrix"):
        ligand_receptor(adata, **kw)
    assert (abs(graphs[2] - graphs[0]) > 0).nnz == 0  # used as it is
    adata.obsp["mine"] = graphs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ligand_receptor(adata, graph_key="mine", **kw)  # a key of its own is the user's choice


def test_gcng_folds_follow_the_seed_and_one_class_tables_have_no_auroc(monkeypatch):
    """Ligands are dealt to the cross-fitting folds in a seeded random order (another seed, another split); a fit
    report on pairs of one class only is NaN, not an error (e.g. a held-out fold whose ligands have no negative)."""
    import scst.tl._ligrec_gcng as lg

    monkeypatch.setattr(lg, "_fit", lambda adata, g, train, pool, known, *a: _StubGCNG(0, train, pool, known, 0))
    known = pd.DataFrame({"ligand": [f"L{k}" for k in range(6)], "receptor": [f"R{k}" for k in range(6)]})

    def split(seed):
        t = lg.gcng_scores(None, known, known, graph_key="g", config={}, n_folds=3, seed=seed).table
        return sorted(sorted(t.loc[t["model"] == k, "ligand"]) for k in range(3))

    splits = [split(seed) for seed in range(4)]
    assert all(len(s) == 3 and sum(map(len, s)) == 6 for s in splits)
    assert any(s != splits[0] for s in splits[1:])
    stub = _StubGCNG(0, known, ["R0"], known, 0)
    with warnings.catch_warnings():  # scikit-learn < 1.6 raises on one class, later versions warn: neither here
        warnings.simplefilter("error")
        assert np.isnan(lg._auroc(stub, known.assign(label=1))) and np.isnan(lg._auroc(stub, None))
    assert lg._auroc(stub, pd.DataFrame({"ligand": ["L0", "L0"], "receptor": ["R0", "X"], "label": [1, 0]})) == 1.0


def test_local_scores_of_another_method_on_the_directed_a_plus_i_by_hand():
    """``local_scores`` with ``method="pearson"`` still needs the cell graph: the local cosine on ``A + I`` (rows as
    rows on a directed graph), one row per spot in ``obs`` order; the params name the metric, graph and key."""
    from scst.models._gcng import entity_expression, normalized_expression

    adata, pairs = quadrant_data(n_pairs=3)
    adata.obsp["spatial_connectivities"] = sp.triu(adata.obsp["spatial_connectivities"], k=1, format="csr")
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, local_scores=2)
    res, local = adata.uns["scst_ligrec"], adata.obsm["scst_ligrec_local"]
    assert local.shape == (adata.n_obs, 2) and local.index.equals(adata.obs_names)
    params = adata.uns["scst_ligrec_params"]
    assert params["local_name"] == "cosine" and params["kernel_key"] == "spatial_connectivities + I"
    assert params["local_scores_key"] == "scst_ligrec_local"
    w = (adata.obsp["spatial_connectivities"] != 0).toarray().astype(float) + np.eye(adata.n_obs)
    assert not np.allclose(w, w.T)
    norm = normalized_expression(adata, log1p=True)
    for j in range(2):
        x = entity_expression(norm, adata.var_names, [res["ligand_complex"][j]])[:, 0].astype(float)
        y = entity_expression(norm, adata.var_names, [res["receptor_complex"][j]])[:, 0].astype(float)
        with np.errstate(invalid="ignore"):
            expect = np.nan_to_num((w @ (x * y)) / np.sqrt((w @ x**2) * (w @ y**2)))  # 0/0: liana's 0
        np.testing.assert_allclose(local.iloc[:, j], expect, rtol=1e-4, atol=1e-6)


def test_local_scores_true_stops_at_fifty_pairs():
    adata, pairs = quadrant_data(n_pairs=52)
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, local_scores=True)
    res, local = adata.uns["scst_ligrec"], adata.obsm["scst_ligrec_local"]
    assert len(res) == 52 and local.shape == (adata.n_obs, 50)
    assert list(local.columns) == [f"{lg}^{rc}" for lg, rc in zip(res.ligand_complex[:50], res.receptor_complex[:50])]


def test_lr_kernel_auto_without_a_section_geometry_is_a_clear_error():
    from scst.tl._ligrec_local import lr_kernel

    adata, _ = quadrant_data(n_pairs=2)
    adata.obs["section"] = "s"
    adata.uns["scst"] = {"sections": None}  # not a mapping
    with pytest.raises(ValueError, match=r"um_per_unit='auto' needs adata.uns\['scst'\]\['sections'\]\['s'\]"):
        lr_kernel(adata, 50)


@pytest.mark.parametrize("bad", [-1, 2.5, "5"])
def test_local_scores_must_be_a_count_of_pairs(bad):
    """``local_scores=-1`` wrote all pairs but the last (``head(-1)``); 2.5 was cut to 2 pairs without a word."""
    adata, pairs = quadrant_data(n_pairs=4)
    with pytest.raises(ValueError, match="local_scores: expected True/False or a number of pairs >= 0"):
        ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0, local_scores=bad)
    assert "scst_ligrec" not in adata.uns and "scst_ligrec_local" not in adata.obsm
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0, local_scores=np.int64(2))
    assert adata.obsm["scst_ligrec_local"].shape == (adata.n_obs, 2)


def test_second_call_without_local_scores_leaves_no_local_scores_of_the_first():
    """obsm["scst_ligrec_local"] of a first call stayed beside the second call's table, and was drawn with it."""
    adata, pairs = quadrant_data(n_pairs=4)
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0, local_scores=2)
    ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=0, local_scores=2, key_added="other")
    assert "scst_ligrec_local" in adata.obsm
    ligand_receptor(adata, pairs=pairs[:2], method="expression", n_perms=0, expr_prop=0)
    assert "scst_ligrec_local" not in adata.obsm and "local_scores_key" not in adata.uns["scst_ligrec_params"]
    assert adata.obsm["other_local"].shape == (adata.n_obs, 2)  # other keys are left alone


@pytest.mark.parametrize("local_name", ["cosine", "pearson", "norm_product", "morans"])
def test_local_scores_on_sparse_weights_equal_the_dense_ones(monkeypatch, local_name):
    """Local scores densified the n × n weights at any size (bivariate keeps them sparse from 10,000 cells up):
    forced onto the sparse path, liana gets a sparse matrix and the scores are the same."""
    import scst.tl._ligrec as lg
    import scst.tl._ligrec_scores as sc

    adata, pairs = quadrant_data(n_pairs=4)
    kw = dict(pairs=pairs, method="bivariate", local_name=local_name, n_perms=0, expr_prop=0, local_scores=True)
    ligand_receptor(adata, **kw)
    dense_local, dense_res = adata.obsm["scst_ligrec_local"].copy(), adata.uns["scst_ligrec"].copy()
    sparse_in, real = [], lg._liana_local

    def spy(name):
        fun = real(name)

        def local(x, y, w):
            sparse_in.append(sp.issparse(w))
            return fun(x, y, w)

        return local

    monkeypatch.setattr(lg, "_liana_local", spy)  # the local scores' metric only (bivariate's is in _ligrec_scores)
    monkeypatch.setattr(sc, "DENSE_WEIGHTS_BELOW", 0, raising=False)
    ligand_receptor(adata, **kw)
    assert sparse_in == [True]
    # float32 sums in another order: the same values, but liana's weighted Pearson (a difference of float32 sums)
    # holds ~3 decimals either way (here both paths lie within 4e-4 of the float64 value, and 5e-4 of each other)
    atol = 1e-3 if local_name == "pearson" else 1e-6
    pd.testing.assert_frame_equal(adata.obsm["scst_ligrec_local"], dense_local, rtol=1e-5, atol=atol)
    pd.testing.assert_frame_equal(adata.uns["scst_ligrec"], dense_res, rtol=1e-5, atol=atol)


def test_unknown_local_name_fails_before_anything_is_written():
    adata, pairs = quadrant_data(n_pairs=2)
    with pytest.raises(ValueError, match="local_name"):
        ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, local_scores=2, local_name="nope")
    assert "scst_ligrec" not in adata.uns and "scst_ligrec_params" not in adata.uns


def test_lr_kernel_max_neighbours_is_a_count_and_a_one_cell_section_weighs_the_cell_itself():
    """max_neighbours=-1 or 2.5 failed in scikit-learn naming its n_neighbors (liana asks for max_neighbours + 1);
    a section of one cell (0 neighbours asked) and max_neighbours=0 leave each cell with itself, weight 1."""
    from scst.tl._ligrec_local import lr_kernel

    xy = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 10.0]])
    adata = AnnData(np.zeros((3, 1), np.float32), obs=pd.DataFrame({"section": ["A", "A", "B"]}, index=list("abc")))
    adata.obsm["spatial"] = xy
    for bad in (-1, 2.5, True, None):
        with pytest.raises(ValueError, match="max_neighbours: expected a non-negative integer"):
            lr_kernel(adata, 50, um_per_unit=1.0, max_neighbours=bad)
    lr_kernel(adata, 50, um_per_unit=1.0)
    w = adata.obsp["scst_lr_kernel"].toarray()
    np.testing.assert_array_equal(w[2], [0, 0, 1])
    np.testing.assert_array_equal(w[:, 2], [0, 0, 1])
    assert w[0, 1] == w[1, 0] == pytest.approx(np.exp(-0.5 * (30 / 50) ** 2), rel=1e-5)
    lr_kernel(adata, 50, um_per_unit=1.0, max_neighbours=np.int64(0))
    np.testing.assert_array_equal(adata.obsp["scst_lr_kernel"].toarray(), np.eye(3))


@pytest.mark.parametrize("local_name", ["spearman", "norm_product", "morans", "cosine"])
def test_bivariate_and_local_scores_of_a_section_do_not_change_with_another_section(local_name):
    """spearman / norm_product / morans rank, scale or standardise over the spots: with two sections in one object a
    section's local scores (and bivariate means) changed with the other section's data; they run per section now."""
    import anndata as ad

    one, pairs = quadrant_data(n_pairs=4, seed=0)
    other, _ = quadrant_data(n_pairs=4, seed=1)
    other.X = other.X * 3  # another depth / pattern in the second section
    both = ad.concat({"a": one, "b": other}, label="section", index_unique="-")
    cell_graph(both, radius=1.1)  # per section
    one.obs["section"] = "a"
    kw = dict(pairs=pairs, method="bivariate", local_name=local_name, n_perms=5, expr_prop=0, local_scores=True)
    ligand_receptor(one, **kw)
    ligand_receptor(both, **kw)
    alone = one.obsm["scst_ligrec_local"]
    local = both.obsm["scst_ligrec_local"].iloc[: one.n_obs][alone.columns]
    np.testing.assert_allclose(local, alone, atol=1e-6)
    # the section's mean of the two-section local scores is the bivariate score of the section alone
    res = one.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])
    cols = [tuple(c.split("^")) for c in alone.columns]
    np.testing.assert_allclose(res.loc[cols, "bivariate_score"], local.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_cell_order_permutes_graph_and_local_scores_and_keeps_pair_scores():
    """Metamorphic: cells in another order give the permuted cell graph (P A Pᵀ), the same pair scores and the
    permuted local scores (p-values may differ: the permutations are drawn in cell order)."""
    adata, pairs = quadrant_data(n_pairs=6)
    adata.obs["section"] = np.where(adata.obsm["spatial"][:, 0] < 4, "a", "b")
    cell_graph(adata, radius=1.1)
    perm = np.random.default_rng(3).permutation(adata.n_obs)
    other = adata[perm].copy()
    del other.obsp["spatial_connectivities"]
    cell_graph(other, radius=1.1)
    conn = adata.obsp["spatial_connectivities"]
    assert (other.obsp["spatial_connectivities"] != conn[perm][:, perm]).nnz == 0
    kw = dict(pairs=pairs, method=["expression", "pearson", "spatial_pearson", "bivariate"], local_name="morans",
              n_perms=0, expr_prop=0, local_scores=True)  # fmt: skip
    ligand_receptor(adata, **kw)
    ligand_receptor(other, **kw)
    pd.testing.assert_frame_equal(other.uns["scst_ligrec"], adata.uns["scst_ligrec"], rtol=1e-6)
    local = adata.obsm["scst_ligrec_local"].iloc[perm]
    pd.testing.assert_frame_equal(other.obsm["scst_ligrec_local"], local, rtol=1e-5, atol=1e-5)  # float32 sums


def test_review_ties_of_float32_scores_do_not_count_as_wins():
    """Review 2026-12-04: a permuted arrangement with the same score in exact arithmetic differs by ~1e-7 in
    float32; with a 1e-12 tolerance about half of such ties counted below the observed score (p too small). On a
    4-spot ring with a constant receptor every placement of the ligand gives the same mean: p must be 1."""
    from scst.tl._ligrec_scores import permutation_pvalues, score_function

    a = np.zeros((4, 4))
    for i in range(4):
        a[i, (i + 1) % 4] = a[(i + 1) % 4, i] = 1
    rng = np.random.default_rng(1)
    lig = rng.uniform(1, 3, size=(4, 6)).astype(np.float32)
    rec = np.full((4, 6), 2.0, np.float32)
    for local in ("cosine", "product"):
        fn, null = score_function("bivariate", sp.csr_matrix(a), local_name=local)
        p = permutation_pvalues(fn, lig, rec, fn(lig, rec), null=null, groups=None, n_perms=99, seed=0)
        np.testing.assert_array_equal(p, np.ones(6), err_msg=local)


def test_review_pearson_scores_standardise_within_sections():
    """Review 2026-12-04: two sections, L and R independent noise within each, both 4× higher in one section:
    pooled z-scores read the level difference as a correlation of 0.67 (the pair ranked first)."""
    rng = np.random.default_rng(0)
    xy = np.vstack([np.array([(i, j) for i in range(8) for j in range(8)], float)] * 2)
    sec = np.repeat(["s0", "s1"], 64)
    lvl = np.where(sec == "s1", 20, 5)
    x = np.column_stack([rng.poisson(lvl), rng.poisson(lvl), rng.poisson(200, 128)]).astype(np.float32)
    adata = AnnData(x, obs=pd.DataFrame({"section": pd.Categorical(sec)}, index=[f"c{i}" for i in range(128)]))
    adata.var_names = ["L", "R", "bg"]
    adata.obsm["spatial"] = xy
    cell_graph(adata, radius=1.1, library_key="section")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ligand_receptor(adata, pairs=[("L", "R")], method=["spatial_pearson", "pearson"], n_perms=0, expr_prop=0)
    res = adata.uns["scst_ligrec"].iloc[0]
    assert abs(res["spatial_pearson_score"]) < 0.15 and abs(res["pearson_score"]) < 0.15  # pooled: 0.67 and ~0.7
    one = adata[adata.obs["section"] == "s0"].copy()  # one section: the same as before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ligand_receptor(one, pairs=[("L", "R")], method=["pearson"], n_perms=0, expr_prop=0)
    from scst.models._gcng import entity_expression, normalized_expression

    norm = normalized_expression(one, log1p=True)
    ref = lr_scores(entity_expression(norm, one.var_names, ["L"]), entity_expression(norm, one.var_names, ["R"]),
                    "pearson")  # fmt: skip
    assert one.uns["scst_ligrec"]["pearson_score"].iloc[0] == pytest.approx(float(ref[0]), abs=1e-6)


def test_review_a_pair_listed_both_ways_is_held_out_with_its_reverse():
    """Review 2026-12-04: folds held out ligands, so (A, B) and (B, A) fell in different folds and each was scored
    by a model trained on the other (the same two signals, channels swapped)."""
    from scst.tl._ligrec_gcng import gcng_scores

    adata, pairs = quadrant_data(n_side=6, n_pairs=12)
    pairs = pairs[["ligand", "receptor"]]
    known = pd.concat([pairs, pd.DataFrame({"ligand": pairs.receptor[:4], "receptor": pairs.ligand[:4]})],
                      ignore_index=True)  # fmt: skip
    graph_matrix(adata, "autocrine+")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = gcng_scores(adata, known, known, graph_key="gcng_autocrine_plus", config={**FAST, "max_epochs": 1},
                          n_folds=3, seed=0)  # fmt: skip
    t = res.table
    assert (t["model"] < 3).all()  # every known pair scored out of fold
    for lig, rec, m in zip(t["ligand"], t["receptor"], t["model"]):
        tp = res.models[m].training_pairs
        positives = set(zip(tp["ligand"][tp["label"] == 1], tp["receptor"][tp["label"] == 1]))
        assert (rec, lig) not in positives and (lig, rec) not in positives, (lig, rec, m)


def test_review_a_kernel_of_each_spot_with_itself_scores_within_spots():
    """Review 2026-12-04: lr_kernel(max_neighbours=0) is documented (each spot weighs only itself), but
    ligand_receptor(kernel_key=...) refused it as a graph without edges."""
    from scst.tl._ligrec_local import lr_kernel

    rng = np.random.default_rng(0)
    x = rng.poisson(5, size=(25, 3)).astype(np.float32)
    adata = AnnData(x, obs=pd.DataFrame({"section": ["A"] * 25}, index=[f"c{i}" for i in range(25)]))
    adata.var_names = ["L", "R", "bg"]
    adata.obsm["spatial"] = np.array([(i, j) for i in range(5) for j in range(5)], float) * 50
    lr_kernel(adata, 50, um_per_unit=1.0, max_neighbours=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ligand_receptor(adata, pairs=[("L", "R")], method="bivariate", kernel_key="scst_lr_kernel", n_perms=9,
                        expr_prop=0)  # fmt: skip
    assert np.isfinite(adata.uns["scst_ligrec"]["bivariate_score"]).all()


def test_cv_gcng_on_a_given_graph_key_with_and_without_shuffled_positions(monkeypatch):
    """``{"method": "gcng", "graph_key": ...}``: the model is fit on that obsp matrix as it is, or, with
    ``shuffle_positions``, on a private copy permuted within the groups (as :func:`shuffle_graph` with seed + 1)."""
    import scst.tl._ligrec_cv as cv

    adata, folds = niche_folds(n_pairs=12)
    adata.obs["half"] = np.where(adata.obsm["spatial"][:, 1] < 4, "low", "high")
    graph_matrix(adata, "autocrine+", key_added="G")
    seen = []

    def fake_fit(work, gkey, train, cfg, layer, normalize, seed, train_kwargs, norm=None):
        seen.append((gkey, work.obsp[gkey].toarray()))
        return _CVStub(train)

    monkeypatch.setattr(cv, "_fit_gcng", fake_fit)
    methods = {"given": {"method": "gcng", "graph_key": "G"},
               "shuffled": {"method": "gcng", "graph_key": "G", "shuffle_positions": "half"}}  # fmt: skip
    pred = ligrec_cv(adata, folds=folds, config=FAST, seed=4, methods=methods)
    assert [k for k, _ in seen] == ["G"] * 3 + ["_cv_shuffled"] * 3
    g = adata.obsp["G"].toarray()
    want = shuffle_graph(adata.obsp["G"], adata.obs["half"].to_numpy(), seed=5).toarray()
    assert not np.array_equal(want, g)
    for key, matrix in seen:
        np.testing.assert_array_equal(matrix, g if key == "G" else want)
    assert "_cv_shuffled" not in adata.obsp  # the caller's data untouched
    assert pred.groupby("method").size().to_dict() == {"given": 24, "shuffled": 24}
    with pytest.raises(KeyError, match=r"'H' not found in adata.obsp"):
        ligrec_cv(adata, folds=folds, methods={"g": {"method": "gcng", "graph_key": "H"}})
    with pytest.raises(ValueError, match=r"methods\['g'\]\['kind'\]: expected one of \[.*\], got 'paracrine'"):
        ligrec_cv(adata, folds=folds, methods={"g": {"method": "gcng", "kind": "paracrine"}})


def test_cv_default_methods_and_progress_log(monkeypatch):
    """``methods=None``: the three GCNG graph variants and the three baselines, each scored on every test pair; with
    ``progress=True`` one log line per method and fold."""
    import types

    import scst.tl._ligrec_cv as cv

    adata, folds = niche_folds(n_pairs=12)
    kinds, lines = [], []
    monkeypatch.setattr(cv, "_fit_gcng", lambda work, gkey, train, *a, **k: kinds.append(gkey) or _CVStub(train))
    monkeypatch.setattr(cv, "logg", types.SimpleNamespace(info=lines.append))
    pred = ligrec_cv(adata, folds=folds, config=FAST, progress=True)
    names = ["GCNG autocrine+", "GCNG exocrine", "GCNG diagonal", "single-cell Pearson", "spatial Pearson",
             "expression mean(L)·mean(R)"]  # fmt: skip
    assert pred.groupby("method", sort=False).size().to_dict() == dict.fromkeys(names, 24)  # 12 pairs + 12 decoys
    assert kinds == [f"_cv_{n}" for n in names[:3] for _ in range(3)]
    assert lines[:2] == ["ligrec_cv: GCNG autocrine+, fold 0: 8 test pairs", "ligrec_cv: GCNG autocrine+, fold 1: 8 "
                         "test pairs"]  # fmt: skip
    assert len(lines) == 18
    x = pd.DataFrame(cv.normalized_expression(adata, log1p=FAST["log1p"]).toarray(), columns=adata.var_names).mean()
    e = pred[pred.method == names[-1]]
    np.testing.assert_allclose(e["score"], x[e["ligand"]].to_numpy() * x[e["receptor"]].to_numpy(), rtol=1e-5)


def test_function_assignment_caps_the_training_pairs_and_takes_sets_as_list_dict_or_gmt(monkeypatch, tmp_path):
    """``max_train_pairs``: each fold trains on that many of its ordered set-gene pairs (a subset, no repeats) and
    as many negatives; a list, a dict and a GMT file (blank lines skipped) name the same set."""
    import scst.tl._ligrec_cv as cv

    adata, _ = quadrant_data(n_side=4, n_pairs=12)
    graph_matrix(adata)
    trains = []
    monkeypatch.setattr(cv, "_fit_gcng", lambda work, gkey, train, *a, **k: trains.append(train) or _CVStub(train))
    genes = [f"L{i}" for i in range(10)]

    def positives(train):
        pos = train[train.label == 1]
        return list(zip(pos.ligand, pos.receptor))

    by_list = gene_function_cv(adata, genes, n_folds=2, seed=0)  # uncapped: the folds' full pairs (same split)
    gene_function_cv(adata, genes, n_folds=2, max_train_pairs=7, seed=0)
    assert len(trains) == 4
    for full, capped in zip(trains[:2], trains[2:]):
        every, pairs = positives(full), positives(capped)
        assert len(every) == 20  # 5 training genes: 20 ordered pairs
        assert len(pairs) == len(set(pairs)) == (capped.label == 0).sum() == 7
        assert pairs == [p for p in every if p in pairs]  # a subset of the fold's pairs, in their order
        assert pairs != every[:7]  # a random subset, not the head of the list
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("\n" + "S\tdesc\t" + "\t".join(genes) + "\n\n")
    assert read_gmt(gmt) == {"S": genes}
    for sets in ({"S": genes}, str(gmt)):
        other = gene_function_cv(adata, sets, n_folds=2, seed=0)
        assert other["gene_set"].unique().tolist() == ["S"]
        pd.testing.assert_frame_equal(other.drop(columns="gene_set"), by_list.drop(columns="gene_set"))
    assert by_list["gene_set"].unique().tolist() == ["gene_set"]


def test_pair_score_inputs_are_named():
    """lr_scores / score_function name a bad method, a missing graph and unequal ligand/receptor matrices; a rank
    aggregate of only all-NaN columns is NaN for every pair (nothing to rank)."""
    from scst.tl._ligrec_scores import robust_rank_aggregate, score_function

    lig = np.ones((4, 2))
    with pytest.raises(ValueError, match=r"lig and rec must have the same shape, got \(4, 2\) and \(4, 3\)"):
        lr_scores(lig, np.ones((4, 3)), "pearson")
    with pytest.raises(ValueError, match=r"method='spatial_pearson' needs the cell graph \(`adjacency`\)"):
        lr_scores(lig, lig, "spatial_pearson")
    with pytest.raises(ValueError, match=r"method: expected one of \['pearson', 'spatial_pearson', 'expression'\]"):
        lr_scores(lig, lig, "cosine")
    with pytest.raises(ValueError, match=r"method: expected one of \[.*'expression', 'bivariate'\], got 'gcng'"):
        score_function("gcng")
    out = robust_rank_aggregate(np.array([[np.nan, np.nan], [np.nan, np.nan], [np.nan, np.nan]]), [True, False])
    assert out.shape == (3,) and np.isnan(out).all()


def test_ligand_receptor_gcng_and_expr_prop_errors_leave_nothing_behind(monkeypatch):
    """Every pair under expr_prop, known pairs none of which is in the data, and a cross-fitting that fails: clear
    errors; the failure removes the graph matrix the call built and the uns entries it added."""
    import scst.tl._ligrec as tool

    adata, pairs = quadrant_data(n_pairs=4)
    with pytest.raises(ValueError, match=r"pairs: no usable pair: all 4 pairs present in the data have a ligand or "
                       r"receptor expressed in fewer than expr_prop=1\.0 of the cells/spots"):  # fmt: skip
        ligand_receptor(adata, pairs=pairs, method="pearson", n_perms=0, expr_prop=1.0)
    nowhere = pd.DataFrame({"ligand": ["X1"], "receptor": ["Y1"]})
    with pytest.raises(ValueError, match="known: no known pair has both genes in adata.var_names; GCNG has nothing"):
        ligand_receptor(adata, pairs=pairs, method="gcng", known=nowhere, n_perms=0, expr_prop=0)

    def failing(adata, cand, known, *, graph_key, **kwargs):
        assert graph_key in adata.obsp
        adata.uns["_scst_gcng_setup"] = {"half": "written"}
        raise RuntimeError("fit failed")

    monkeypatch.setattr(tool, "gcng_scores", failing)
    uns_before, obsp_before = set(adata.uns), set(adata.obsp)
    with pytest.raises(RuntimeError, match="fit failed"):
        ligand_receptor(adata, pairs=pairs, method="gcng", n_perms=0, expr_prop=0)
    assert set(adata.uns) == uns_before and set(adata.obsp) == obsp_before
    assert "gcng_autocrine_plus" not in adata.obsp


def test_lr_kernel_auto_scale_needs_sections():
    from scst.tl._ligrec_local import lr_kernel

    adata, _ = quadrant_data(n_pairs=1)
    with pytest.raises(ValueError, match=r"um_per_unit='auto' needs sections \(groups_key\) with scst geometry"):
        lr_kernel(adata, 100.0, groups_key=None)
    assert "scst_lr_kernel" not in adata.obsp


def test_pooled_local_metrics_run_per_section_unless_the_weights_join_sections():
    """A pooled local metric (here a stand-in centring over the spots it is given) runs on each section alone when
    no weight links two sections, and once over all spots when one does (the sections then share one frame)."""
    from scst.tl._ligrec_scores import _section_local

    x = np.array([[1.0], [3.0], [10.0], [20.0]])
    groups = ["a", "a", "b", "b"]
    calls = []

    def centre(x, y, w):
        calls.append(len(x))
        return x - x.mean(0)

    within = sp.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.float32))
    np.testing.assert_allclose(_section_local(centre, within, groups, "spearman")(x, x), [[-1], [1], [-5], [5]])
    assert calls == [2, 2]
    across = within.tolil()
    across[1, 2] = across[2, 1] = 1.0
    calls.clear()
    np.testing.assert_allclose(_section_local(centre, across.tocsr(), groups, "morans")(x, x), x - 8.5)
    assert calls == [4]
