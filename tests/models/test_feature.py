"""Heads on frozen embeddings (MLPExpression, HGGEPHead): planted signal, no collapse, leak-free training, bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import scst
from scst._normalize import log_normalized
from scst.models import HGGEPHead, MLPExpression

_spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).parent / "_he_synthetic.py")
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

PANEL = ["UP", "DOWN", "NOISE0", "HOUSE"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _table():
    tab = syn.make_sdata(image=False).tables["table"]
    rng = np.random.default_rng(0)
    # the embedding carries the planted value z (plus 6 noise features on another scale)
    tab.obsm["X_emb"] = np.column_stack([10 * tab.obs["z"].to_numpy() + 3, rng.normal(0, 50, (tab.n_obs, 6))])
    scst.pp.hypergraph(tab, use_rep="X_emb", k=3)
    return tab


def _sd_ratio(pred, truth):
    return np.median(pred.std(0) / truth.std(0))


@pytest.mark.parametrize("cls", [MLPExpression, HGGEPHead])
def test_head_learns_planted_signal_on_unseen_section(cls):
    tab = _table()
    cls.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = cls(tab, **{**cls.bench_config, "max_epochs": 60, "patience": 60})
    with pytest.raises(RuntimeError, match="not trained"):
        model.predict(tab, "S3")
    model.train(validation="S2", enable_progress_bar=False)
    pred = model.predict(tab, "S3")
    s3 = (tab.obs["section"] == "S3").to_numpy()
    truth = log_normalized(tab[s3], PANEL)
    assert pred.shape == (64, 4) and (pred >= 0).all()
    assert syn.pearson(pred[:, 0], truth[:, 0]) > 0.8 and syn.pearson(pred[:, 1], truth[:, 1]) > 0.8
    # not a constant: the planted genes' predictions spread like the observed values (collapse gives ~0)
    assert _sd_ratio(pred[:, :2], truth[:, :2]) > 0.5
    # log1p units: the mean of UP is the observed level, not a z-score
    assert abs(pred[:, 0].mean() - truth[:, 0].mean()) < 0.3 * truth[:, 0].mean()


def test_training_reads_only_the_registered_sections():
    tab = _table()
    seen = []

    class Recording(HGGEPHead):
        def _section(self, adata, section, with_targets):
            seen.append((section, with_targets))
            return super()._section(adata, section, with_targets)

    Recording.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = Recording(tab, **{**HGGEPHead.bench_config, "max_epochs": 2}).train(enable_progress_bar=False)
    assert {s for s, _ in seen} == {"S1", "S2"}
    seen.clear()
    model.predict(tab, "S3")
    assert seen == [("S3", False)]  # prediction never reads targets


def test_standardisation_size_factors_and_zinb_bias_come_from_the_training_sections_only():
    """The validation section (S4: 10x the counts, embedding shifted by 1000) steers early stopping only: the feature
    and target standardisation, the size factors' median library and the ZINB mean's initial bias are computed on
    the training sections S1, S2 (by hand here); S4 keeps its own spots, scaled by the training median."""
    from scipy import sparse

    tab = _table4()
    s4 = (tab.obs["section"] == "S4").to_numpy()
    X = tab.X.toarray()
    X[s4] *= 10
    tab.X = sparse.csr_matrix(X)
    tab.obsm["X_emb"][s4] += 1000.0
    HGGEPHead.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2", "S4"])
    small = {"dim": 8, "vit_depth": 1, "vit_heads": 2, "hg_hidden": 4, "lstm_hidden": 8, "ridge_skip": False,
             "n_programs": None}  # fmt: skip
    model = HGGEPHead(tab, **small)
    train, val = model._dataloaders(16, "S4", seed=0)
    assert [s.name for s in train.dataset.sections] == ["S1", "S2"] and [s.name for s in val.dataset.sections] == ["S4"]
    fit = tab.obs["section"].isin(["S1", "S2"]).to_numpy() & (X.sum(1) > 0)
    emb = np.asarray(tab.obsm["X_emb"], dtype=np.float32)[fit]
    np.testing.assert_allclose(model._std["x_mean"], emb.mean(0), rtol=1e-4)
    np.testing.assert_allclose(model._std["x_sd"], emb.std(0), rtol=1e-4)
    np.testing.assert_allclose(model._std["y_mean"], log_normalized(tab[fit], PANEL).mean(0), rtol=1e-4)
    lib = X.sum(1).astype(np.float64)
    median = np.median(lib[fit])
    for sec in (*train.dataset.sections, val.dataset.sections[0]):
        np.testing.assert_allclose(sec.size_factors, lib[sec.rows] / median, rtol=1e-5)
    assert np.median(val.dataset.sections[0].size_factors) == pytest.approx(10, rel=0.1)
    counts = X[fit][:, tab.var_names.get_indexer(PANEL)]
    rate = (counts / (lib[fit] / median)[:, None]).mean(0)
    np.testing.assert_allclose(model.module.zinb_mean.bias.detach().numpy(), np.log(rate), rtol=1e-4)


def test_save_load_keeps_standardisation(tmp_path):
    tab = _table()
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = MLPExpression(tab, max_epochs=5).train(enable_progress_bar=False)
    model.save(tmp_path / "m")
    loaded = MLPExpression.load(tmp_path / "m", data=tab)
    np.testing.assert_allclose(loaded.predict(tab, "S3"), model.predict(tab, "S3"), rtol=1e-5, atol=1e-6)
    # the chosen expression programmes (default n_programs="auto") come back with their inner-CV scores
    assert loaded.n_programs_ == model.n_programs_ >= 1 and loaded.program_cv_ == model.program_cv_
    torch.testing.assert_close(loaded.module.programs.axes, model.module.programs.axes)


def test_bad_embeddings_are_named():
    tab = _table()
    tab.obsm["X_nan"] = tab.obsm["X_emb"].copy()
    tab.obsm["X_nan"][[3, 70], 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf in 2 of 128 spots") as err:
        MLPExpression.setup_anndata(tab, use_rep="X_nan", genes=PANEL, sections=["S1", "S2"])
    assert str(list(tab.obs_names[[3, 70]])) in str(err.value)  # by name
    with pytest.raises(KeyError, match="embed_patches"):
        MLPExpression.setup_anndata(tab, use_rep="X_absent", genes=PANEL)
    del tab.obsp["hypergraph_incidence"]
    with pytest.raises(KeyError, match=r"scst.pp.hypergraph\(adata, use_rep='X_emb'\)"):
        HGGEPHead.setup_anndata(tab, use_rep="X_emb", genes=PANEL)
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = MLPExpression(tab, max_epochs=1).train(enable_progress_bar=False)
    other = tab.copy()
    other.obsm["X_emb"] = other.obsm["X_emb"][:, :3]
    with pytest.raises(ValueError, match="has 3 features; the model was trained on 7"):
        model.predict(other, "S3")


@pytest.mark.parametrize("cls", [MLPExpression, HGGEPHead])
def test_log_normalised_x_is_refused_and_the_counts_layer_accepted(cls):
    # log1p(normalize_total) values are >= 0 as well: they used to become targets (normalised and logged again)
    import scanpy as sc

    tab = _table()
    tab.layers["counts"] = tab.X.copy()
    sc.pp.normalize_total(tab, target_sum=1e4)
    sc.pp.log1p(tab)
    with pytest.raises(ValueError, match=r"setup_anndata: adata.X: expected raw counts .* Pass `layer=`"):
        cls.setup_anndata(tab, use_rep="X_emb", genes=PANEL)
    cls.setup_anndata(tab, use_rep="X_emb", genes=PANEL, layer="counts")
    assert cls._read_registry(tab)["layer"] == "counts"


@pytest.mark.slow
def test_head_on_real_her2st_is_not_constant(her2st_sdata):
    """Hand-crafted features of real H&E → the trained head's held-out predictions must vary across spots."""
    tab = her2st_sdata.tables["table"][her2st_sdata.tables["table"].obs["section"].isin(["C2", "C3", "C4"])].copy()
    scst.pp.select_genes(tab, n_top=300, min_fraction=0.5, sections=["C2", "C3"])
    sub = scst.datasets.her2st(sections=["C2", "C3", "C4"])
    scst.tl.embed_patches(sub, "handcrafted", out_px=64, progress=False)
    tab.obsm["X_handcrafted"] = sub.tables["table"][tab.obs_names].obsm["X_handcrafted"]
    scst.pp.hypergraph(tab, use_rep="X_handcrafted", k=3)
    HGGEPHead.setup_anndata(tab, use_rep="X_handcrafted", sections=["C2", "C3"])
    model = HGGEPHead(tab, **{**HGGEPHead.bench_config, "max_epochs": 40}).train(enable_progress_bar=False)
    pred = model.predict(tab, "C4")
    c4 = (tab.obs["section"] == "C4").to_numpy()
    truth = log_normalized(tab[c4], model.var_names)
    keep = truth.std(0) > 0
    pcc = [syn.pearson(pred[:, g], truth[:, g]) for g in np.flatnonzero(keep)]
    assert _sd_ratio(pred[:, keep], truth[:, keep]) > 0.1  # a collapsed model gives ~0.001
    assert np.mean(pcc) > 0.05


