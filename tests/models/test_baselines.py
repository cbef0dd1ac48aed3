"""Baselines: ridge recovers a planted linear map without looking at the test section; mean; ST-Net trains."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import sparse

import scst.datasets  # noqa: F401  (loads scst.io through datasets: a direct `import scst.io` hits an import cycle)
from scst._normalize import log_normalized
from scst.io import concatenate_sections, read_st
from scst.models._baselines import (
    MeanExpression,
    RidgeExpression,
    STNet,
    build_backbone,
    load_backbone_weights,
)

SECTIONS = ("S1", "S2", "S3", "S4")


# ----------------------------------------------------------------------------------------------------------------
# closed-form baselines on an AnnData with planted features
# ----------------------------------------------------------------------------------------------------------------
def _planted(n_per=50, n_feat=6, n_genes=5, seed=0):
    """Counts whose log-normalised expression is (close to) a linear map of the features."""
    rng = np.random.default_rng(seed)
    n = n_per * len(SECTIONS)
    feats = rng.normal(size=(n, n_feat)) * rng.uniform(0.5, 20, n_feat) + rng.normal(0, 5, n_feat)  # any scales
    w = rng.normal(0, 0.3, size=(n_feat, n_genes))
    z = (feats - feats.mean(0)) / feats.std(0)
    log_expr = 3.0 + z @ w  # target-unit expression of the panel genes
    return _from_log_expr(log_expr, feats, n_per)


def _from_log_expr(log_expr, feats, n_per):
    """AnnData whose panel genes' log1p(normalize_total 1e4) is ``log_expr`` (up to count rounding).

    Counts: 1e6 library, panel genes take 100 (exp(log_expr) - 1), a filler gene takes the rest, so that
    normalize_total(1e4) gives back exp(log_expr) - 1 up to rounding.
    """
    n, n_genes = log_expr.shape
    panel = np.round(100 * np.expm1(log_expr))
    counts = np.column_stack([panel, 1e6 - panel.sum(1)]).astype(np.int64)
    assert (counts >= 0).all()
    genes = [f"g{j}" for j in range(n_genes)] + ["filler"]
    a = ad.AnnData(
        X=sparse.csr_matrix(counts.astype(np.int32)),
        obs=pd.DataFrame({"section": pd.Categorical(np.repeat(SECTIONS, n_per))}, index=[f"s{i}" for i in range(n)]),
        var=pd.DataFrame(index=genes),
    )
    a.var["panel"] = [g != "filler" for g in genes]
    a.obsm["X_feat"] = feats
    return a


def test_ridge_recovers_planted_map_and_ignores_test_section():
    a = _planted()
    train = ["S1", "S2", "S3"]
    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=train)
    model = RidgeExpression(a, alphas=[1e-3, 1e-1, 10.0, 1e3, 1e5]).train()
    # inner CV grouped by section: leave-one-training-section-out (3 sections ≤ n_inner_splits), S4 nowhere
    assert sorted(v for f in model.cv_folds for v in f["val"]) == train
    for fold in model.cv_folds:
        assert len(fold["val"]) == 1 and fold["train"] == sorted(set(train) - set(fold["val"]))
    # a nearly noise-free linear map: small penalties win and the held-out section is predicted well
    assert (model.params["alpha"] <= 0.1).all()
    pred = model.predict(sections="S4")
    truth = log_normalized(a[a.obs["section"] == "S4"], model.var_names)
    assert pred.shape == (50, 5)
    np.testing.assert_allclose(pred, truth, atol=0.05)
    assert set(model.cv_results.index) == {1e-3, 1e-1, 10.0, 1e3, 1e5}

    # Nothing of S4 is used: scrambling its counts and features changes neither penalties nor coefficients.
    b = a.copy()
    s4 = np.flatnonzero(b.obs["section"] == "S4")
    rng = np.random.default_rng(3)
    X = b.X.toarray()
    X[s4] = rng.poisson(50, size=(len(s4), X.shape[1]))
    b.X = sparse.csr_matrix(X)
    b.obsm["X_feat"][s4] = rng.normal(0, 100, size=(len(s4), b.obsm["X_feat"].shape[1]))
    other = RidgeExpression(b, alphas=[1e-3, 1e-1, 10.0, 1e3, 1e5]).train()
    np.testing.assert_array_equal(other.params["alpha"], model.params["alpha"])
    np.testing.assert_allclose(other.params["coef"], model.params["coef"], rtol=1e-10)
    # ... while training on S4 as well changes them
    RidgeExpression.setup_anndata(b, "X_feat", "panel")
    with_s4 = RidgeExpression(b, alphas=[1e-3, 1e-1, 10.0, 1e3, 1e5]).train()
    assert not np.allclose(with_s4.params["coef"], model.params["coef"])


def test_ridge_shared_alpha_strong_penalty_and_errors():
    a = _planted(seed=1)
    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=["S1", "S2"])
    m = RidgeExpression(a, alphas=[1e8], alpha_per_gene=False).train()
    assert m.cv_folds == []  # a single penalty needs no inner CV
    # an enormous penalty shrinks to the training mean
    MeanExpression.setup_anndata(a, "panel", sections=["S1", "S2"])
    np.testing.assert_allclose(m.predict(sections="S3"), MeanExpression(a).train().predict(sections="S3"), atol=1e-3)
    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=["S1"])
    with pytest.raises(ValueError, match="2 training sections"):
        RidgeExpression(a).train()
    with pytest.raises(KeyError, match="X_missing"):
        RidgeExpression.setup_anndata(a, "X_missing")
    with pytest.raises(ValueError, match="no spots"):
        RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=["S9"])
    with pytest.raises(ValueError, match="Unknown config"):
        RidgeExpression(a, alpha=1.0)
    with pytest.raises(ValueError, match="not trained"):
        RidgeExpression(a).predict()
    # a boolean mask of length n_vars is that panel (it became the gene names "True"/"False": a KeyError)
    MeanExpression.setup_anndata(a, a.var["panel"].to_numpy(), sections=["S1", "S2"])
    assert list(MeanExpression(a).var_names) == list(a.var_names[a.var["panel"].to_numpy()])


def _ridge_by_hand(x, y, alpha):
    """Ridge on features standardised with ``x``'s own mean/sd (ddof 0), centred ``y``: coefficients and means."""
    m, sd = x.mean(0), x.std(0)
    xs = (x - m) / sd
    coef = np.linalg.solve(xs.T @ xs + alpha * np.eye(x.shape[1]), xs.T @ (y - y.mean(0)))
    return lambda new: ((new - m) / sd) @ coef + y.mean(0)


