"""Ligand–receptor CV: bad input (no usable pair, missing subunits, sections without a graph), the non-spatial
per-gene control and the fit reports of ``ligrec_cv``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from scst.models._gcng import GCNG
from scst.pp._graph_matrix import cell_graph
from scst.tl._ligrec import ligand_receptor
from scst.tl._ligrec_cv import LRFold, gene_features, ligrec_cv, ligrec_metrics, lr_folds

FAST = {**GCNG.fast_config, "max_epochs": 4, "patience": 4}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_data(n_side: int = 8, n_pairs: int = 30, seed: int = 0, ligand_level: float = 8.0, receptor_level=1.0):
    """Pairs (L_k, R_k) with i.i.d. Poisson counts: every ligand at ``ligand_level``, every receptor lower."""
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(n_side) for j in range(n_side)], float)
    n = len(xy)
    cols, names = [], []
    for k in range(n_pairs):
        cols += [rng.poisson(ligand_level * rng.uniform(0.5, 1.5), n), rng.poisson(receptor_level, n)]
        names += [f"L{k}", f"R{k}"]
    adata = AnnData(sp.csr_matrix(np.column_stack(cols).astype(np.float32)), obsm={"spatial": xy})
    adata.var_names = names
    cell_graph(adata, radius=1.1, library_key=None)
    pairs = pd.DataFrame({"ligand": [f"L{k}" for k in range(n_pairs)], "receptor": [f"R{k}" for k in range(n_pairs)]})
    return adata, pairs


def test_no_usable_pair_is_a_clear_error():
    adata, pairs = grid_data()
    with pytest.raises(ValueError, match="no usable ligand"):
        lr_folds(pairs.iloc[:0])
    with pytest.raises(ValueError, match="no usable ligand"):
        lr_folds(pd.DataFrame({"ligand": [None, np.nan], "receptor": ["R0", None]}))
    both = pd.DataFrame({"ligand": ["L0", "R0"], "receptor": ["R0", "L0"]})
    with pytest.raises(ValueError, match="task='direction'"):
        lr_folds(both, task="direction")
    assert len(lr_folds(both, n_folds=2)) == 2  # the interaction task keeps them
    with pytest.raises(ValueError, match="no pair has both genes"):
        ligrec_cv(adata, pd.DataFrame({"ligand": ["X"], "receptor": ["Y"]}), methods={"e": {"method": "expression"}})
    with pytest.raises(ValueError, match="Pass `pairs`"):
        ligrec_cv(adata, methods={"e": {"method": "expression"}})


def test_complex_with_missing_subunit_is_not_scored():
    adata, pairs = grid_data()
    cplx = pd.concat([pairs, pd.DataFrame({"ligand": ["L1"], "receptor": ["R2_MISSING"]})], ignore_index=True)
    pred = ligrec_cv(adata, cplx, n_folds=3, methods={"e": {"method": "expression"}}, seed=0)
    assert pred.attrs["n_pairs"] == len(pairs)
    assert "R2_MISSING" not in set(pred["receptor"]) | set(pred["ligand"])
    only = pd.DataFrame({"ligand": ["L1"], "receptor": ["R2_MISSING"]})
    with pytest.raises(ValueError, match="no pair has both genes"):
        ligrec_cv(adata, only, methods={"e": {"method": "expression"}})


def test_section_without_graph_is_an_error_for_spatial_methods():
    adata, pairs = grid_data()
    a = adata.obsp["spatial_connectivities"].tocsr()
    keep = np.arange(adata.n_obs) < 40
    adata.obs["section"] = np.where(keep, "a", "b")
    adata.obsp["spatial_connectivities"] = sp.csr_matrix(a.multiply(keep[:, None] & keep[None, :]))
    folds = lr_folds(pairs, n_folds=3, seed=0)
    for spec in ({"method": "spatial_pearson"}, {"method": "gcng", "kind": "autocrine+"}):
        with pytest.raises(ValueError, match=r"Section\(s\) \['b'\] have no edges"):
            ligrec_cv(adata, folds=folds, methods={"m": spec}, config=FAST)
    # Methods without positions (and diagonal GCNG, which has no neighbours) still run.
    pred = ligrec_cv(adata, folds=folds, methods={"p": {"method": "pearson"}, "d": {"method": "gcng",
                     "kind": "diagonal"}}, config=FAST, seed=0)  # fmt: skip
    assert set(pred["method"]) == {"p", "d"}


def test_gene_features_by_hand():
    adata, _ = grid_data(n_pairs=2)
    from scst.models._gcng import normalized_expression

    norm = normalized_expression(adata, log1p=True)
    x = norm.toarray()
    f = gene_features(norm, adata.var_names, ["L0", "R1"])
    np.testing.assert_allclose(f[0], [x[:, 0].mean(), (x[:, 0] > 0).mean(), x[:, 0].std()], rtol=1e-5)
    np.testing.assert_allclose(f[1], [x[:, 3].mean(), (x[:, 3] > 0).mean(), x[:, 3].std()], rtol=1e-5)
    # complex: the minimum over subunits, per cell
    fc = gene_features(norm, adata.var_names, ["L0_R1"])
    m = np.minimum(x[:, 0], x[:, 3])
    np.testing.assert_allclose(fc[0], [m.mean(), (m > 0).mean(), m.std()], rtol=1e-5)


def test_direction_per_gene_control_and_fit_reports():
    # Ligands are abundant, receptors scarce, positions carry nothing: the direction task is solved by per-gene
    # abundance alone. The non-spatial per-gene classifier must find it; spatial Pearson and the expression control
    # are symmetric in (L, R), hence exactly 0.5.
    adata, pairs = grid_data(n_pairs=40)
    folds = lr_folds(pairs, task="direction", n_folds=4, seed=0)
    methods = {
        "logistic": {"method": "gene_features", "classifier": "logistic"},
        "mlp": {"method": "gene_features", "classifier": "mlp"},
        "sp": {"method": "spatial_pearson"},
        "expr": {"method": "expression"},
    }
    pred = ligrec_cv(adata, folds=folds, methods=methods, seed=0)
    m = ligrec_metrics(pred, n_boot=0).set_index("method")
    assert m.loc["logistic", "auroc"] > 0.95 and m.loc["mlp", "auroc"] > 0.95
    for sym in ("sp", "expr"):  # the same score for (L, R) and (R, L), up to float noise
        s = pred[pred["method"] == sym].set_index(["ligand", "receptor"])["score"]
        rev = s.reindex([(r, lg) for lg, r in s.index]).to_numpy()
        np.testing.assert_allclose(s.to_numpy(), rev, rtol=1e-9, atol=1e-12)
    fit = pd.DataFrame(pred.attrs["fit"])
    assert set(fit["method"]) == {"logistic", "mlp"} and len(fit) == 2 * sum(not f.test.empty for f in folds)
    assert {"train_auroc", "val_auroc", "test_auroc", "epochs", "n_train_pairs"} <= set(fit.columns)
    assert (fit["train_auroc"] > 0.95).all() and fit["val_auroc"].isna().all()
    with pytest.raises(ValueError, match="classifier"):
        ligrec_cv(adata, folds=folds, methods={"x": {"method": "gene_features", "classifier": "svm"}})


def test_gcng_fit_report_on_planted_niche():
    # Known pairs co-expressed in the left half, decoys in the right half: GCNG fits its training pairs and the
    # fit report gives train / validation / test AUROC per fold.
    rng = np.random.default_rng(0)
    xy = np.array([(i, j) for i in range(8) for j in range(8)], float)
    niche = xy[:, 0] < 4
    cols, names, rows = [], [], []
    for k in range(45):
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
    pred = ligrec_cv(adata, folds=folds, methods={"g": {"method": "gcng", "kind": "autocrine+"}}, config=FAST, seed=0)
    fit = pd.DataFrame(pred.attrs["fit"])
    # outputs of several runs (each with its own fit report) concatenate, as a benchmark does
    other = ligrec_cv(adata, folds=folds, methods={"g": {"method": "gcng", "kind": "autocrine+"}}, config=FAST, seed=1)
    assert len(pd.concat([pred, other])) == 2 * len(pred)
    assert list(fit["fold"]) == [0, 1, 2]
    assert (fit["train_auroc"] > 0.9).all() and (fit["test_auroc"] > 0.9).all()
    assert fit["val_auroc"].notna().all() and (fit["epochs"] >= 1).all()
    assert (fit["n_test_pairs"] == 30).all()


def test_duplicate_var_names_are_a_clear_error_in_the_tools():
    adata, pairs = grid_data(n_pairs=4)
    adata.var_names = ["L0", *adata.var_names[1:-1], "L0"]  # R3 renamed L0
    with pytest.raises(ValueError, match=r"var_names: 1 gene name.*\['L0'\].*var_names_make_unique"):
        ligand_receptor(adata, pairs=pairs, method="spatial_pearson", n_perms=2, expr_prop=0)
    with pytest.raises(ValueError, match="var_names_make_unique"):
        ligrec_cv(adata, pairs, n_folds=2, methods={"e": {"method": "expression"}})


def test_positions_null_cannot_test_within_cell_pearson():
    """Within-cell Pearson is unchanged when both genes' rows move together: that null would give p = 1."""
    rng = np.random.default_rng(0)
    xy = np.array([(i, j) for i in range(8) for j in range(8)], float)
    z = rng.poisson(3, len(xy))
    x = np.column_stack([z + rng.poisson(1, len(xy)), z + rng.poisson(1, len(xy)), rng.poisson(3, (len(xy), 8))])
    adata = AnnData(x.astype(np.float32), obsm={"spatial": xy})
    adata.var_names = ["L", "R", *(f"B{i}" for i in range(8))]
    cell_graph(adata, radius=1.1, library_key=None)
    with pytest.raises(ValueError, match="null='positions' cannot test method 'pearson'"):
        ligand_receptor(adata, pairs=[("L", "R")], method=["pearson", "bivariate"], null="positions", n_perms=9,
                        expr_prop=0)  # fmt: skip
    # the ligand null tests it: L and R share a Poisson component, so no ligand shuffle reaches the observed r
    ligand_receptor(adata, pairs=[("L", "R")], method="pearson", null="ligand", n_perms=99, expr_prop=0)
    res = adata.uns["scst_ligrec"]
    assert res["pearson_score"].iloc[0] > 0.3 and res["pearson_pvals"].iloc[0] == pytest.approx(1 / 100)
    # positions stays allowed where it changes the score
    ligand_receptor(adata, pairs=[("L", "R")], method="spatial_pearson", null="positions", n_perms=9, expr_prop=0)
    assert adata.uns["scst_ligrec_params"]["nulls"] == {"spatial_pearson": "positions"}