def _table4():
    tab = syn.make_sdata(sections=("S1", "S2", "S3", "S4"), image=False).tables["table"]
    rng = np.random.default_rng(1)
    tab.obsm["X_emb"] = np.column_stack([10 * tab.obs["z"].to_numpy() + 3, rng.normal(0, 50, (tab.n_obs, 6))])
    scst.pp.hypergraph(tab, use_rep="X_emb", k=3)
    return tab


@pytest.mark.parametrize("cls", [MLPExpression, HGGEPHead])
@pytest.mark.parametrize("n_programs", [None, 2, "auto"])
def test_ridge_path_starts_at_ridge_on_the_training_sections(cls, n_programs):
    """With lr 0 nothing is learned: the head's prediction is exactly ridge fitted on its training sections
    (S4, the validation section, included; left out with ``linear_on_validation=False``) — reduced-rank ridge with
    the same programmes when ``n_programs`` is set (``"auto"`` chooses the same number) — so the network can only
    add to it; without the path it is not."""
    from scst.models import RidgeExpression

    tab = _table4()
    assert (tab.X.sum(1) > 0).all()  # every spot is a training spot of both models
    RidgeExpression.setup_anndata(tab, embedding_key="X_emb", genes=PANEL, sections=["S1", "S2", "S4"])
    ridge_model = RidgeExpression(tab, n_programs=n_programs).train()
    ridge = ridge_model.predict(tab, "S3")
    cls.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2", "S4"])
    for skip in (True, False):
        cfg = {"ridge_skip": skip, "n_programs": n_programs, "max_epochs": 1, "lr": 0.0, "weight_decay": 0.0}
        model = cls(tab, **{**cls.bench_config, **cfg})
        model.train(validation="S4", enable_progress_bar=False)
        pred = model.predict(tab, "S3")
        if skip:
            np.testing.assert_allclose(pred, ridge, rtol=1e-4, atol=1e-4)
            assert not any(p.requires_grad for p in model.module.skip.parameters())  # frozen
        else:
            assert np.abs(pred - ridge).max() > 0.05
        if n_programs is not None:
            assert model.n_programs_ == ridge_model.n_programs_
            assert np.linalg.matrix_rank(pred - pred.mean(0), tol=1e-3) <= model.n_programs_
    # linear_on_validation=False: the closed-form parts leave the validation section S4 out (ridge on S1, S2)
    RidgeExpression.setup_anndata(tab, embedding_key="X_emb", genes=PANEL, sections=["S1", "S2"])
    ridge12 = RidgeExpression(tab, n_programs=n_programs).train().predict(tab, "S3")
    assert np.abs(ridge12 - ridge).max() > 1e-3  # S4 matters, so the check below can fail
    cls.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2", "S4"])
    cfg = {"n_programs": n_programs, "linear_on_validation": False, "max_epochs": 1, "lr": 0.0, "weight_decay": 0.0}
    model = cls(tab, **{**cls.bench_config, **cfg})
    model.train(validation="S4", enable_progress_bar=False)
    np.testing.assert_allclose(model.predict(tab, "S3"), ridge12, rtol=1e-4, atol=1e-4)