def test_ridge_inner_cv_mse_and_penalties_by_hand():
    """The inner-CV MSE of every penalty, written out by hand: each left-out training section is predicted by ridge
    fitted (standardisation and target mean included) on the other training sections only; squared errors summed
    over folds and divided by the number of training spots. Per-gene penalties are the per-gene argmin (a signal
    gene and a pure-noise gene choose differently), a shared penalty the argmin of the mean over genes; the final
    model is ridge refitted on all training spots with the chosen penalty."""
    rng = np.random.default_rng(7)
    n_per = 40
    feats = rng.normal(size=(n_per * 4, 3)) * [1.0, 5.0, 0.2] + [0.0, 10.0, -3.0]
    z = (feats - feats.mean(0)) / feats.std(0)
    log_expr = np.column_stack([3.0 + z @ [0.4, -0.3, 0.2], 3.0 + rng.normal(0, 0.3, n_per * 4)])
    a = _from_log_expr(log_expr, feats, n_per)
    train = ["S1", "S2", "S3"]
    alphas = [1e-2, 1.0, 1e2, 1e5]
    sec = a.obs["section"].astype(str).to_numpy()
    fit = np.isin(sec, train)
    x, y = feats[fit], log_normalized(a[fit], ["g0", "g1"]).astype(np.float64)
    err = np.zeros((len(alphas), 2))
    for held in train:
        tr, va = sec[fit] != held, sec[fit] == held
        for i, alpha in enumerate(alphas):
            err[i] += ((_ridge_by_hand(x[tr], y[tr], alpha)(x[va]) - y[va]) ** 2).sum(0)
    err /= len(x)
    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=train)
    per_gene = RidgeExpression(a, alphas=alphas).train()
    np.testing.assert_allclose(per_gene.params["cv_mse"], err.mean(1), rtol=1e-8)
    expected_alpha = np.asarray(alphas)[err.argmin(0)]
    assert expected_alpha[0] < expected_alpha[1]  # the planted signal takes a small penalty, the noise a large one
    np.testing.assert_array_equal(per_gene.params["alpha"], expected_alpha)
    res = per_gene.cv_results
    np.testing.assert_allclose(res["cv_mse"].to_numpy(), err.mean(1), rtol=1e-8)
    assert res["n_genes"].tolist() == [int((expected_alpha == al).sum()) for al in alphas]
    s4 = sec == "S4"
    by_hand = np.column_stack([_ridge_by_hand(x, y[:, [g]], expected_alpha[g])(feats[s4])[:, 0] for g in (0, 1)])
    np.testing.assert_allclose(per_gene.predict(sections="S4"), by_hand, rtol=1e-5, atol=1e-5)
    shared = RidgeExpression(a, alphas=alphas, alpha_per_gene=False).train()
    np.testing.assert_array_equal(shared.params["alpha"], np.full(2, alphas[int(err.mean(1).argmin())]))
    assert shared.cv_results["n_genes"].tolist() == [2 * (al == shared.params["alpha"][0]) for al in alphas]


