"""evaluate_expression / spatial_domains / domain_ari on planted predictions and planted clusters."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import adjusted_rand_score

from scst._normalize import log_normalized
from scst.tl._expression import _leiden_n, domain_ari, evaluate_expression, spatial_domains

N_PER, SECTIONS, N_GENES = 60, ("A", "B"), 12


@pytest.fixture
def adata():
    rng = np.random.default_rng(0)
    n = N_PER * len(SECTIONS)
    counts = rng.poisson(rng.gamma(2.0, 5.0, size=(n, N_GENES))).astype(np.int32)
    counts[:N_PER, 0] = 3  # gene g0 constant in section A (raw counts, but not after normalisation) ...
    counts[:N_PER, 1] = 0  # ... gene g1 is 0 in section A: constant in the target unit too
    a = ad.AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame({"section": pd.Categorical(np.repeat(SECTIONS, N_PER))}, index=[f"s{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]),
    )
    return a


def _truth(a):
    t = a.copy()
    sc.pp.normalize_total(t, target_sum=1e4)
    sc.pp.log1p(t)
    return t.X.toarray()


def test_log_normalized_matches_scanpy(adata):
    np.testing.assert_allclose(log_normalized(adata), _truth(adata), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_normalized(adata, ["g3", "g1"]), _truth(adata)[:, [3, 1]], rtol=1e-5, atol=1e-6)


def test_perfect_shuffled_and_constant(adata):
    truth = _truth(adata)
    adata.layers["predicted"] = truth.copy()
    evaluate_expression(adata)
    df = adata.uns["scst_eval"]
    assert list(df.columns) == ["gene", "section", "metric", "value"]
    assert len(df) == N_GENES * 2 * 3
    pcc = df[df.metric == "pearson"].set_index(["section", "gene"])["value"]
    assert np.isnan(pcc[("A", "g1")])  # constant truth in A → NaN
    ok = pcc.drop(("A", "g1"))
    np.testing.assert_allclose(ok.to_numpy(), 1.0, atol=1e-9)
    mse = df[df.metric == "mse"]["value"].to_numpy()
    np.testing.assert_allclose(mse, 0.0, atol=1e-12)
    params = adata.uns["scst_eval_params"]
    assert params["n_constant_truth"] == {"A": 1, "B": 0}
    assert params["n_spots"] == {"A": N_PER, "B": N_PER}
    # per-gene mean over sections: g1 is defined only in B
    assert adata.var.loc["g1", "scst_eval_pearson"] == pytest.approx(1.0)
    assert adata.var["scst_eval_spearman"].to_numpy() == pytest.approx(1.0)

    # Shuffled predictions (spots permuted within each section): correlation near 0.
    rng = np.random.default_rng(1)
    shuffled = truth.copy()
    for s in SECTIONS:
        rows = np.flatnonzero(adata.obs["section"] == s)
        shuffled[rows] = truth[rng.permutation(rows)]
    adata.layers["shuffled"] = shuffled
    evaluate_expression(adata, "shuffled", key_added="shuf", metrics=("pearson", "spearman", "mae"))
    r = adata.var["shuf_pearson"].to_numpy()
    assert np.abs(r).max() < 0.35 and abs(r.mean()) < 0.1
    # exact values against scipy, for one gene and section
    rows = np.flatnonzero(adata.obs["section"] == "B")
    d = adata.uns["shuf"].set_index(["metric", "section", "gene"])["value"]
    assert d[("pearson", "B", "g5")] == pytest.approx(pearsonr(shuffled[rows, 5], truth[rows, 5])[0], abs=1e-6)
    assert d[("spearman", "B", "g5")] == pytest.approx(spearmanr(shuffled[rows, 5], truth[rows, 5])[0], abs=1e-6)
    assert d[("mae", "B", "g5")] == pytest.approx(np.abs(shuffled[rows, 5] - truth[rows, 5]).mean())


def test_constant_prediction_scores_zero_and_copy(adata):
    truth = _truth(adata)
    adata.layers["predicted"] = np.repeat(truth.mean(0, keepdims=True), adata.n_obs, axis=0)
    out = evaluate_expression(adata, by=None, copy=True)
    assert "scst_eval" not in adata.uns and out is not adata
    df = out.uns["scst_eval"]
    assert set(df["section"]) == {"all"}
    pcc = df[df.metric == "pearson"]["value"].to_numpy()
    np.testing.assert_array_equal(pcc, 0.0)  # nothing ranks spots: 0, not NaN
    assert out.uns["scst_eval_params"]["n_constant_prediction"] == {"all": N_GENES}
    mse = df[df.metric == "mse"]["value"].to_numpy()
    np.testing.assert_allclose(mse, truth.var(0), rtol=1e-6)


def test_genes_unpredicted_spots_and_truth_layer(adata):
    truth = _truth(adata)
    pred = np.full_like(truth, np.nan)
    panel = [2, 4, 7]
    pred[:, panel] = truth[:, panel] * 2 + 1  # linear map: PCC 1, MSE > 0
    pred[:5] = np.nan  # five spots not predicted
    adata.layers["predicted"] = pred
    evaluate_expression(adata)
    df = adata.uns["scst_eval"]
    assert set(df["gene"]) == {"g2", "g4", "g7"}
    assert adata.uns["scst_eval_params"]["n_unpredicted_spots"] == 5
    assert adata.uns["scst_eval_params"]["n_spots"] == {"A": N_PER - 5, "B": N_PER}
    assert np.isnan(adata.var.loc["g0", "scst_eval_pearson"])
    assert adata.var.loc["g2", "scst_eval_pearson"] == pytest.approx(1.0)
    # truth given as a layer: the same numbers
    adata.layers["truth"] = truth
    evaluate_expression(adata, truth_layer="truth", genes=["g2", "g7"], key_added="t")
    a = adata.var.loc[["g2", "g7"], "t_mse"].to_numpy()
    b = adata.var.loc[["g2", "g7"], "scst_eval_mse"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_errors(adata):
    adata.layers["predicted"] = _truth(adata)
    with pytest.raises(KeyError, match="nope"):
        evaluate_expression(adata, "nope")
    with pytest.raises(ValueError, match="metrics"):
        evaluate_expression(adata, metrics=("r2",))
    with pytest.raises(KeyError, match="not in var_names"):
        evaluate_expression(adata, genes=["g0", "XYZ"])
    pred = adata.layers["predicted"].copy()
    pred[0, 3] = np.nan
    adata.layers["partial"] = pred
    with pytest.raises(ValueError, match="some evaluated genes"):
        evaluate_expression(adata, "partial")
    adata.X = adata.X.astype(np.float32) * 0.5  # not counts
    with pytest.raises(ValueError, match="raw counts"):
        evaluate_expression(adata)


def _planted_clusters(n_clusters=3, per=40, genes=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(n_clusters, genes))
    lab = np.repeat(np.arange(n_clusters), per)
    x = centres[lab] + rng.normal(0, 0.3, size=(len(lab), genes))
    a = ad.AnnData(X=sparse.csr_matrix((len(lab), genes), dtype=np.int32))
    a.obs_names = [f"c{i}" for i in range(len(lab))]
    a.layers["predicted"] = x
    a.obs["label"] = pd.Categorical([f"region{v}" for v in lab])
    a.obs["section"] = pd.Categorical(np.where(np.arange(len(lab)) % 2 == 0, "S1", "S2"))
    return a, lab


def test_second_call_leaves_no_metric_column_of_the_first(adata):
    # var["scst_eval_mae"] of an earlier call stayed beside the new uns["scst_eval"] (a stale per-gene score)
    adata.layers["predicted"] = _truth(adata)
    evaluate_expression(adata, metrics=("pearson", "mae"))
    assert np.allclose(adata.var["scst_eval_mae"], 0.0, atol=1e-6)
    adata.layers["predicted"] = _truth(adata) + 5.0
    evaluate_expression(adata, metrics=("pearson",))
    assert "scst_eval_mae" not in adata.var and "scst_eval_pearson" in adata.var
    evaluate_expression(adata, metrics=("mae",), key_added="other")  # other keys are left alone
    assert "scst_eval_pearson" in adata.var and np.allclose(adata.var["other_mae"], 5.0, atol=1e-5)


def test_one_metric_by_name(adata):
    # metrics="mae" was read as its characters: "expected a non-empty subset of (...), got ['m', 'a', 'e']"
    adata.layers["predicted"] = _truth(adata) + 1.0
    evaluate_expression(adata, metrics="mae")
    assert list(adata.uns["scst_eval"]["metric"].unique()) == ["mae"] and adata.uns["scst_eval_params"]["metrics"] == [
        "mae"
    ]
    assert np.allclose(adata.var["scst_eval_mae"], 1.0, atol=1e-5)


@pytest.mark.parametrize("method", ["kmeans", "leiden"])
def test_spatial_domains_recovers_planted_clusters(method):
    a, lab = _planted_clusters()
    spatial_domains(a, n_domains=3, method=method)
    assert a.obs["domain"].nunique() == 3
    ari = domain_ari(a)
    assert list(ari.index) == ["S1", "S2"]
    np.testing.assert_allclose(ari["ari"].to_numpy(), 1.0)
    assert (ari["n_spots"] == 60).all() and (ari["n_unlabelled"] == 0).all()
    if method == "leiden":
        assert "resolution" in a.uns["domain"]["params"]["groups"]["all"]


def test_spatial_domains_by_section_and_unlabelled():
    a, lab = _planted_clusters()
    a.obs.loc[a.obs_names[:4], "label"] = np.nan
    spatial_domains(a, n_domains=3, method="kmeans", by="section", key_added="dom")
    assert set(a.obs["dom"].cat.categories) == {f"{s}_{k}" for s in ("S1", "S2") for k in range(3)}
    ari = domain_ari(a, key="dom")
    np.testing.assert_allclose(ari["ari"].to_numpy(), 1.0)
    assert ari.loc["S1", "n_unlabelled"] == 2 and ari.loc["S2", "n_unlabelled"] == 2
    assert ari["n_spots"].sum() == len(lab) - 4
    # random labels give ARI near 0
    a.obs["rand"] = pd.Categorical(np.random.default_rng(0).integers(0, 3, len(lab)).astype(str))
    assert abs(domain_ari(a, key="rand", by=None).loc["all", "ari"]) < 0.1


@pytest.mark.parametrize("method", ["kmeans", "leiden"])
def test_spatial_domains_invariances(method):
    # Per section (by=): a section's domains do not depend on another section's spots; rows reordered, genes
    # reordered, truth labels renamed: the same partitions and ARI (domain numbers themselves are arbitrary).
    a, _ = _planted_clusters()
    s2 = (a.obs["section"] == "S2").to_numpy()
    x = a.layers["predicted"]
    x[s2] = 5.0 * x[s2][:, ::-1]  # another section: its domains along other genes, on another scale
    x[~s2] += np.random.default_rng(2).normal(0, 2.0, size=x[~s2].shape)  # S1's domains in its own 2 PCs only
    kw = {"n_domains": 3, "method": method, "by": "section", "n_pcs": 2}
    ref = spatial_domains(a, **kw, copy=True).obs["domain"].astype(str)
    s1 = a[~s2].copy()
    alone = spatial_domains(s1, **kw, copy=True).obs["domain"].astype(str)
    pd.testing.assert_series_equal(alone, ref[s1.obs_names])
    rng = np.random.default_rng(1)
    b = a[rng.permutation(a.n_obs), rng.permutation(a.n_vars)].copy()
    b.obs["label"] = b.obs["label"].cat.rename_categories(lambda c: c.upper())
    spatial_domains(b, **kw)
    for s in ("S1", "S2"):
        names = a.obs_names[a.obs["section"] == s]
        assert adjusted_rand_score(ref[names], b.obs.loc[names, "domain"].astype(str)) == 1.0
    a.obs["domain"] = ref
    pd.testing.assert_frame_equal(domain_ari(b), domain_ari(a))


def test_evaluate_by_domains_of_a_partly_predicted_table(adata):
    # spatial_domains leaves the unpredicted section's spots without a domain; scoring by domain on the whole table
    # was a ValueError (missing values in obs["domain"]), unlike on the predicted spots alone.
    pred = _truth(adata) + np.random.default_rng(0).normal(0, 0.3, (adata.n_obs, N_GENES))
    pred[:N_PER] = np.nan  # section A not predicted
    adata.layers["predicted"] = pred
    spatial_domains(adata, n_domains=2, method="kmeans")
    assert adata.obs["domain"].isna().sum() == N_PER
    evaluate_expression(adata, by="domain")
    sub = adata[N_PER:].copy()
    evaluate_expression(sub, by="domain")
    pd.testing.assert_frame_equal(adata.uns["scst_eval"], sub.uns["scst_eval"])
    assert adata.uns["scst_eval_params"]["n_unpredicted_spots"] == N_PER
    adata.obs.loc[adata.obs_names[N_PER], "domain"] = np.nan  # a predicted spot without a group: still an error
    with pytest.raises(ValueError, match="missing values"):
        evaluate_expression(adata, by="domain")


def test_spatial_domains_resolution_and_errors():
    a, _ = _planted_clusters(n_clusters=4)
    spatial_domains(a)  # leiden at resolution 1: the four separated clusters
    assert domain_ari(a, by=None).loc["all", "ari"] == pytest.approx(1.0)
    spatial_domains(a, resolution=5.0)  # a high resolution splits them further
    assert a.obs["domain"].nunique() > 4
    # constant predictions (the mean baseline): one domain per section, ARI 0
    a.layers["const"] = np.ones_like(a.layers["predicted"])
    with pytest.warns(UserWarning, match=r"section='S1'\): every spot has the same values"):
        spatial_domains(a, "const", n_domains=3, method="kmeans", by="section", key_added="c")
    assert set(a.obs["c"]) == {"S1_0", "S2_0"}
    np.testing.assert_array_equal(domain_ari(a, key="c")["ari"].to_numpy(), 0.0)
    with pytest.raises(ValueError, match="n_domains"):
        spatial_domains(a, method="kmeans")
    with pytest.raises(ValueError, match="method"):
        spatial_domains(a, method="louvain", n_domains=2)


def test_metric_conventions_and_per_gene_means(adata):
    """Hand-checkable conventions: round-off jitter on a constant prediction is constant (Spearman 0, not a rank
    correlation of noise); a gene constant in both truth and prediction counts only as constant truth; repeated
    metrics are scored once; ``var`` holds the mean over sections."""
    truth = _truth(adata)
    jitter = np.random.default_rng(2).normal(0, 1e-9, size=truth.shape)
    adata.layers["flat"] = 2.0 + jitter
    evaluate_expression(adata, "flat", metrics=("spearman", "pearson", "spearman"), key_added="flat")
    df = adata.uns["flat"]
    assert adata.uns["flat_params"]["metrics"] == ["spearman", "pearson"] and len(df) == N_GENES * 2 * 2
    sp = df[(df.metric == "spearman") & ~((df.section == "A") & (df.gene == "g1"))]["value"].to_numpy()
    np.testing.assert_array_equal(sp, 0.0)
    # a perfect prediction: g1 is 0 in section A in truth and prediction; constant truth only
    adata.layers["predicted"] = truth.copy()
    evaluate_expression(adata)
    p = adata.uns["scst_eval_params"]
    assert p["n_constant_truth"] == {"A": 1, "B": 0} and p["n_constant_prediction"] == {"A": 0, "B": 0}
    # per-gene value in var: the mean over the two sections, computed by hand for a shifted prediction
    adata.layers["off"] = truth + np.where((adata.obs["section"] == "A").to_numpy()[:, None], 1.0, 3.0)
    evaluate_expression(adata, "off", metrics=("mse", "mae"), key_added="off")
    np.testing.assert_allclose(adata.var["off_mse"].to_numpy(), (1.0 + 9.0) / 2)
    np.testing.assert_allclose(adata.var["off_mae"].to_numpy(), (1.0 + 3.0) / 2)


def test_gene_selection_and_truth_errors(adata):
    truth = _truth(adata)
    adata.layers["predicted"] = truth.copy()
    adata.var["score"] = np.arange(N_GENES, dtype=float)
    adata.var["none"] = False
    with pytest.raises(ValueError, match=r"var\['score'\] must be boolean"):
        evaluate_expression(adata, genes="score")
    with pytest.raises(ValueError, match=r"var\['none'\] selects no gene"):
        evaluate_expression(adata, genes="none")
    with pytest.raises(ValueError, match="duplicate genes"):
        evaluate_expression(adata, genes=["g2", "g2"])
    with pytest.raises(ValueError, match=r"boolean mask of shape \(3,\)"):
        evaluate_expression(adata, genes=np.array([True, False, True]))
    adata.layers["g2_missing"] = np.where(np.arange(N_GENES) == 2, np.nan, truth)
    with pytest.raises(ValueError, match="no spot has a finite prediction"):
        evaluate_expression(adata, "g2_missing", genes=["g2"])
    bad = truth.copy()
    bad[7, 3] = np.inf
    adata.layers["bad_truth"] = bad
    with pytest.raises(ValueError, match="truth_layer.*non-finite"):
        evaluate_expression(adata, truth_layer="bad_truth")


def test_leiden_bisects_the_resolution_both_ways():
    """Fewer domains than resolution 1 gives: the resolution goes down; more: it goes up (then bisects)."""
    a, _ = _planted_clusters(n_clusters=4)
    spatial_domains(a, n_domains=2, n_neighbors=50)  # a connected graph: two domains exist below resolution 1
    info = a.uns["domain"]["params"]["groups"]["all"]
    assert a.obs["domain"].nunique() == info["n_domains"] == 2 and info["resolution"] < 1
    a, _ = _planted_clusters(n_clusters=3)
    spatial_domains(a, n_domains=6)
    info = a.uns["domain"]["params"]["groups"]["all"]
    assert a.obs["domain"].nunique() == info["n_domains"] == 6 and info["resolution"] > 1


def test_spatial_domains_pcs_constant_genes_nan_spots_and_label_order():
    """Every PC the data has is used (two clusters apart only along the second PC stay apart); a constant gene does
    not make a varying group "constant"; a spot with a non-finite value gets no domain; labels sort numerically."""
    rng = np.random.default_rng(0)
    centres = np.array([[-10.0, 0.0], [10.0, 0.0], [0.0, 3.0], [0.0, -3.0]])  # PC1 = x: the last two share it
    lab = np.repeat(np.arange(4), 30)
    x = centres[lab] + rng.normal(0, 0.2, (len(lab), 2))
    obs = pd.DataFrame(index=[f"c{i}" for i in range(len(lab))])
    a = ad.AnnData(X=sparse.csr_matrix((len(lab), 2), dtype=np.int32), obs=obs)
    a.obs["label"] = pd.Categorical(lab.astype(str))
    x[5, 1] = np.nan
    a.layers["predicted"] = x
    spatial_domains(a, n_domains=4, method="kmeans")
    assert a.obs["domain"].isna().to_numpy().nonzero()[0].tolist() == [5]
    res = domain_ari(a, by=None)
    assert res.loc["all", "ari"] == pytest.approx(1.0) and res.loc["all", "n_unassigned"] == 1
    b, _ = _planted_clusters(n_clusters=12, per=10)
    b.layers["predicted"][:, 0] = 5.0  # one constant gene among 20
    spatial_domains(b, n_domains=12, method="kmeans")
    assert list(b.obs["domain"].cat.categories) == [str(k) for k in range(12)]


def test_domain_ari_counts_and_argument_checks():
    """Hand-made labels: a spot without truth is unlabelled (whatever its domain), one with truth but no domain is
    unassigned; neither is scored."""
    a = ad.AnnData(X=np.zeros((6, 1), np.float32), obs=pd.DataFrame(index=[f"s{i}" for i in range(6)]))
    a.obs["label"] = pd.Categorical(["x", "x", "y", "y", None, None])
    a.obs["domain"] = pd.Categorical(["0", "0", "1", None, "1", None])
    res = domain_ari(a, by=None)
    assert res.loc["all"].to_dict() == {"ari": 1.0, "n_spots": 3, "n_unlabelled": 2, "n_unassigned": 1}
    a.obs["domain"] = pd.Categorical(["0", "1", "0", "1", "0", "1"])  # crosses the labels: ARI below 0
    assert domain_ari(a, by=None).loc["all", "ari"] == pytest.approx(-0.5)
    p, _ = _planted_clusters()
    with pytest.raises(ValueError, match="n_domains: expected a positive integer"):
        spatial_domains(p, n_domains=0)
    with pytest.raises(ValueError, match="resolution: expected a positive number"):
        spatial_domains(p, resolution=0.0)
    with pytest.raises(ValueError, match=r"n_domains: 40 domains requested but only 30 spots \(section='S1'\)"):
        spatial_domains(p[:60].copy(), n_domains=40, by="section", method="kmeans")


def test_leiden_without_an_exact_resolution_warns_with_the_closest():
    # two separate pairs of spots: by symmetry both split at the same resolution, so k jumps 2 -> 4, never 3
    conn = sparse.csr_matrix(np.kron(np.eye(2), [[0.0, 1.0], [1.0, 0.0]]).astype(np.float32))
    with pytest.warns(UserWarning, match=r"no Leiden resolution gives exactly 3 domains; using resolution 1 with 2"):
        labels, res = _leiden_n(conn, 3, 0, "")
    assert res == 1.0 and len(np.unique(labels)) == 2 and labels[0] == labels[1] != labels[2] == labels[3]


def test_per_gene_values_are_means_over_groups_and_per_gene(adata):
    """Three groups with shifts 1, 2, 6 times a per-gene factor: MSE/MAE per gene and group by hand; ``var`` holds
    the mean over groups (not the median), one value per gene (not pooled over genes)."""
    truth = _truth(adata)
    grp = np.tile(["u", "v", "w"], adata.n_obs // 3)
    adata.obs["grp"] = pd.Categorical(grp)
    shift = np.select([grp == "u", grp == "v"], [1.0, 2.0], 6.0)[:, None] * (1.0 + np.arange(N_GENES))
    adata.layers["shifted"] = truth + shift
    evaluate_expression(adata, "shifted", by="grp", metrics=("mse", "mae", "pearson"), key_added="sh")
    factor = 1.0 + np.arange(N_GENES)
    np.testing.assert_allclose(adata.var["sh_mse"].to_numpy(), (1 + 4 + 36) / 3 * factor**2, rtol=1e-6)
    np.testing.assert_allclose(adata.var["sh_mae"].to_numpy(), (1 + 2 + 6) / 3 * factor, rtol=1e-6)
    d = adata.uns["sh"].set_index(["metric", "section", "gene"])["value"]
    assert d[("mse", "w", "g2")] == pytest.approx(36 * 9) and d[("mae", "v", "g3")] == pytest.approx(8)
    np.testing.assert_allclose(adata.var["sh_pearson"].to_numpy(), 1.0, atol=1e-9)  # a shift keeps the ranks


def test_group_sizes_truth_nan_outside_predictions_and_argument_checks(adata):
    """A group of one spot has no correlation (NaN) but an MSE, one of two spots a correlation of +-1; NaN in the
    truth layer only matters on predicted spots; a single gene name; missing group labels are refused."""
    truth = _truth(adata)
    adata.layers["predicted"] = truth * 2.0
    adata.obs["grp"] = pd.Categorical(["one"] + ["two"] * 2 + ["rest"] * (adata.n_obs - 3))
    evaluate_expression(adata, by="grp", metrics=("pearson", "mse"), genes="g3")
    d = adata.uns["scst_eval"].set_index(["metric", "section", "gene"])["value"]
    assert list(adata.uns["scst_eval"]["gene"].unique()) == ["g3"]
    assert np.isnan(d[("pearson", "one", "g3")]) and d[("mse", "one", "g3")] == pytest.approx(truth[0, 3] ** 2)
    assert abs(d[("pearson", "two", "g3")]) == pytest.approx(1.0)
    pred = truth.copy()
    pred[:4] = np.nan  # four spots not predicted ...
    adata.layers["part"] = pred
    bad = truth.copy()
    bad[:4, 5] = np.nan  # ... and no truth there: nothing to complain about
    adata.layers["truth"] = bad
    evaluate_expression(adata, "part", truth_layer="truth", key_added="p")
    assert adata.uns["p_params"]["n_unpredicted_spots"] == 4
    np.testing.assert_allclose(adata.var["p_mse"].to_numpy(), 0.0, atol=1e-12)
    adata.obs["gap"] = adata.obs["section"].astype(object)
    adata.obs.loc[adata.obs_names[7], "gap"] = np.nan
    with pytest.raises(ValueError, match=r"by: obs\['gap'\] has missing values"):
        evaluate_expression(adata, by="gap")


def test_spatial_domains_on_measured_counts_and_copy():
    """``layer=None`` clusters log1p(normalize_total(X)): two planted count profiles under library sizes 20x apart
    (raw counts would split by library size); ``copy=True`` leaves the input alone; as many domains as spots is
    allowed."""
    rng = np.random.default_rng(0)
    profiles = np.array([[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]])
    lab = np.repeat(np.arange(2), 30)
    lib = rng.permutation(np.tile([100.0, 2000.0], 30))
    counts = rng.poisson(profiles[lab] * lib[:, None])
    a = ad.AnnData(X=sparse.csr_matrix(counts.astype(np.int32)), obs=pd.DataFrame(index=[f"c{i}" for i in range(60)]))
    a.obs["label"] = pd.Categorical(lab.astype(str))
    out = spatial_domains(a, None, n_domains=2, method="kmeans", copy=True)
    assert "domain" not in a.obs and "domain" not in a.uns
    assert out.uns["domain"]["params"]["layer"] == "log1p(normalize_total(X, 1e4))"
    assert domain_ari(out, by=None).loc["all", "ari"] == pytest.approx(1.0)
    small = a[:4].copy()
    small.layers["predicted"] = np.arange(12.0).reshape(4, 3) ** 2
    spatial_domains(small, n_domains=4, method="kmeans")
    assert small.obs["domain"].nunique() == 4


def test_expression_tools_take_a_spatialdata_as_its_table(adata):
    """select_genes, evaluate_expression, spatial_domains and domain_ari failed on a SpatialData (AttributeError on
    ``.layers``/``.X``), while the other tools take one: they now work on its ``"table"``, in place or as a copy."""
    from spatialdata import SpatialData

    from scst.pp import select_genes

    adata.layers["predicted"] = _truth(adata) + 0.1
    sd = SpatialData(tables={"table": adata.copy()})
    table = sd.tables["table"]
    select_genes(sd, n_top=5, min_fraction=0.0)
    select_genes(adata, n_top=5, min_fraction=0.0)
    pd.testing.assert_frame_equal(table.var, adata.var)
    evaluate_expression(sd, genes=list(adata.var_names[2:6]))
    evaluate_expression(adata, genes=list(adata.var_names[2:6]))
    pd.testing.assert_frame_equal(table.uns["scst_eval"], adata.uns["scst_eval"])
    spatial_domains(sd, n_domains=2)
    spatial_domains(adata, n_domains=2)
    assert table.obs["domain"].equals(adata.obs["domain"])
    adata.obs["label"] = table.obs["label"] = pd.Categorical(np.tile(["x", "y"], N_PER))
    pd.testing.assert_frame_equal(domain_ari(sd), domain_ari(adata))
    copied = spatial_domains(sd, n_domains=3, key_added="d3", copy=True)
    assert "d3" in copied.obs and "d3" not in table.obs


def test_duplicate_gene_names_are_refused_and_infinite_counts_are_not_counts(adata):
    """Review 2026-12-04: two genes of one name both got the mean of their two scores (the table is keyed by name);
    an infinite count passed the raw-count check (round(inf) == inf) and zeroed its spot's other genes."""
    import warnings

    adata.layers["pred"] = _truth(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning about non-unique names
        adata.var_names = ["g0", "dup", "dup"] + list(adata.var_names[3:])
    with pytest.raises(ValueError, match=r"genes: 1 evaluated gene name\(s\) occur more than once .*\['dup'\]"):
        evaluate_expression(adata, "pred")
    x = adata.X.toarray().astype(np.float64)
    x[0, 4] = np.inf
    adata.X = x
    with pytest.raises(ValueError, match="negative, non-integer or infinite values"):
        log_normalized(adata)


def test_genes_as_a_boolean_var_column_or_mask_select_the_same_genes_as_their_names(adata):
    truth = _truth(adata)
    adata.layers["predicted"] = truth * 2 + 1  # linear: Pearson 1, MSE known
    adata.var["panel"] = np.isin(adata.var_names, ["g2", "g7"])
    by_name = evaluate_expression(adata, genes=["g2", "g7"], copy=True).uns["scst_eval"]
    for genes in ("panel", adata.var["panel"].to_numpy()):
        df = evaluate_expression(adata, genes=genes, copy=True).uns["scst_eval"]
        assert set(df["gene"]) == {"g2", "g7"}
        pd.testing.assert_frame_equal(df, by_name)
    mse = by_name[(by_name.metric == "mse") & (by_name.section == "A")].set_index("gene")["value"]
    rows = np.flatnonzero(adata.obs["section"] == "A")
    np.testing.assert_allclose(mse["g7"], np.mean((truth[rows, 7] + 1) ** 2), rtol=1e-6)


def test_a_layer_without_any_finite_value_is_named(adata):
    adata.layers["empty"] = np.full((adata.n_obs, adata.n_vars), np.nan)
    with pytest.raises(ValueError, match=r"layer: adata.layers\['empty'\] has no finite prediction"):
        evaluate_expression(adata, "empty")
    with pytest.raises(ValueError, match=r"layer: no spot has finite values in 'empty'"):
        spatial_domains(adata, layer="empty", use_genes=["g0", "g1"])