def test_bad_n_programs_is_named():
    tab = _table()
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    for bad in (0, 5, "all", 1.5):
        with pytest.raises(ValueError, match=r"n_programs: expected None, \"auto\" or an int in \[1, 4\]"):
            MLPExpression(tab, n_programs=bad)


@pytest.mark.parametrize("cls", [MLPExpression, HGGEPHead])
def test_bad_head_settings_are_named(cls):
    """``ridge_skip="False"`` switched the ridge path on (a non-empty string is true) and ``hidden=100.5`` was
    truncated to 100; both are refused, naming the setting."""
    tab = _table()
    cls.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    for bad in ("False", 1, None):
        with pytest.raises(ValueError, match=f"ridge_skip: expected True or False, got {bad!r}"):
            cls(tab, ridge_skip=bad)
    cls(tab, ridge_skip=np.bool_(False))  # a numpy boolean is a boolean
    if cls is MLPExpression:
        for bad in (100.5, 0, True):
            with pytest.raises(ValueError, match=f"hidden: expected a (positive integer|number), got {bad!r}"):
                cls(tab, hidden=bad)


def test_ridge_path_with_one_training_section_warns():
    tab = _table()
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1"])
    with pytest.warns(UserWarning, match="ridge path's penalty at 100 and the number of programmes at 4 are fixed"):
        model = MLPExpression(tab, max_epochs=1).train(validation=False, enable_progress_bar=False)
    assert model.n_programs_ == 4 and model.program_cv_ is None  # min(5, the 4 genes); no CV was possible