def test_ridge_constant_feature_bad_penalties_and_features_outside_training():
    """A constant feature is centred to 0 (no division by a zero sd); penalties must be positive; non-finite
    features are refused on training and predicted spots only, and a bad ``n_programs`` fails at construction."""
    a = _planted(seed=3)
    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=["S1", "S2", "S3"])
    ref = RidgeExpression(a).train().predict(sections="S4")
    a.obsm["X_const"] = np.column_stack([a.obsm["X_feat"], np.full(a.n_obs, 7.5)])
    RidgeExpression.setup_anndata(a, "X_const", "panel", sections=["S1", "S2", "S3"])
    with_const = RidgeExpression(a).train()
    assert np.isfinite(with_const.params["coef"]).all() and with_const.params["x_scale"][-1] == 1.0
    np.testing.assert_allclose(with_const.predict(sections="S4"), ref, rtol=1e-5, atol=1e-5)
    for bad in ([0.0, 1.0], [], [-1.0]):
        with pytest.raises(ValueError, match="alphas: expected a non-empty list of positive penalties"):
            RidgeExpression(a, alphas=bad).train()
    with pytest.raises(ValueError, match="n_programs: expected"):
        RidgeExpression(a, n_programs=0)  # at construction, before any training
    a.obsm["X_nan"] = a.obsm["X_feat"].copy()
    s4 = np.flatnonzero(a.obs["section"] == "S4")
    a.obsm["X_nan"][s4[:3], 1] = np.nan  # only in the section left out of training
    RidgeExpression.setup_anndata(a, "X_nan", "panel", sections=["S1", "S2", "S3"])
    model = RidgeExpression(a).train()
    np.testing.assert_allclose(model.predict(sections="S3"), RidgeExpression(a).train().predict(sections="S3"))
    names = list(a.obs_names[s4[:3]])  # the spots are named (not positions within the predicted rows)
    with pytest.raises(ValueError, match=r"embedding_key: obsm\['X_nan'\] has NaN/inf in 3 of \d+ spots") as err:
        model.predict(sections="S4")
    assert str(names) in str(err.value)
    with pytest.raises(ValueError, match=r"NaN/inf in 3 of \d+ spots") as err:
        RidgeExpression.setup_anndata(a, "X_nan", "panel", sections=["S3", "S4"])
    assert str(names) in str(err.value)
    # a sparse embedding is used as its dense matrix, as the heads use it
    a.obsm["X_sparse"] = sparse.csr_matrix(a.obsm["X_feat"])
    RidgeExpression.setup_anndata(a, "X_sparse", "panel", sections=["S1", "S2", "S3"])
    np.testing.assert_allclose(RidgeExpression(a).train().predict(sections="S4"), ref, rtol=1e-4, atol=1e-5)


def test_closed_form_models_read_the_counts_layer():
    """With ``layer=`` the targets come from that layer, not from ``X`` (which here holds other counts)."""
    a = _planted(seed=4)
    a.layers["counts"] = a.X.copy()
    b = a.copy()
    a.X = sparse.csr_matrix(np.random.default_rng(0).poisson(30, size=a.shape).astype(np.int32))
    train = ["S1", "S2", "S3"]
    MeanExpression.setup_anndata(a, "panel", layer="counts", sections=train)
    mean = MeanExpression(a).train()
    fit = a.obs["section"].isin(train).to_numpy()
    np.testing.assert_allclose(mean.params["mean"], log_normalized(a[fit], mean.var_names, "counts").mean(0), rtol=1e-6)
    RidgeExpression.setup_anndata(a, "X_feat", "panel", layer="counts", sections=train)
    RidgeExpression.setup_anndata(b, "X_feat", "panel", sections=train)
    np.testing.assert_allclose(RidgeExpression(a).train().predict(sections="S4"),
                               RidgeExpression(b).train().predict(sections="S4"), rtol=1e-6)  # fmt: skip