def test_graph_across_sections_is_warned_about():
    """Two slides in their own pixel frames overlap: one graph over both joins cells of different slides."""
    rng = np.random.default_rng(0)
    xy = np.array([(i, j) for i in range(6) for j in range(6)], float)
    adata = AnnData(rng.poisson(3, size=(72, 4)).astype(np.float32), obsm={"spatial": np.vstack([xy, xy])})
    adata.var_names = ["A", "B", "C", "D"]
    adata.obs["library_id"] = ["s1"] * 36 + ["s2"] * 36
    cell_graph(adata, radius=1.1, library_key=None)  # deliberately one graph over both slides
    with pytest.warns(UserWarning, match=r"312 of 552 edges .* different sections \(obs\['library_id'\]\)"):
        ligand_receptor(adata, pairs=[("A", "B")], n_perms=5, expr_prop=0)
    assert adata.uns["scst_ligrec_params"]["groups_key"] == "library_id"
    pairs = pd.DataFrame({"ligand": ["A", "C"], "receptor": ["B", "D"]})
    with pytest.warns(UserWarning, match="different sections"):
        ligrec_cv(adata, folds=lr_folds(pairs, n_folds=2, seed=0), methods={"s": {"method": "spatial_pearson"}})
    cell_graph(adata, radius=1.1)  # "auto" finds library_id too: per slide, 2 × 120 directed edges, none across
    a = sp.coo_matrix(adata.obsp["spatial_connectivities"])
    lib = adata.obs["library_id"].to_numpy()
    assert a.nnz == 240 and (lib[a.row] == lib[a.col]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ligand_receptor(adata, pairs=[("A", "B")], n_perms=5, expr_prop=0)


def test_precomputed_folds_with_genes_absent_from_the_data():
    adata, pairs = grid_data(n_pairs=20)
    folds = lr_folds(pd.concat([pairs, pairs.assign(receptor=pairs["receptor"].shift(-1, fill_value="R0"))]),
                     n_folds=2, seed=0)  # fmt: skip
    gone = folds[0].test["receptor"].iloc[0]
    sub = adata[:, [g for g in adata.var_names if g != gone]].copy()
    for spec in ({"method": "gcng", "kind": "autocrine+"}, {"method": "pearson"}, {"method": "gene_features"}):
        with pytest.raises(ValueError, match=rf"folds: 1 gene\(s\) .* not in adata.var_names: \['{gone}'\]"):
            ligrec_cv(sub, folds=folds, methods={"m": spec}, config=FAST)
    # a complex subunit counts too
    train = pd.DataFrame({"ligand": ["L1", "L2"], "receptor": ["R1", "R2"], "label": [1, 0], "group": ["L1", "L2"]})
    test = pd.DataFrame({"ligand": ["L3", "L3"], "receptor": ["R3_NOPE", "R4"], "label": [1, 0],
                         "group": ["L3", "L3"]})  # fmt: skip
    with pytest.raises(ValueError, match=r"\['NOPE'\]"):
        ligrec_cv(adata, folds=[LRFold(0, train, test)], methods={"p": {"method": "pearson"}})
    with pytest.raises(TypeError, match="sequence of LRFold"):
        ligrec_cv(adata, folds=LRFold(0, train, test), methods={"p": {"method": "pearson"}})
    # folds on genes the data have still run
    pred = ligrec_cv(adata, folds=folds, methods={"p": {"method": "pearson"}})
    assert set(pred["method"]) == {"p"} and len(pred) == sum(len(f.test) for f in folds)


def test_gene_features_scores_come_from_a_classifier_fit_on_the_training_pairs_only():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from scst.models._gcng import normalized_expression

    adata, pairs = grid_data(n_pairs=24)
    folds = lr_folds(pairs, n_folds=3, seed=0)
    pred = ligrec_cv(adata, folds=folds, methods={"lr": {"method": "gene_features"}}, log1p=True, seed=0)
    norm = normalized_expression(adata, log1p=True)

    def feats(t):  # the ligand's mean, detection, sd, then the receptor's
        return np.hstack([gene_features(norm, adata.var_names, t[c]) for c in ("ligand", "receptor")])

    scored = [f for f in folds if not f.test.empty]
    assert scored and sorted(pred["fold"].unique()) == [f.fold for f in scored]
    for f in scored:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(feats(f.train), f.train["label"].to_numpy(int))
        got = pred.loc[pred["fold"] == f.fold, "score"].to_numpy()
        np.testing.assert_allclose(got, clf.predict_proba(feats(f.test))[:, 1], rtol=1e-6)


def test_gcng_known_pairs_absent_a_failed_call_and_cells_without_a_section():
    """Known pairs with an absent gene are counted in a warning (GCNG learned from fewer positives without a word); a
    GCNG call that fails leaves neither its graph matrix nor a model setup behind; cells without a section are an
    error (as str they were one section "nan", shuffled together)."""
    adata, pairs = grid_data(n_side=6, n_pairs=12)
    adata.obs["section"] = "s0"
    cfg = {**FAST, "max_epochs": 1, "patience": 1, "validation": 0.0}
    known = pd.DataFrame({"ligand": ["L0", "L1", "L2", "L3", "Lzz"], "receptor": ["R0", "R1", "R2", "R3", "Rzz"]})
    with pytest.warns(UserWarning, match=r"known: 1 of 5 known pairs have a gene .* GCNG learns from the other 4"):
        ligand_receptor(adata, pairs=pairs, method="gcng", n_perms=0, expr_prop=0.0, gcng_config=cfg, n_folds=3,
                        known=known)  # fmt: skip
    assert adata.uns["scst_ligrec_params"]["n_known_used"] == 4
    fresh, pairs = grid_data(n_side=6, n_pairs=4)
    fresh.obs["section"] = "s0"
    before = (set(fresh.obsp), set(fresh.uns))
    with pytest.raises(ValueError, match="cannot fill 10 cross-fitting folds"):
        ligand_receptor(fresh, pairs=pairs, method="gcng", n_perms=0, expr_prop=0.0, gcng_config=cfg, n_folds=10)
    assert (set(fresh.obsp), set(fresh.uns)) == before
    fresh.obs["section"] = pd.Series(["s0"] * 30 + [None] * 6, index=fresh.obs_names, dtype=object)
    with pytest.raises(ValueError, match=r"adata.obs\['section'\]: 6 cells have no section"):
        ligand_receptor(fresh, pairs=pairs, method="spatial_pearson", n_perms=5, expr_prop=0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_folds": 1}, "n_folds: expected >= 2, got 1"),
        ({"task": "binding"}, "task: expected 'interaction' or 'direction', got 'binding'"),
        ({"negatives": "shuffled"}, "negatives: expected 'random' or 'expression_matched', got 'shuffled'"),
    ],
)
def test_lr_folds_names_a_bad_setting(kwargs, match):
    _, pairs = grid_data(n_pairs=6)
    with pytest.raises(ValueError, match=match):
        lr_folds(pairs, **kwargs)


def test_cv_names_a_bad_method_or_fold_and_gene_sets_a_bad_type(tmp_path):
    from scst.tl._ligrec_cv import gene_function_cv, read_gmt

    adata, pairs = grid_data(n_pairs=6)
    with pytest.raises(ValueError, match=r"methods\['m'\]: unknown method 'moran'; expected 'gcng', 'gene_features'"):
        ligrec_cv(adata, pairs, n_folds=2, methods={"m": {"method": "moran"}})
    with pytest.raises(TypeError, match=r"folds: expected a sequence of LRFold .*got \('train', 'test'\)"):
        ligrec_cv(adata, folds=[("train", "test")], methods={"e": {"method": "expression"}})
    gmt = tmp_path / "bad.gmt"
    gmt.write_text("S1\tdesc\tL0\tL1\nS2\tL2\n")
    with pytest.raises(ValueError, match=r"bad.gmt: line 2 has fewer than 3 tab-separated fields"):
        read_gmt(gmt)
    adata.obsp["G"] = sp.identity(adata.n_obs, format="csr")
    with pytest.raises(TypeError, match="gene_sets: expected a list of genes, a dict name → genes, or a GMT file"):
        gene_function_cv(adata, 3, graph_key="G")