def test_head_predicts_from_the_table_it_was_set_up_on_and_save_data_keeps_the_callers_path(tmp_path):
    """A SpatialData whose table is not called "table": predict reads the set-up table (it looked for "table");
    ``save(save_data=True)`` writes a copy without re-pointing the caller's ``sdata.path`` at the (renamed) temp dir."""
    sd = syn.make_sdata(image=False)
    tab = sd.tables["table"]
    del sd.tables["table"]
    sd.tables["spots"] = tab
    tab.obsm["X_emb"] = _table().obsm["X_emb"]
    MLPExpression.setup_sdata(sd, table="spots", use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = MLPExpression(sd, **{**MLPExpression.bench_config, "max_epochs": 2}).train(enable_progress_bar=False)
    pred = model.predict(sections="S3")
    assert pred.shape == ((tab.obs["section"] == "S3").sum(), len(PANEL))
    assert sd.path is None
    model.save(tmp_path / "m", save_data=True)
    assert sd.path is None and (tmp_path / "m" / "data.zarr").is_dir()
    np.testing.assert_allclose(MLPExpression.load(tmp_path / "m").predict(sections="S3"), pred, rtol=1e-6)


def test_overwriting_the_folder_the_loaded_data_is_read_from_needs_save_data(tmp_path):
    """``save(save_data=True)`` → ``load`` → ``save(overwrite=True)`` into the same folder deleted ``data.zarr``, which
    the loaded SpatialData reads its images from lazily: they then read as zeros, silently."""
    sd = syn.make_sdata()
    sd.tables["table"].obsm["X_emb"] = _table().obsm["X_emb"]
    MLPExpression.setup_sdata(sd, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    MLPExpression(sd, **MLPExpression.bench_config).save(tmp_path / "m", save_data=True)
    loaded = MLPExpression.load(tmp_path / "m")
    image = np.asarray(loaded.data.images["S1_image"].data.compute())
    assert image.mean() > 100
    with pytest.raises(ValueError, match=r"data is read \(lazily\) from .*data.zarr.* Pass `save_data=True`"):
        loaded.save(tmp_path / "m", overwrite=True)
    loaded.save(tmp_path / "m", overwrite=True, save_data=True)
    np.testing.assert_array_equal(np.asarray(loaded.data.images["S1_image"].data.compute()), image)


def test_validation_argument_is_checked_and_training_without_one_warns():
    tab = _table()
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1"])
    config = {**MLPExpression.bench_config, "max_epochs": 1}
    with pytest.raises(ValueError, match=r"validation: expected None or True .* got 0.2"):
        MLPExpression(tab, **config).train(validation=0.2, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="one training section; training without validation, so no early stopping"):
        MLPExpression(tab, **config).train(enable_progress_bar=False)


def test_standardisation_skips_empty_spots_keeps_constant_features_and_reads_the_layer():
    """Targets come from ``layer`` (``X`` holds other counts here); a spot with no counts is left out of fitting and
    of every statistic (its outlying embedding included); a constant feature gets sd 1, not 0."""
    from scipy import sparse

    tab = _table4()
    counts = tab.X.toarray()
    s1 = np.flatnonzero((tab.obs["section"] == "S1").to_numpy())
    empty = s1[5]
    counts[empty] = 0
    tab.layers["counts"] = sparse.csr_matrix(counts)
    tab.X = sparse.csr_matrix(np.random.default_rng(2).poisson(20, size=counts.shape).astype(np.int32))
    tab.obsm["X_emb"] = np.column_stack([tab.obsm["X_emb"], np.full(tab.n_obs, 4.0)])
    tab.obsm["X_emb"][empty, :2] = 1000.0
    HGGEPHead.setup_anndata(tab, use_rep="X_emb", genes=PANEL, layer="counts", sections=["S1", "S2", "S4"])
    small = {"dim": 8, "vit_depth": 1, "vit_heads": 2, "hg_hidden": 4, "lstm_hidden": 8, "ridge_skip": False,
             "n_programs": None}  # fmt: skip
    model = HGGEPHead(tab, **small)
    with pytest.warns(UserWarning, match=rf"Section 'S1': 1 of {len(s1)} spot\(s\) have no counts"):
        train, _ = model._dataloaders(16, "S4", seed=0)
    fit = tab.obs["section"].isin(["S1", "S2"]).to_numpy()
    fit[empty] = False
    truth = log_normalized(tab[fit], PANEL, "counts")
    np.testing.assert_allclose(model._std["y_mean"], truth.mean(0), rtol=1e-4)
    np.testing.assert_allclose(model._std["y_sd"], truth.std(0), rtol=1e-4)
    emb = np.asarray(tab.obsm["X_emb"], dtype=np.float32)[fit]
    np.testing.assert_allclose(model._std["x_mean"], emb.mean(0), rtol=1e-4)
    np.testing.assert_allclose(model._std["x_sd"][:-1], emb.std(0)[:-1], rtol=1e-4)
    assert model._std["x_sd"][-1] == 1.0
    sec1 = train.dataset.sections[0]
    assert empty not in sec1.rows and len(sec1.rows) == len(s1) - 1
    assert sec1.x.shape[0] == sec1.incidence.shape[0] == sec1.incidence.shape[1] == len(sec1.rows)
    assert np.isfinite(sec1.x).all() and np.abs(sec1.x[:, -1]).max() == 0.0


def test_one_training_section_fixes_ridge_at_100_and_five_programmes():
    """One training section: no grouped CV, so the ridge path is ridge with penalty 100 (checked against
    RidgeExpression with ``alphas=[100]``) and "auto" takes min(5, genes) programmes (5 of the 11 genes here)."""
    from scst.models import RidgeExpression

    tab = _table()
    genes = list(tab.var_names)
    RidgeExpression.setup_anndata(tab, embedding_key="X_emb", genes=genes, sections=["S1"])
    ridge = RidgeExpression(tab, alphas=[100.0]).train().predict(tab, "S3")
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=genes, sections=["S1"])
    cfg = {"n_programs": None, "max_epochs": 1, "lr": 0.0, "weight_decay": 0.0}
    with pytest.warns(UserWarning, match="ridge path's penalty at 100 are fixed"):
        model = MLPExpression(tab, **cfg).train(validation=False, enable_progress_bar=False)
    np.testing.assert_allclose(model.predict(tab, "S3"), np.clip(ridge, 0, None), rtol=1e-4, atol=1e-4)
    with pytest.warns(UserWarning, match="number of programmes at 5 are fixed"):
        auto = MLPExpression(tab, max_epochs=1).train(validation=False, enable_progress_bar=False)
    assert auto.n_programs_ == 5


def test_head_predictions_are_clipped_at_zero():
    """The ridge path extrapolates below 0 on a section whose features lie far outside training: the head's
    prediction is expression, clipped at 0 as documented (lr 0: exactly the clipped ridge)."""
    from scst.models import RidgeExpression

    tab = _table()
    far = np.where((tab.obs["section"] == "S3").to_numpy()[:, None], 50.0, 1.0)
    tab.obsm["X_far"] = tab.obsm["X_emb"] * far
    RidgeExpression.setup_anndata(tab, embedding_key="X_far", genes=PANEL, sections=["S1", "S2"])
    ridge = RidgeExpression(tab).train().predict(tab, "S3")
    assert ridge.min() < 0  # the case this test is about
    MLPExpression.setup_anndata(tab, use_rep="X_far", genes=PANEL, sections=["S1", "S2"])
    cfg = {"n_programs": None, "max_epochs": 1, "lr": 0.0, "weight_decay": 0.0}
    model = MLPExpression(tab, **cfg).train(validation=False, enable_progress_bar=False)
    np.testing.assert_allclose(model.predict(tab, "S3"), np.clip(ridge, 0, None), rtol=1e-4, atol=1e-4)


def test_head_predict_refuses_a_batch_size_that_is_not_a_positive_integer():
    """batch_size=0 (or a negative) fell back to the training batch size without a word."""
    tab = _table()
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = MLPExpression(tab, n_programs=None, max_epochs=1).train(validation=False, enable_progress_bar=False)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=r"batch_size: expected a positive integer, got"):
            model.predict(tab, "S3", batch_size=bad)
    np.testing.assert_array_equal(model.predict(tab, "S3", batch_size=np.int64(7)), model.predict(tab, "S3"))