def _planted_programme(n_per=60, n_genes=24, seed=4):
    """20 genes driven by one image-informed programme plus independent per-gene noise (4 pure-noise genes)."""
    rng = np.random.default_rng(seed)
    n = n_per * len(SECTIONS)
    feats = rng.normal(size=(n, 8)) * rng.uniform(0.5, 20, 8)
    z = (feats - feats.mean(0)) / feats.std(0)
    factor = z @ rng.normal(0, 1, 8) / np.sqrt(8)  # one latent programme, linear in the features
    loading = np.r_[rng.choice([-1.0, 1.0], n_genes - 4) * rng.uniform(0.15, 0.3, n_genes - 4), np.zeros(4)]
    log_expr = 3.0 + np.outer(factor, loading) + rng.normal(0, 0.3, (n, n_genes))
    return _from_log_expr(log_expr, feats, n_per)


def _mean_pcc(pred, truth):
    return np.mean([np.corrcoef(pred[:, g], truth[:, g])[0, 1] for g in range(truth.shape[1])])


def test_reduced_rank_ridge_borrows_across_genes_and_never_sees_the_test_section(tmp_path):
    """One planted programme behind 20 noisy genes: "auto" picks few programmes from the training sections alone,
    the predictions have that rank, and the held-out correlation beats per-gene ridge (each gene's own noise is
    averaged away through the programme)."""
    a = _planted_programme()
    train = ["S1", "S2", "S3"]
    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=train)
    plain = RidgeExpression(a).train()
    rrr = RidgeExpression(a, n_programs="auto").train()
    assert plain.n_programs_ is None and 1 <= rrr.n_programs_ <= 3
    assert rrr.n_programs_ == int(rrr.params["program_cv_k"][np.argmax(rrr.params["program_cv_pcc"])])
    truth = log_normalized(a[a.obs["section"] == "S4"], rrr.var_names)
    pred = rrr.predict(sections="S4")
    sv = np.linalg.svd(pred - pred.mean(0), compute_uv=False)  # float32 predictions: relative cut
    assert (sv > 1e-4 * sv[0]).sum() == rrr.n_programs_
    signal = slice(0, 20)
    assert _mean_pcc(pred[:, signal], truth[:, signal]) > _mean_pcc(plain.predict(sections="S4")[:, signal],
                                                                  truth[:, signal]) + 0.03  # fmt: skip
    # one programme by hand: the prediction is plain ridge projected onto the training spots' first principal axis
    one = RidgeExpression(a, n_programs=1).train()
    y = log_normalized(a[a.obs["section"].isin(train)], one.var_names)
    sd = y.std(0)
    axis = np.linalg.svd((y - y.mean(0)) / sd, full_matrices=False)[2][0]
    expected = ((plain.predict(sections="S4") - y.mean(0)) / sd) @ np.outer(axis, axis) * sd + y.mean(0)
    np.testing.assert_allclose(one.predict(sections="S4"), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.abs(one.params["program_axes"][:, 0]), np.abs(axis), atol=1e-6)  # kept, any sign
    np.testing.assert_allclose(one.params["program_sd"], sd, rtol=1e-5)

    # S4 is never read: scrambling it changes neither the choice nor the coefficients
    b = a.copy()
    s4 = np.flatnonzero(b.obs["section"] == "S4")
    b.obsm["X_feat"][s4] = np.random.default_rng(5).normal(0, 100, size=(len(s4), 8))
    X = b.X.toarray()
    X[s4] = X[s4][::-1]
    b.X = sparse.csr_matrix(X)
    other = RidgeExpression(b, n_programs="auto").train()
    assert other.n_programs_ == rrr.n_programs_
    np.testing.assert_allclose(other.params["coef"], rrr.params["coef"], rtol=1e-10)

    rrr.save(tmp_path / "rrr")
    back = RidgeExpression.load(tmp_path / "rrr", data=a)
    assert back.n_programs_ == rrr.n_programs_
    np.testing.assert_array_equal(back.predict(sections="S4"), pred)
    for bad in (0, 25, 2.5, "five", True):
        with pytest.raises(ValueError, match=r"n_programs: expected None, \"auto\" or an int in \[1, 24\]"):
            RidgeExpression(a, n_programs=bad).train()


@pytest.mark.parametrize("shape", [(300, 40), (30, 60)])  # more spots than genes, and fewer
def test_expression_programs_are_the_principal_axes_whatever_the_chunk(shape):
    """Correlation-matrix eigenvectors, accumulated in chunks, span what the SVD of the z-scores gives."""
    from scst.models._baselines import expression_programs

    rng = np.random.default_rng(1)
    y = (rng.normal(size=shape) + np.outer(rng.normal(size=shape[0]), rng.normal(size=shape[1]))).astype(np.float32)
    y[:, 3] = 2.0  # a constant gene: sd set to 1, no NaN
    y64 = y.astype(np.float64)
    z = (y64 - y64.mean(0)) / np.where(y64.std(0) > 1e-8, y64.std(0), 1.0)
    vt = np.linalg.svd(z, full_matrices=False)[2]
    for chunk in (7, 100000):
        axes, mean, sd = expression_programs(y, 5, chunk=chunk)
        np.testing.assert_allclose(axes.T @ axes, np.eye(5), atol=1e-10)
        np.testing.assert_allclose(axes @ axes.T, vt[:5].T @ vt[:5], atol=1e-6)
        np.testing.assert_allclose(mean, y64.mean(0), rtol=1e-10)
        assert sd[3] == 1.0 and np.isfinite(axes).all()


def test_choose_n_programs_errors_name_the_fix():
    from scst.models._baselines import choose_n_programs

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 6))
    alpha = np.ones(6)
    with pytest.raises(ValueError, match=r'n_programs="auto" needs >= 2 training sections.*n_programs=5'):
        choose_n_programs(x, y, np.zeros(40), alpha)
    with pytest.raises(ValueError, match=r"candidates: none of \[10, 20\] lies in \[1, 6\]"):
        choose_n_programs(x, y, np.repeat([0, 1], 20), alpha, candidates=[10, 20])
    k, scores = choose_n_programs(x, y, np.repeat([0, 1], 20), alpha)
    assert set(scores) == {1, 2, 3, 4, 5, 6} and k in scores  # candidates capped at the 6 genes


def test_choose_n_programs_caps_candidates_at_the_fitting_spots():
    """With fewer fitting spots per inner fold (12) than genes (20), a candidate above 12 programmes has no
    principal axes to use: it is dropped, and a list with no candidate left names the cap."""
    from scst.models._baselines import choose_n_programs

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(24, 3)), rng.normal(size=(24, 20))
    groups = np.repeat([0, 1], 12)
    k, scores = choose_n_programs(x, y, groups, np.ones(20), candidates=[2, 5, 15])
    assert set(scores) == {2, 5} and k in (2, 5)
    with pytest.raises(ValueError, match=r"none of \[15, 20\] lies in \[1, 12\]"):
        choose_n_programs(x, y, groups, np.ones(20), candidates=[15, 20])


def test_choose_n_programs_scores_are_the_inner_cv_pcc_and_ignore_gene_scales():
    """The score of ``k`` is the held-out per-gene Pearson of ridge projected on the fitting sections' ``k`` leading
    programmes *in z-score units* (prediction / sd, projected, Pearson): written out by hand for two folds, and
    unchanged when the genes are put on wildly different scales (projecting raw units would let the largest gene
    dominate the axes' mixing)."""
    from scst.models._baselines import choose_n_programs

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 4))
    factors = x @ rng.normal(size=(4, 2))
    y = factors @ rng.normal(size=(2, 5)) + rng.normal(0, 0.8, (60, 5))
    groups = np.repeat([0, 1], 30)
    alpha = np.full(5, 2.0)
    k, scores = choose_n_programs(x, y, groups, alpha, candidates=[1, 2, 3])
    expected = np.zeros(3)
    for fit, held in ((groups == 0, groups == 1), (groups == 1, groups == 0)):
        mx, sx = x[fit].mean(0), x[fit].std(0)
        xs, yc = (x[fit] - mx) / sx, y[fit] - y[fit].mean(0)
        coef = np.linalg.solve(xs.T @ xs + 2.0 * np.eye(4), xs.T @ yc)
        pred = ((x[held] - mx) / sx) @ coef
        sd = y[fit].std(0)
        axes = np.linalg.svd(yc / sd, full_matrices=False)[2].T
        for j, kk in enumerate((1, 2, 3)):
            proj = (pred / sd) @ axes[:, :kk] @ axes[:, :kk].T
            expected[j] += _mean_pcc(proj, y[held]) / 2
    np.testing.assert_allclose([scores[c] for c in (1, 2, 3)], expected, rtol=1e-6)
    assert k == (1, 2, 3)[int(np.argmax(expected))]
    scaled = y * np.array([1e-3, 1.0, 50.0, 1e3, 0.2])
    k2, scores2 = choose_n_programs(x, scaled, groups, alpha, candidates=[1, 2, 3])
    assert k2 == k
    np.testing.assert_allclose([scores2[c] for c in (1, 2, 3)], [scores[c] for c in (1, 2, 3)], rtol=1e-6)