def test_spatial_head_predictions_on_a_lattice_follow_a_permutation_of_the_rows():
    """Spots on an exact grid tie in the prediction windows: permuting the table permutes the predictions only."""
    tab = _table()
    r, c = divmod(np.arange(tab.n_obs) % 64, 8)
    tab.obsm["spatial"] = np.column_stack([c * 80.0, r * 80.0])  # no jitter: a lattice per section
    scst.pp.hypergraph(tab, use_rep="X_emb", k=3)
    HGGEPHead.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    config = {"max_epochs": 3, "dim": 16, "vit_heads": 2, "hg_hidden": 8, "lstm_hidden": 8, "batch_size": 20}
    model = HGGEPHead(tab, **config, ridge_skip=False, n_programs=None).train(enable_progress_bar=False)
    s3 = (tab.obs["section"] == "S3").to_numpy()
    expected = model.predict(tab, "S3")
    perm = np.random.default_rng(0).permutation(tab.n_obs)
    shuffled = tab[perm].copy()  # the hypergraph (obsp) is permuted with the rows
    got = model.predict(shuffled, "S3")
    order = shuffled.obs_names[(shuffled.obs["section"] == "S3").to_numpy()].get_indexer(tab.obs_names[s3])
    np.testing.assert_allclose(got[order], expected, rtol=1e-5, atol=1e-6)