def test_mean_and_save_load_round_trip(tmp_path):
    a = _planted(seed=2)
    MeanExpression.setup_anndata(a, "panel", sections=["S1", "S2", "S3"])
    mean = MeanExpression(a).train()
    truth = log_normalized(a, mean.var_names)
    np.testing.assert_allclose(mean.params["mean"], truth[:150].mean(0), rtol=1e-6)
    p = mean.predict(sections=["S4"])
    assert p.shape == (50, 5) and np.ptp(p, axis=0).max() == 0

    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=["S1", "S2", "S3"])
    ridge = RidgeExpression(a).train()
    ridge.save(tmp_path / "ridge")
    mean.save(tmp_path / "mean")
    with pytest.raises(FileExistsError):
        ridge.save(tmp_path / "ridge")
    r2 = RidgeExpression.load(tmp_path / "ridge", data=a)
    np.testing.assert_array_equal(r2.predict(sections="S4"), ridge.predict(sections="S4"))
    assert r2.cv_folds == ridge.cv_folds and r2.config == ridge.config
    m2 = MeanExpression.load(tmp_path / "mean")
    np.testing.assert_array_equal(m2.predict(a, sections="S4"), p)
    with pytest.raises(ValueError, match="RidgeExpression"):
        MeanExpression.load(tmp_path / "ridge")
    # a fresh AnnData without setup gets the saved registry
    fresh = a.copy()
    fresh.uns.clear()
    np.testing.assert_array_equal(RidgeExpression.load(tmp_path / "ridge", data=fresh).predict(), ridge.predict())
    # the closed-form models share the image models' checks: a truncated attr.json is named, not a JSON traceback
    attr = tmp_path / "ridge" / "attr.json"
    attr.write_text(attr.read_text()[:40])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        RidgeExpression.load(tmp_path / "ridge")
    # a truncated params.npz too (it was zipfile's BadZipFile, which `scst predict` showed as a traceback)
    params = tmp_path / "mean" / "params.npz"
    params.write_bytes(params.read_bytes()[:100])
    import gc

    gc.collect()
    with warnings.catch_warnings(record=True) as rec:  # np.load left the unreadable archive's file open
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(ValueError, match=r"params.npz is truncated or corrupt \(BadZipFile"):
            MeanExpression.load(tmp_path / "mean")
        gc.collect()
    assert not [w for w in rec if issubclass(w.category, ResourceWarning) and "params.npz" in str(w.message)]
    (tmp_path / "mean" / "params.npz").unlink()
    with pytest.raises(FileNotFoundError, match="params.npz"):
        MeanExpression.load(tmp_path / "mean")


# ----------------------------------------------------------------------------------------------------------------
# backbones and ST-Net on a tiny synthetic SpatialData (colour of the spot blob drives gene g0)
# ----------------------------------------------------------------------------------------------------------------
def _tiny_sdata(tmp_path, sections=SECTIONS[:3], grid=4, pitch=40, seed=0):
    rng = np.random.default_rng(seed)
    parts, signal = [], []
    size = pitch * (grid + 1)
    for s in sections:
        img = np.full((size, size, 3), 245, dtype=np.uint8)
        rows = []
        cnt = {}
        for x in range(1, grid + 1):
            for y in range(1, grid + 1):
                v = rng.uniform()
                cx, cy = x * pitch, y * pitch
                colour = (1 - v) * np.array([230, 120, 190]) + v * np.array([60, 50, 140])  # eosin → haematoxylin
                img[cy - 14 : cy + 14, cx - 14 : cx + 14] = colour.astype(np.uint8)
                rows.append({"x": x, "y": y, "pixel_x": float(cx), "pixel_y": float(cy), "selected": 1})
                lam = np.array([5 + 200 * v, 205 - 200 * v, 50, 50])
                cnt[f"{x}x{y}"] = rng.poisson(lam)
                signal.append(v)
        path = tmp_path / f"{s}.png"
        Image.fromarray(img).save(path)
        counts = pd.DataFrame.from_dict(cnt, orient="index", columns=["g0", "g1", "g2", "g3"])
        parts.append(read_st(counts, pd.DataFrame(rows), path, sample=s, um_per_px=1.0, cache_dir=tmp_path / "cache"))
    return concatenate_sections(parts), np.asarray(signal)