def test_a_loaded_head_trains_only_on_its_own_sections_and_checks_spot_centres(tmp_path):
    """Review 2026-12-04: a head loaded onto a table of other sections trained on empty sections (numpy's 'Mean of
    empty slice', then a sampler error); NaN or missing spot centres failed inside scipy; predict(batch_size=1)
    failed in the window tiling."""
    tab = _table()
    HGGEPHead.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = HGGEPHead(tab, **{**HGGEPHead.bench_config, "max_epochs": 1})
    model.train(validation="S2", enable_progress_bar=False)
    model.save(tmp_path / "m")
    other = syn.make_sdata(sections=("A", "B"), image=False).tables["table"]
    other.obsm["X_emb"] = tab.obsm["X_emb"][: other.n_obs]
    scst.pp.hypergraph(other, use_rep="X_emb", k=3)
    loaded = HGGEPHead.load(tmp_path / "m", other)
    with pytest.raises(ValueError, match=r"data: the training sections \['S1', 'S2'\] of this HGGEPHead"):
        loaded.train(max_epochs=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match="batch_size \\(spots per window\\) must be at least 2, got 1"):
        model.predict(tab, "S3", batch_size=1)
    bad = tab.copy()
    bad.obsm["spatial"] = np.asarray(bad.obsm["spatial"], float).copy()
    bad.obsm["spatial"][np.flatnonzero(bad.obs["section"] == "S3")[:3]] = np.nan
    with pytest.raises(ValueError, match=r"spatial_key: obsm\['spatial'\] has NaN/inf in 3 of 64 spots.*fix their"):
        model.predict(bad, "S3")
    del bad.obsm["spatial"]
    with pytest.raises(KeyError, match="argument `spatial_key`; the spot centres"):
        model.predict(bad, "S3")
    bad = tab.copy()
    bad.obsm["spatial"] = np.asarray(bad.obsm["spatial"], float).copy()
    bad.obsm["spatial"][0] = np.inf
    with pytest.raises(ValueError, match="spatial_key: obsm"):
        HGGEPHead.setup_anndata(bad, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])