def test_build_backbone_and_local_weights(tmp_path):
    net, dim = build_backbone("resnet18")
    assert dim == 512 and isinstance(net.fc, torch.nn.Identity)
    assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    # a full torchvision checkpoint (with the 1000-class fc) loads; its fc entries are ignored
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    ignored = load_backbone_weights(net, tmp_path / "r18.pth")
    assert sorted(ignored) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(net.conv1.weight, ref.conv1.weight)
    with pytest.raises(FileNotFoundError, match="weights"):
        load_backbone_weights(net, tmp_path / "nope.pth")
    # a checkpoint of a deeper ResNet (every resnet18 entry plus more blocks) is refused, not half-loaded
    deeper = {**ref.state_dict(), "layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)}
    torch.save(deeper, tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match="another architecture"):
        load_backbone_weights(net, tmp_path / "deeper.pth")
    wrong = {**ref.state_dict(), "conv1.weight": torch.zeros(64, 3, 3, 3)}
    torch.save({"state_dict": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="another shape"):
        load_backbone_weights(net, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="neither"):
        build_backbone("not_a_model_xyz")


def test_build_backbone_falls_back_to_timm(tmp_path):
    net, dim = build_backbone("resnet10t")  # timm-only name: not in torchvision
    assert dim == 512
    assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    # a timm checkpoint with its classifier loads; the classifier entries are reported as ignored
    import timm

    ref = timm.create_model("resnet10t", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "r10t.pth")
    assert sorted(load_backbone_weights(net, tmp_path / "r10t.pth")) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(net.conv1[0].weight, ref.conv1[0].weight)


def test_build_backbone_without_timm_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    assert build_backbone("resnet18")[1] == 512  # torchvision names need no timm
    with pytest.raises(ValueError, match=r"resnet10t.*timm is not installed"):
        build_backbone("resnet10t")


def test_stnet_trains_predicts_and_round_trips(tmp_path):
    torch.set_num_threads(1)
    sdata, _ = _tiny_sdata(tmp_path)
    STNet.setup_sdata(sdata, genes=["g0", "g1", "g2"], size_um=32.0, sections=["S1", "S2"])
    config = {"backbone": "resnet18", "weights": None, "patch_px": 32, "max_epochs": 3, "batch_size": 8, "lr": 1e-3}
    model = STNet(sdata, **config, augment=True)
    model.train(enable_progress_bar=False, validation=False)
    loss = model.history["train_loss"].to_numpy()
    assert len(loss) == 3 and loss[-1] < loss[0]
    pred = model.predict(sdata, sections="S3", progress=False)
    assert pred.shape == (16, 3) and np.isfinite(pred).all()
    model.save(tmp_path / "stnet")
    again = STNet.load(tmp_path / "stnet", data=sdata)
    np.testing.assert_allclose(again.predict(sdata, sections="S3", progress=False), pred, rtol=1e-5, atol=1e-5)
    assert again.patch_px == 32 and again.config["backbone"] == "resnet18"


def test_stnet_module_is_a_linear_head_on_the_trunk_trained_end_to_end_with_mse():
    from scst.models._baselines import STNetModule

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random"):
        module = STNetModule(3, backbone="resnet18", weights=None).eval()
    with torch.no_grad():
        module.head.bias.fill_(-1.0)  # some predictions below 0: nothing clips them
    x, target = torch.randn(4, 3, 32, 32), torch.randn(4, 3)
    feats = module.encoder(x)
    pred = module(x)["pred"]
    torch.testing.assert_close(pred, feats @ module.head.weight.T + module.head.bias)
    assert (pred < 0).any()
    loss = module.loss({"patches": x, "target": target})["loss"]
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean())  # MSE: mean over spots and genes
    loss.backward()
    # the trunk is fine-tuned (end to end), not frozen behind the head
    assert module.encoder.conv1.weight.grad is not None and module.encoder.conv1.weight.grad.abs().sum() > 0


def test_stnet_builds_the_configured_backbone_with_its_weights_file(tmp_path):
    """A trunk file as ``tl.pretrain_encoder`` writes it (safetensors, no classifier) is what STNet starts from."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ref = torchvision.models.shufflenet_v2_x0_5()
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    save_file(state, tmp_path / "trunk.safetensors")
    sdata, _ = _tiny_sdata(tmp_path, sections=SECTIONS[:2], grid=2)
    STNet.setup_sdata(sdata, genes=["g0", "g1"], size_um=32.0)
    model = STNet(sdata, backbone="shufflenet_v2_x0_5", weights=str(tmp_path / "trunk.safetensors"), patch_px=32)
    got = model.module.encoder.state_dict()
    assert isinstance(model.module.encoder, torchvision.models.ShuffleNetV2)
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert model.module.head.in_features == 1024 and model.module.head.out_features == 2
    # the file as a Path: refused at construction ("PosixPath is not JSON-able") → stored as its str
    model = STNet(sdata, backbone="shufflenet_v2_x0_5", weights=tmp_path / "trunk.safetensors", patch_px=32)
    assert model.config["weights"] == str(tmp_path / "trunk.safetensors")
    assert all(torch.equal(model.module.encoder.state_dict()[k], state[k]) for k in state)


def test_stnet_defaults_and_bench_config_reach_the_backbone(tmp_path, monkeypatch):
    """Default: DenseNet-121 with ImageNet weights on 224 px, augmented; bench: random ResNet-18 on 112 px."""
    import scst.models._baselines as baselines

    calls = []

    def fake_build(name, weights=None, **kw):
        calls.append((name, weights))
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), 3

    monkeypatch.setattr(baselines, "build_backbone", fake_build)
    sdata, _ = _tiny_sdata(tmp_path, sections=SECTIONS[:2], grid=2)
    STNet.setup_sdata(sdata, genes=["g0", "g1"], size_um=32.0)  # patch_px None: follows the config
    model = STNet(sdata)
    assert calls == [("densenet121", "IMAGENET1K_V1")] and model.patch_px == 224
    train_dl, _ = model._dataloaders(4, False, 0)
    assert train_dl.dataset.augment is True
    bench = STNet(sdata, **STNet.bench_config)
    assert calls[-1] == ("resnet18", None) and bench.patch_px == 112


def test_stnet_patch_px_of_the_setup_wins_over_the_config(tmp_path):
    sdata, _ = _tiny_sdata(tmp_path, sections=SECTIONS[:2], grid=2)
    STNet.setup_sdata(sdata, genes=["g0", "g1"], size_um=32.0, patch_px=48)
    with pytest.warns(UserWarning, match="random"):
        model = STNet(sdata, backbone="resnet18", weights=None, patch_px=32)
    assert model.patch_px == 48
    train_dl, _ = model._dataloaders(4, False, 0)
    assert train_dl.dataset[[0, 1]]["patches"].shape == (2, 3, 48, 48)


def test_stnet_batches_follow_the_seed_and_hold_only_training_sections(tmp_path):
    sdata, _ = _tiny_sdata(tmp_path, sections=SECTIONS[:3], grid=2)
    STNet.setup_sdata(sdata, genes=["g0", "g1"], size_um=32.0, sections=["S1", "S2"])
    with pytest.warns(UserWarning, match="random"):
        model = STNet(sdata, backbone="resnet18", weights=None, patch_px=32)

    def order(seed, validation=False):
        train_dl, val_dl = model._dataloaders(3, validation, seed)
        names = [s.name for s in train_dl.dataset.sections]
        return [list(b) for b in train_dl.sampler], names, val_dl

    first, names, val_dl = order(1)
    torch.manual_seed(123)  # the global RNG plays no part
    assert order(1)[0] == first and order(2)[0] != first
    assert names == ["S1", "S2"] and val_dl is None  # S3 (not set up) never reaches training
    assert sorted(i for b in first for i in b) == list(range(8))
    _, names, val_dl = order(1, validation="S2")
    assert names == ["S1"] and [s.name for s in val_dl.dataset.sections] == ["S2"]


def test_closed_form_models_without_setup_or_data_say_what_to_do(tmp_path):
    """Not set up: the setup call to make. Loaded without data: train and predict ask for data; loaded onto a table
    lacking a panel gene, train names the missing gene. The repr says the panel size, config and status."""
    a = _planted(seed=3)
    with pytest.raises(ValueError, match=r"`data` is not set up for MeanExpression; call "
                       r"`scst.models.MeanExpression.setup_anndata\(adata\)` first"):  # fmt: skip
        MeanExpression(a)
    MeanExpression.setup_anndata(a, "panel", sections=["S1", "S2"])
    mean = MeanExpression(a)
    assert repr(mean) == "MeanExpression (5 genes; no config); Not trained"
    mean.train().save(tmp_path / "mean")
    assert repr(mean) == "MeanExpression (5 genes; no config); Trained"
    RidgeExpression.setup_anndata(a, "X_feat", "panel", sections=["S1", "S2"])
    assert repr(RidgeExpression(a, alphas=[2.0], n_inner_splits=3)) == (
        "RidgeExpression (5 genes; alphas: [2.0], alpha_per_gene: True, n_inner_splits: 3, n_programs: None); "
        "Not trained"
    )
    bare = MeanExpression.load(tmp_path / "mean")
    with pytest.raises(ValueError, match="This MeanExpression has no data; load it with `data=` to train again"):
        bare.train()
    with pytest.raises(ValueError, match="data: this MeanExpression has no data attached; pass an AnnData or Spatial"):
        bare.predict()
    lacking = a[:, [g for g in a.var_names if g != "g2"]].copy()
    with pytest.raises(ValueError, match=r"The training table lacks 1 panel genes: \['g2'\]"):
        MeanExpression.load(tmp_path / "mean", data=lacking).train()