def test_head_setup_training_and_prediction_inputs_are_named(tmp_path):
    """A SpatialData where setup needs its table; a window of one spot; prediction on a table without the
    hypergraph, or with no data at all."""
    sdata = syn.make_sdata(image=False)
    with pytest.raises(TypeError, match="adata: expected an AnnData, got SpatialData"):
        HGGEPHead.setup_anndata(sdata, use_rep="X_emb", genes=PANEL)
    tab = _table()
    HGGEPHead.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = HGGEPHead(tab, **{**HGGEPHead.bench_config, "max_epochs": 1})
    with pytest.raises(ValueError, match=r"batch_size \(spots per window\) must be at least 2, got 1"):
        model.train(batch_size=1, validation="S2", enable_progress_bar=False)
    assert not model.is_trained
    model.train(validation="S2", enable_progress_bar=False).save(tmp_path / "m")
    no_graph = tab.copy()
    del no_graph.obsp["hypergraph_incidence"]
    with pytest.raises(KeyError, match=r"data: obsp lacks 'hypergraph_incidence'; run `scst.pp.hypergraph\(adata"):
        model.predict(no_graph, "S3")
    with pytest.raises(ValueError, match="data: this model has no data attached; pass an AnnData or SpatialData"):
        HGGEPHead.load(tmp_path / "m").predict(sections="S3")


def test_training_a_trained_head_again_keeps_its_standardisation_and_linear_parts():
    """A second ``train()`` continues the trained head: the standardisation and the closed-form parts (ridge path,
    programmes) stay those of the first training, whatever the table holds now. With lr 0 the predictions are
    therefore unchanged after the training embeddings moved by 100 (re-standardising would shift them)."""
    tab = _table()
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = MLPExpression(tab, max_epochs=1, lr=0.0, weight_decay=0.0).train(validation="S2", enable_progress_bar=False)
    std, pred = {k: list(v) for k, v in model._std.items()}, model.predict(tab, "S3")
    skip = model.module.skip.weight.detach().clone()
    tab.obsm["X_emb"][tab.obs["section"].isin(["S1", "S2"]).to_numpy()] += 100.0
    model.train(validation="S2", enable_progress_bar=False)
    assert model._std == std
    torch.testing.assert_close(model.module.skip.weight, skip, rtol=0, atol=0)
    np.testing.assert_array_equal(model.predict(tab, "S3"), pred)


def test_the_spot_head_leaves_spots_without_counts_out_and_needs_every_panel_gene():
    from scipy import sparse

    tab = _table()
    s1 = np.flatnonzero((tab.obs["section"] == "S1").to_numpy())
    n2 = int((tab.obs["section"] == "S2").sum())
    counts = tab.X.toarray()
    counts[s1[[3, 7]]] = 0
    tab.X = sparse.csr_matrix(counts)
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1", "S2"])
    model = MLPExpression(tab, n_programs=None)
    with pytest.warns(UserWarning, match=rf"Section 'S1': 2 of {len(s1)} spot\(s\) have no counts"):
        train, val = model._dataloaders(16, "S2", seed=0)
    assert len(train.dataset) == len(s1) - 2 and len(val.dataset) == n2
    # a table without one of the panel genes (the registry copied along) cannot be trained on
    lacking = tab[:, tab.var_names != "DOWN"].copy()
    with pytest.raises(ValueError, match=r"The training table lacks 1 panel genes: \['DOWN'\]"):
        MLPExpression(lacking, max_epochs=1).train(validation="S2", enable_progress_bar=False)


def test_one_training_section_with_nothing_to_choose_does_not_warn():
    """No ridge path and a given number of programmes: the missing grouped CV fixes nothing, so nothing is said."""
    import warnings

    tab = _table()
    MLPExpression.setup_anndata(tab, use_rep="X_emb", genes=PANEL, sections=["S1"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*grouped CV")
        model = MLPExpression(tab, ridge_skip=False, n_programs=2, max_epochs=1)
        model.train(validation=False, enable_progress_bar=False)
    assert model.n_programs_ == 2 and model.program_cv_ is None and model.module.skip is None
