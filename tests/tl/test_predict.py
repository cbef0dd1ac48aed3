"""scst.tl.predict_expression and scst.tl.cross_validate on synthetic H&E with a planted signal."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

from scst._normalize import log_normalized
from scst.models._baselines import MeanExpression, RidgeExpression
from scst.models._tcgn import TCGN
from scst.tl._predict import cross_validate, predict_expression

_spec = importlib.util.spec_from_file_location(
    "_he_synthetic", Path(__file__).parents[1] / "models" / "_he_synthetic.py"
)
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

PANEL = ["UP", "DOWN", "NOISE0", "HOUSE"]
CONFIG = {**TCGN.bench_config, "img_size": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained():
    sd = syn.make_sdata()
    TCGN.setup_sdata(sd, genes=PANEL, size_um=syn.SIZE_UM, sections=["S1", "S2"])
    model = TCGN(sd, **CONFIG).train(max_epochs=8, enable_progress_bar=False)
    return sd, model


def test_predict_layer(trained):
    sd, model = trained
    tab = sd.tables["table"]
    predict_expression(sd, model, sections=["S3"], progress=False)
    M = tab.layers["predicted"]
    # Sparse, NaN-free: only the predicted block (S3's spots × the 4 panel genes of the 6) is stored.
    assert sparse.isspmatrix_csr(M) and M.shape == tab.shape and M.dtype == np.float32
    s3 = (tab.obs["section"] == "S3").to_numpy()
    cols = tab.var_names.get_indexer(PANEL)
    assert tab.n_vars > len(PANEL)  # the panel is a strict subset of the genes
    assert M.nnz == s3.sum() * len(PANEL) and np.isfinite(M.data).all()
    np.testing.assert_array_equal(tab.var["predicted_mask"].to_numpy(), np.isin(np.arange(tab.n_vars), cols))
    np.testing.assert_array_equal(tab.obs["predicted_mask"].to_numpy(), s3)
    D = M.toarray()
    np.testing.assert_allclose(D[np.ix_(s3, cols)], model.predict(sd, "S3", progress=False), rtol=1e-6)
    truth = log_normalized(tab[s3], ["UP"])[:, 0]
    assert syn.pearson(D[s3, cols[0]], truth) > 0.3
    assert tab.uns["scst_predict"]["model"] == "TCGN" and tab.uns["scst_predict"]["n_genes"] == 4
    # the masked block goes straight into scanpy
    sub = tab[tab.obs["predicted_mask"], tab.var["predicted_mask"]].copy()
    sub.X = sub.layers["predicted"]
    sc.pp.pca(sub, n_comps=2)
    assert np.isfinite(sub.obsm["X_pca"]).all()
    # a second call for S1 keeps S3's values; both sections are marked
    predict_expression(sd, model, sections="S1", progress=False)
    s1 = (tab.obs["section"] == "S1").to_numpy()
    D2 = tab.layers["predicted"].toarray()
    np.testing.assert_array_equal(D2[np.ix_(s3, cols)], D[np.ix_(s3, cols)])
    np.testing.assert_allclose(D2[np.ix_(s1, cols)], model.predict(sd, "S1", progress=False), rtol=1e-6)
    np.testing.assert_array_equal(tab.obs["predicted_mask"].to_numpy(), s1 | s3)
    assert tab.layers["predicted"].nnz == (s1 | s3).sum() * len(PANEL)
    # copy=True leaves sdata alone
    out = predict_expression(sd, model, layer="p2", sections="S2", progress=False, copy=True)
    assert "p2" in out.layers and "p2" not in tab.layers


def test_layer_of_another_panel_is_replaced_with_a_warning():
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    tab.obsm["X_z"] = np.column_stack([tab.obs["z"].to_numpy(), np.random.default_rng(0).normal(size=tab.n_obs)])
    fits = {}
    for genes in (PANEL, PANEL[:2]):
        RidgeExpression.setup_anndata(tab, embedding_key="X_z", genes=genes, sections=["S1", "S2"])
        fits[len(genes)] = RidgeExpression(tab).train()
    predict_expression(sd, fits[4], sections="S3", progress=False)
    predict_expression(sd, fits[4], sections="S1", progress=False)  # same panel: S3 kept, no warning
    assert tab.obs["predicted_mask"].sum() == ((tab.obs["section"] == "S3") | (tab.obs["section"] == "S1")).sum()
    with pytest.warns(UserWarning, match="another gene panel"):
        predict_expression(sd, fits[2], sections="S1", progress=False)
    s1 = (tab.obs["section"] == "S1").to_numpy()
    np.testing.assert_array_equal(tab.obs["predicted_mask"].to_numpy(), s1)  # S3's 4-gene values are gone
    assert tab.var["predicted_mask"].sum() == 2 and tab.layers["predicted"].nnz == s1.sum() * 2
    # evaluate_expression reads the masks: only S1's spots and the 2 panel genes are evaluated
    from scst.tl import evaluate_expression

    evaluate_expression(tab, "predicted", by="section")
    params = tab.uns["scst_eval_params"]
    assert params["n_genes"] == 2 and list(params["n_spots"]) == ["S1"]
    assert params["n_unpredicted_spots"] == int((~s1).sum())


def test_missing_panel_genes_error_lists_them(trained):
    sd, model = trained
    lacking = syn.make_sdata(sections=("S4",), seed=5)
    t = lacking.tables["table"]
    lacking.tables["table"] = t[:, [g for g in t.var_names if g not in ("DOWN", "NOISE0")]].copy()
    with pytest.raises(ValueError, match=r"lacks 2 of the model's 4 panel genes: \['DOWN', 'NOISE0'\]"):
        predict_expression(lacking, model, progress=False)
    predict_expression(lacking, model, table_added="pred", progress=False)
    new = lacking.tables["pred"]
    assert list(new.var_names) == PANEL and new.n_obs == 64 and np.isfinite(new.layers["predicted"]).all()


def test_he_only_slide_via_tile_grid(trained):
    _, model = trained
    he = syn.make_sdata(sections=("S5",), seed=7)
    del he.tables["table"]
    predict_expression(he, model, um_per_px=syn.UM_PER_PX, progress=False)
    new = he.tables["table_predicted"]
    assert list(new.var_names) == PANEL and "S5_grid" in he.shapes
    # tissue covers the 8 × 8 spot block (≈ 330 µm wide): a grid 80 µm apart finds tens of pseudo-spots on it
    assert 20 <= new.n_obs <= 100
    assert np.isfinite(new.X).all() and np.array_equal(new.X, new.layers["predicted"])
    assert {"array_row", "array_col", "section"} <= set(new.obs) and new.obsm["spatial"].shape == (new.n_obs, 2)


def test_cross_validate_closed_form_and_deep():
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    # a feature that carries the planted signal: ridge on it must predict UP/DOWN in every fold
    tab.obsm["X_z"] = np.column_stack([tab.obs["z"].to_numpy(), np.random.default_rng(0).normal(size=tab.n_obs)])
    df = cross_validate(RidgeExpression, sd, genes=PANEL, setup_kwargs={"embedding_key": "X_z"}, metrics=("pearson",))
    assert list(df.columns) == ["fold", "section", "gene", "metric", "value"]
    assert sorted(df["section"].unique()) == ["S1", "S2", "S3"] and len(df) == 3 * len(PANEL)
    up = df[df["gene"] == "UP"]["value"]
    assert (up > 0.7).all()
    mean = cross_validate(MeanExpression, sd, genes=PANEL, metrics=("pearson",))
    assert (mean["value"] == 0).all()  # a constant prediction ranks no spot above another
    # deep model: two folds (one training section each, so no validation), one epoch
    deep, preds = cross_validate(
        TCGN, sd, genes=PANEL, config={**CONFIG, "max_epochs": 1}, setup_kwargs={"size_um": syn.SIZE_UM},
        sections=["S1", "S2"], metrics=("pearson", "mse"), return_predictions=True,
    )  # fmt: skip
    assert set(deep["metric"]) == {"pearson", "mse"} and set(deep["section"]) == {"S1", "S2"}
    assert preds["S2"].shape == (64, 4) and np.isfinite(preds["S2"]).all()
    for fold in deep.attrs["folds"]:
        assert fold["train_sections"] == [s for s in ("S1", "S2") if s != fold["section"]]
        assert fold["epochs"] == 1 and fold["validation"] == []  # one training section: nothing held out
    assert "_scst_setup" not in tab.uns  # folds set up copies, the user's table is untouched


def test_cross_validate_warns_that_closed_form_models_ignore_train_kwargs_and_validation():
    """Closed-form models cannot use train_kwargs or a validation section: ignored, no longer without a word."""
    sd = syn.make_sdata()
    with pytest.warns(UserWarning, match=r"MeanExpression is fit in closed form.*\['max_epochs'\] and validation='S2'"):
        cross_validate(
            MeanExpression, sd, genes=PANEL, metrics=("pearson",), train_kwargs={"max_epochs": 3}, validation="S2",
            test_sections=["S1"],
        )  # fmt: skip
    with warnings.catch_warnings():  # the defaults (and validation=None) ask for nothing the model lacks
        warnings.simplefilter("error")
        cross_validate(MeanExpression, sd, genes=PANEL, metrics=("pearson",), validation=None, test_sections=["S1"])


def test_cross_validate_chooses_each_folds_panel_without_its_test_section(monkeypatch):
    """Default ``genes=None``: the panel of each fold comes from ``select_genes`` on its training sections only."""
    import scst.pp._genes as genes_mod

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    tab.obsm["X_z"] = np.column_stack([tab.obs["z"].to_numpy(), np.random.default_rng(0).normal(size=tab.n_obs)])
    real, seen = genes_mod.select_genes, []

    def recording(adata, *args, sections=None, **kwargs):
        seen.append((sorted(sections), sorted(adata.obs["section"].unique())))
        return real(adata, *args, sections=sections, **kwargs)

    monkeypatch.setattr(genes_mod, "select_genes", recording)
    df = cross_validate(
        RidgeExpression, sd, setup_kwargs={"embedding_key": "X_z"}, metrics=("pearson",),
        select_genes_kwargs={"n_top": 3, "min_fraction": 0.0}, test_sections=["S1", "S3"],
    )  # fmt: skip
    assert seen == [(["S2", "S3"], ["S1", "S2", "S3"]), (["S1", "S2"], ["S1", "S2", "S3"])]
    assert sorted(df["section"].unique()) == ["S1", "S3"]
    for fold in df.attrs["folds"]:
        assert 0 < fold["n_genes"] == len(fold["genes"]) == df[df["section"] == fold["section"]]["gene"].nunique()
    assert "highly_variable_scst_fold" not in tab.var  # the user's table is untouched
    with pytest.raises(ValueError, match="test_sections"):
        cross_validate(RidgeExpression, sd, setup_kwargs={"embedding_key": "X_z"}, test_sections=["S9"])


def test_feature_head_on_he_only_slide_recomputes_its_embedding():
    """A head on obsm features predicts an H&E-only slide: the embedding and hypergraph are remade as recorded."""
    from scst.models import HGGEPHead
    from scst.pp import hypergraph
    from scst.tl import embed_patches

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    sizes = (syn.SIZE_UM, 2 * syn.SIZE_UM)
    embed_patches(sd, "handcrafted", size_um=sizes, out_px=32, key_added="X_hc", progress=False)
    assert tab.obsm["X_hc"].shape[1] == len(tab.uns["scst_embed"]["X_hc"]["feature_names"])
    assert tab.uns["scst_embed"]["X_hc"]["size_um"] == [syn.SIZE_UM, 2 * syn.SIZE_UM]
    hypergraph(tab, use_rep="X_hc", k=3)
    HGGEPHead.setup_anndata(tab, use_rep="X_hc", genes=PANEL, sections=["S1", "S2"])
    model = HGGEPHead(tab, **{**HGGEPHead.bench_config, "max_epochs": 3}).train(enable_progress_bar=False)
    assert model.registry["embedding"]["encoder"] == "handcrafted" and model.registry["hypergraph_params"]["k"] == 3
    # the same spots, without the embedding and hypergraph: both are recomputed and give the same prediction
    expected = model.predict(tab, "S3")
    bare = syn.make_sdata()
    del bare.images["S1_image"]  # one section is predicted: only its spots are featurised (S1's image is not read)
    predict_expression(bare, model, sections="S3", progress=False)
    got = bare.tables["table"][bare.tables["table"].obs["section"] == "S3", PANEL].layers["predicted"].toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert "X_hc" not in bare.tables["table"].obsm  # remade on a copy of those spots, not kept half-filled
    # an H&E-only slide: pseudo-spots on a grid, featurised the same way
    he = syn.make_sdata(sections=("S5",), seed=7)
    del he.tables["table"]
    predict_expression(he, model, um_per_px=syn.UM_PER_PX, progress=False)
    new = he.tables["table_predicted"]
    assert new.obsm["X_hc"].shape[1] == tab.obsm["X_hc"].shape[1] and np.isfinite(new.X).all()
    assert new.X.std(0).max() > 0  # spots differ
    # a hypergraph key without the "_incidence" suffix: the remade graph goes where the model reads it
    tab.obsp["hg"] = tab.obsp["hypergraph_incidence"]
    tab.uns["hg"] = tab.uns["hypergraph"]
    HGGEPHead.setup_anndata(tab, use_rep="X_hc", genes=PANEL, sections=["S1", "S2"], hypergraph_key="hg")
    custom = HGGEPHead(tab, **{**HGGEPHead.bench_config, "max_epochs": 1}).train(enable_progress_bar=False)
    bare = syn.make_sdata()
    predict_expression(bare, custom, progress=False)  # every section: the remade features are kept in the table
    assert "hg" in bare.tables["table"].obsp and "hg_incidence" not in bare.tables["table"].obsp
    got = bare.tables["table"][bare.tables["table"].obs["section"] == "S3", PANEL].layers["predicted"].toarray()
    np.testing.assert_allclose(got, custom.predict(tab, "S3"), rtol=1e-5, atol=1e-5)
    # an embedding made elsewhere cannot be recomputed: a clear error
    model.registry["embedding"] = None
    with pytest.raises(ValueError, match="obsm\\['X_hc'\\]"):
        predict_expression(syn.make_sdata(sections=("S6",), seed=8), model, progress=False)


def test_model_on_section_scaled_features_gets_them_recomputed_scaled():
    """Trained on ``pp.scale_by_section`` features: a table without them gets the embedding remade *and* scaled
    per section — the same prediction as on the user's own scaled table."""
    from scst.pp import scale_by_section
    from scst.tl import embed_patches

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, key_added="X_hc", progress=False)
    scale_by_section(tab, "X_hc", min_spots=2)
    rec = tab.uns["scst_embed"]["X_hc_scaled"]
    assert rec["scale_by_section"] == "section" and rec["encoder"] == "handcrafted"
    RidgeExpression.setup_anndata(tab, embedding_key="X_hc_scaled", genes=PANEL, sections=["S1", "S2"])
    model = RidgeExpression(tab).train()
    expected = model.predict(tab, "S3")
    bare = syn.make_sdata()
    predict_expression(bare, model, progress=False)  # every section: the remade features stay in the table
    bt = bare.tables["table"]
    np.testing.assert_allclose(bt.obsm["X_hc_scaled"], tab.obsm["X_hc_scaled"], atol=1e-5)
    got = bt[bt.obs["section"] == "S3", PANEL].layers["predicted"].toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Without the scaling step the recomputed features are the raw ones: the test above would fail.
    assert np.abs(bt.obsm["X_hc_scaled"] - tab.obsm["X_hc"]).max() > 0.1
    # Raw features put under the scaled key for the predicted section: a loud warning, not a silent off-scale run.
    tab.obsm["X_hc_scaled"] = np.where((tab.obs["section"] == "S3").to_numpy()[:, None], tab.obsm["X_hc"],
                                       tab.obsm["X_hc_scaled"])  # fmt: skip
    with pytest.warns(UserWarning, match=r"section\(s\) \['S3'\].*not centred"):
        predict_expression(sd, model, sections="S3", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the training sections are scaled: no warning for them
        predict_expression(sd, model, sections=["S1", "S2"], layer="train_pred", progress=False)


def test_predict_expression_clips_linear_models_at_zero():
    """Ridge can extrapolate below zero; the written layer is expression, so it is clipped as documented."""
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    z = tab.obs["z"].to_numpy() * np.where(tab.obs["section"] == "S3", 50.0, 1.0)  # S3 far outside training
    tab.obsm["X_z"] = np.column_stack([z, np.random.default_rng(0).normal(size=tab.n_obs)])
    RidgeExpression.setup_anndata(tab, embedding_key="X_z", genes=PANEL, sections=["S1", "S2"])
    model = RidgeExpression(tab).train()
    raw = model.predict(tab, "S3")
    assert raw.min() < 0  # the case this test is about
    predict_expression(sd, model, sections="S3", progress=False)
    layer = tab[tab.obs["section"] == "S3", PANEL].layers["predicted"].toarray()
    np.testing.assert_array_equal(layer, np.clip(raw, 0, None))
    assert (layer >= 0).all()


def test_cross_validate_scores_the_clipped_prediction_predict_expression_writes():
    """cross_validate must score what predict_expression stores (clipped at 0), not the raw linear output."""
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    z = tab.obs["z"].to_numpy() * np.where(tab.obs["section"] == "S3", 50.0, 1.0)
    tab.obsm["X_z"] = np.column_stack([z, np.random.default_rng(0).normal(size=tab.n_obs)])
    RidgeExpression.setup_anndata(tab, embedding_key="X_z", genes=PANEL, sections=["S1", "S2"])
    raw = RidgeExpression(tab).train().predict(tab, "S3")
    assert raw.min() < 0  # the case this test is about
    _, preds = cross_validate(
        RidgeExpression, sd, genes=PANEL, setup_kwargs={"embedding_key": "X_z"}, test_sections=["S3"],
        metrics=("pearson",), return_predictions=True,
    )  # fmt: skip
    np.testing.assert_allclose(preds["S3"], np.clip(raw, 0, None), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="validation: expected 'auto', None or a section name, got 0.2"):
        cross_validate(RidgeExpression, sd, genes=PANEL, setup_kwargs={"embedding_key": "X_z"}, validation=0.2)


def test_predict_expression_bad_tables_are_clear_errors(trained):
    sd, model = trained
    with pytest.raises(ValueError, match="table_added: 'table' is the table predicted from"):
        predict_expression(sd, model, sections=["S3"], table_added="table", progress=False)
    bad = syn.make_sdata(sections=("S1", "S3"))
    sec = bad.tables["table"].obs["section"].astype(object)
    sec.iloc[:2] = np.nan
    bad.tables["table"].obs["section"] = sec.astype("category")
    with pytest.raises(ValueError, match=r"obs\['section'\] is missing for 2 spots"):
        predict_expression(bad, model, progress=False)


def test_copy_leaves_the_input_table_untouched_and_random_embeddings_are_not_rebuilt():
    """copy=True: the embedding a head's prediction recomputes goes into the copy, not the caller's table. An
    embedding from a randomly initialised encoder cannot be recomputed (new random weights): an error, not a silent
    prediction from unrelated features."""
    from scst.tl import embed_patches

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, key_added="X_hc", progress=False)
    RidgeExpression.setup_anndata(tab, embedding_key="X_hc", genes=PANEL, sections=["S1", "S2"])
    model = RidgeExpression(tab).train()
    bare = syn.make_sdata()
    bt = bare.tables["table"]
    before = (set(bt.obsm), set(bt.layers), set(bt.uns))
    with warnings.catch_warnings():
        # the recomputed embedding uses the inference options: no "have no effect" warning
        warnings.simplefilter("error")
        out = predict_expression(bare, model, copy=True, progress=False, pin_memory=False)
    assert "X_hc" in out.obsm and "predicted" in out.layers
    assert (set(bt.obsm), set(bt.layers), set(bt.uns)) == before
    with pytest.warns(UserWarning, match="random initialisation"):
        embed_patches(sd, "resnet18", weights=None, size_um=syn.SIZE_UM, out_px=32, key_added="X_r", progress=False)
    RidgeExpression.setup_anndata(tab, embedding_key="X_r", genes=PANEL, sections=["S1", "S2"])
    rmodel = RidgeExpression(tab).train()
    with pytest.raises(ValueError, match="randomly initialised encoder"):
        predict_expression(syn.make_sdata(), rmodel, sections="S3", progress=False)


def test_cross_validate_records_the_validation_section_the_model_drew():
    """validation="auto": the model draws one training section; the fold record names it (it said None)."""
    from scst.models import MLPExpression

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    tab.obsm["X_z"] = np.column_stack([tab.obs["z"].to_numpy(), np.random.default_rng(0).normal(size=tab.n_obs)])
    df = cross_validate(
        MLPExpression, sd, genes=PANEL, setup_kwargs={"use_rep": "X_z"}, test_sections=["S3"], metrics=("pearson",),
        config={**MLPExpression.bench_config, "max_epochs": 2},
    )  # fmt: skip
    (fold,) = df.attrs["folds"]
    assert len(fold["validation"]) == 1 and fold["validation"][0] in fold["train_sections"] == ["S1", "S2"]
    pinned = cross_validate(
        MLPExpression, sd, genes=PANEL, setup_kwargs={"use_rep": "X_z"}, test_sections=["S3"], metrics=("pearson",),
        config={**MLPExpression.bench_config, "max_epochs": 2}, validation="S2",
    )  # fmt: skip
    assert pinned.attrs["folds"][0]["validation"] == ["S2"]


class _RecordingModel:
    """A closed-form-looking model class that records what each fold sets up, trains on and predicts.

    ``predict`` returns the measured log-normalised expression of the predicted spots (a perfect model), so every
    Pearson of a correctly aligned fold is exactly 1.
    """

    calls: list = []

    @classmethod
    def setup_sdata(cls, sdata, table="table", layer=None, genes=None, sections=None, **kwargs):
        tab = sdata.tables[table]
        panel = list(tab.var_names[tab.var[genes].to_numpy(bool)]) if isinstance(genes, str) else list(genes)
        cls.calls.append(("setup", sorted(sections), panel))
        tab.uns["_rec_panel"] = panel

    def __init__(self, sdata, **config):
        self.var_names = sdata.tables["table"].uns["_rec_panel"]

    def train(self, validation=None, **kwargs):
        type(self).calls.append(("train", validation))
        return self

    def predict(self, sdata, sections, table="table"):
        type(self).calls.append(("predict", list(sections)))
        tab = sdata.tables[table]
        return log_normalized(tab[tab.obs["section"].isin(sections).to_numpy()], list(self.var_names))


@pytest.fixture
def recording():
    _RecordingModel.calls = []
    return _RecordingModel


def test_cross_validate_folds_with_a_recording_model(recording):
    """Each fold sets up on its training sections, predicts only its test section, scores its rows (a perfect
    model scores Pearson 1) and keeps the fold number of its test section's position in ``sections``."""
    sd = syn.make_sdata()
    df = cross_validate(recording, sd, genes=PANEL, metrics=("pearson",), test_sections=["S3", "S2"])
    assert recording.calls == [
        ("setup", ["S1", "S3"], PANEL), ("train", None), ("predict", ["S2"]),
        ("setup", ["S1", "S2"], PANEL), ("train", None), ("predict", ["S3"]),
    ]  # fmt: skip
    assert sorted(set(zip(df["fold"], df["section"]))) == [(1, "S2"), (2, "S3")]
    np.testing.assert_allclose(df["value"], 1.0, atol=1e-6)
    assert [f["fold"] for f in df.attrs["folds"]] == [1, 2] and [f["n_spots"] for f in df.attrs["folds"]] == [64, 64]


def test_cross_validate_validation_never_holds_out_the_test_section(recording):
    """``validation=<section>`` is used in the folds where it trains, never where it is the test section;
    ``validation=None`` asks the model for no validation at all (``False``, not the model's default ``None``)."""
    sd = syn.make_sdata()
    cross_validate(recording, sd, genes=PANEL, metrics=("pearson",), validation="S2")
    assert [c[1] for c in recording.calls if c[0] == "train"] == ["S2", None, "S2"]  # fold S2: the default
    recording.calls = []
    cross_validate(recording, sd, genes=PANEL, metrics=("pearson",), validation=None, test_sections=["S1"])
    assert [c for c in recording.calls if c[0] == "train"] == [("train", False)]
    # checked before any fold trains: a section name that is not among the sections, a metric name
    recording.calls = []
    with pytest.raises(ValueError, match=r"validation: 'S22' is not among the sections \['S1', 'S2', 'S3'\]"):
        cross_validate(recording, sd, genes=PANEL, metrics=("pearson",), validation="S22")
    with pytest.raises(ValueError, match=r"metrics: expected a non-empty subset of .*got \['pearsonr'\]"):
        cross_validate(recording, sd, genes=PANEL, metrics="pearsonr")
    with pytest.warns(UserWarning, match="select_genes_kwargs are ignored when genes= is given"):
        cross_validate(
            recording, sd, genes=PANEL, metrics="pearson", select_genes_kwargs={"n_top": 5}, test_sections=["S1"]
        )
    assert [c[0] for c in recording.calls] == ["setup", "train", "predict"]  # the refused calls never trained
    # closed-form models hold nothing out: None (not the False asked of trainable models)
    tab = sd.tables["table"]
    tab.obsm["X_z"] = np.column_stack([tab.obs["z"].to_numpy(), np.zeros(tab.n_obs)])
    df = cross_validate(
        RidgeExpression, sd, genes=PANEL, setup_kwargs={"embedding_key": "X_z"}, validation=None, test_sections=["S1"]
    )
    assert df.attrs["folds"][0]["validation"] is None


def test_cross_validate_panel_size_and_section_checks(recording):
    """``select_genes_kwargs`` override the default panel size; bad ``sections`` are refused before any fold."""
    from scst.pp import select_genes

    sd = syn.make_sdata()
    df = cross_validate(
        recording, sd, metrics=("pearson",), select_genes_kwargs={"n_top": 1, "min_fraction": 0.0},
        test_sections=["S1"],
    )  # fmt: skip
    ((_, train, panel),) = [c for c in recording.calls if c[0] == "setup"]
    ref = sd.tables["table"].copy()
    select_genes(ref, sections=["S2", "S3"], n_top=1, min_fraction=0.0, key_added="ref")
    assert train == ["S2", "S3"] and panel == list(ref.var_names[ref.var["ref"]])
    assert df.attrs["folds"][0]["genes"] == panel
    assert 1 <= len(panel) <= 2  # one top gene per training section (the default n_top=1000 would take all 12)
    recording.calls = []
    with pytest.raises(ValueError, match="at least 2 sections"):
        cross_validate(recording, sd, genes=PANEL, sections=["S1"])
    with pytest.raises(ValueError, match=r"\['S9'\] have no spots"):
        cross_validate(recording, sd, genes=PANEL, sections=["S1", "S9"])
    assert recording.calls == []


class _LayerRecordingModel(_RecordingModel):
    """Records the ``layer`` it is set up with and predicts (perfectly) from that layer's counts."""

    @classmethod
    def setup_sdata(cls, sdata, table="table", layer=None, genes=None, sections=None, **kwargs):
        super().setup_sdata(sdata, table=table, layer=layer, genes=genes, sections=sections, **kwargs)
        cls.calls.append(("layer", layer))
        sdata.tables[table].uns["_rec_layer"] = layer

    def predict(self, sdata, sections, table="table"):
        tab = sdata.tables[table]
        rows = tab.obs["section"].isin(sections).to_numpy()
        return log_normalized(tab[rows], list(self.var_names), tab.uns["_rec_layer"])


def test_cross_validate_reads_counts_from_the_layer_for_panel_setup_and_scoring():
    """``layer=``: the per-fold panel is chosen on that layer, the model is set up with it, and the truth it is
    scored against comes from it (``X`` holds other counts here, so a perfect model scores Pearson 1 only then)."""
    from scst.pp import select_genes

    _LayerRecordingModel.calls = []
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    tab.layers["counts"] = tab.X.copy()
    tab.X = sparse.csr_matrix(np.random.default_rng(1).poisson(20, size=tab.shape).astype(np.int32))
    kw = {"n_top": 2, "min_fraction": 0.0}
    df = cross_validate(
        _LayerRecordingModel, sd, layer="counts", metrics=("pearson",), select_genes_kwargs=kw, test_sections=["S1"]
    )
    ref = tab.copy()
    select_genes(ref, sections=["S2", "S3"], layer="counts", key_added="from_layer", **kw)
    select_genes(ref, sections=["S2", "S3"], key_added="from_x", **kw)
    assert ref.var["from_layer"].tolist() != ref.var["from_x"].tolist()  # the layer makes a difference here
    ((_, train, panel),) = [c for c in _LayerRecordingModel.calls if c[0] == "setup"]
    assert train == ["S2", "S3"] and panel == list(ref.var_names[ref.var["from_layer"]])
    assert ("layer", "counts") in _LayerRecordingModel.calls
    np.testing.assert_allclose(df["value"], 1.0, atol=1e-6)


def test_cross_validate_argument_checks():
    sd = syn.make_sdata(sections=("S1", "S2"))
    with pytest.raises(ValueError, match="by: only 'section' is supported"):
        cross_validate(RidgeExpression, sd, by="region")
    with pytest.raises(TypeError, match="model_cls: expected an scst model class"):
        cross_validate(object(), sd)


class _RowModel:
    """A trained-looking model whose prediction for a spot is its row in the predicted table (+ 0.5 for gene 2)."""

    is_trained = True
    var_names = pd.Index(["UP", "HOUSE"])
    registry = {"size_um": syn.SIZE_UM}

    def predict(self, data, sections=None, table="table"):
        sec = data.tables[table].obs["section"].astype(str).to_numpy()
        rows = np.flatnonzero(np.isin(sec, sections) if sections is not None else np.ones(len(sec), bool))
        return rows[:, None] + np.array([0.0, 0.5])


def test_table_added_holds_only_the_predicted_sections_spots():
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    predict_expression(sd, _RowModel(), sections=["S2"], table_added="pred", progress=False)
    new = sd.tables["pred"]
    s2 = np.flatnonzero((tab.obs["section"] == "S2").to_numpy())
    assert list(new.obs_names) == list(tab.obs_names[s2]) and list(new.var_names) == ["UP", "HOUSE"]
    np.testing.assert_array_equal(new.X, s2[:, None] + np.array([0.0, 0.5], np.float32))
    np.testing.assert_array_equal(new.layers["predicted"], new.X)
    np.testing.assert_array_equal(new.obsm["spatial"], tab.obsm["spatial"][s2])
    assert "predicted" not in tab.layers and new.uns["scst_predict"]["sections"] == ["S2"]


def test_table_added_section_by_section_on_a_table_without_scst_geometry():
    """A table that records no section geometry (``uns["scst"]``, e.g. not read by scst): predicting one section,
    then another, into one new table keeps both sections' rows and values, and no geometry is made up."""
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    del tab.uns["scst"]
    for s in ("S2", "S3"):
        predict_expression(sd, _RowModel(), sections=[s], table_added="pred", progress=False)
    new = sd.tables["pred"]
    rows = np.concatenate([np.flatnonzero((tab.obs["section"] == s).to_numpy()) for s in ("S2", "S3")])
    assert list(new.obs_names) == list(tab.obs_names[rows])
    np.testing.assert_array_equal(new.X, rows[:, None] + np.array([0.0, 0.5], np.float32))
    assert new.uns["scst_predict"]["sections"] == ["S2", "S3"] and not new.uns.get("scst", {}).get("sections")


def test_spacing_um_predicts_on_a_grid_even_when_the_table_exists():
    sd = syn.make_sdata(sections=("S1",))
    predict_expression(sd, _RowModel(), spacing_um=80.0, progress=False)
    new = sd.tables["table_predicted"]
    assert "predicted" not in sd.tables["table"].layers and "S1_grid" in sd.shapes
    assert 20 <= new.n_obs <= 100 and new.n_obs != sd.tables["table"].n_obs
    np.testing.assert_array_equal(new.X[:, 0], np.arange(new.n_obs))
    # tile_grid=True alone does the same (the model's grid step, 80 µm here), into table_added
    other = syn.make_sdata(sections=("S1",))
    model = _RowModel()
    model.registry = {"size_um": syn.SIZE_UM, "grid_step_um": 80.0}
    predict_expression(other, model, tile_grid=True, table_added="grid", progress=False)
    assert "predicted" not in other.tables["table"].layers and other.tables["grid"].n_obs == new.n_obs


def test_grid_prediction_never_replaces_the_spot_table():
    # tile_grid/spacing_um with table_added=table used to overwrite the measured spots with the pseudo-spots
    sd = syn.make_sdata(sections=("S1",))
    spots = sd.tables["table"]
    for kw in ({"tile_grid": True}, {"spacing_um": 80.0}):
        with pytest.raises(ValueError, match="table_added: 'table' is the table predicted from"):
            predict_expression(sd, _RowModel(), table_added="table", progress=False, **kw)
        assert sd.tables["table"] is spots and "S1_grid" not in sd.shapes
    # an H&E-only slide (no table of that key) may still get its grid table under that key
    del sd.tables["table"]
    predict_expression(sd, _RowModel(), table="table", table_added="table", um_per_px=syn.UM_PER_PX, progress=False)
    assert sd.tables["table"].n_obs > 0 and "S1_grid" in sd.shapes


def test_cross_validate_on_an_anndata_is_a_clear_error_and_its_spatialdata_wrap_works():
    # an AnnData (the closed-form baselines set up on one) failed with "'AnnData' object has no attribute 'images'"
    from spatialdata import SpatialData

    tab = syn.make_sdata(image=False).tables["table"]
    tab.obsm["X_z"] = tab.obs[["z"]].to_numpy()
    kw = {"genes": ["UP"], "setup_kwargs": {"embedding_key": "X_z"}, "config": {"alphas": [1.0]}}
    with pytest.raises(TypeError, match=r"sdata: expected a SpatialData, got AnnData; .*SpatialData\(tables="):
        cross_validate(RidgeExpression, tab, **kw)
    df = cross_validate(RidgeExpression, SpatialData(tables={"table": tab}), **kw)
    assert sorted(df["section"].unique()) == ["S1", "S2", "S3"] and "_scst_setup" not in tab.uns


def test_sections_given_as_numbers_or_numpy_values_are_section_names():
    # sections=[3] (integer section ids, as the models accept them) failed with "all index and data arrays must
    # have the same length": the spots were looked up by the int 3 among the str sections
    sd = syn.make_sdata(sections=("1", "2", "3"), grid=3)
    MeanExpression.setup_sdata(sd, genes=["UP"], sections=[1, 2])
    model = MeanExpression(sd).train()
    ref = predict_expression(sd, model, sections="3", copy=True, progress=False)
    for sections in ([3], np.array([3]), 3, np.array(["3"])):
        out = predict_expression(sd, model, sections=sections, copy=True, progress=False)
        assert out.uns["scst_predict"]["sections"] == ["3"] and type(out.uns["scst_predict"]["sections"][0]) is str
        np.testing.assert_array_equal(out.obs["predicted_mask"], ref.obs["predicted_mask"])
        assert (out.layers["predicted"] != ref.layers["predicted"]).nnz == 0


def test_cross_validate_takes_one_test_section_as_a_name():
    # test_sections="S3" was read as its characters: "test_sections: ['S', '3'] are not among the sections"
    sd = syn.make_sdata(grid=3, image=False)
    sd.tables["table"].obsm["X_z"] = sd.tables["table"].obs[["z"]].to_numpy()
    kw = {"genes": ["UP"], "setup_kwargs": {"embedding_key": "X_z"}, "config": {"alphas": [1.0]}}
    one = cross_validate(RidgeExpression, sd, test_sections="S3", **kw)
    listed = cross_validate(RidgeExpression, sd, test_sections=["S3"], **kw)
    pd.testing.assert_frame_equal(one, listed)
    assert list(one["section"].unique()) == ["S3"] and one.attrs["folds"][0]["train_sections"] == ["S1", "S2"]


def test_untrained_or_unfit_models_are_refused():
    sd = syn.make_sdata(sections=("S1",))

    class Untrained(_RowModel):
        is_trained = False

    with pytest.raises(ValueError, match="Untrained is not trained"):
        predict_expression(sd, Untrained(), progress=False)
    with pytest.raises(TypeError, match="expected a trained scst expression model"):
        predict_expression(sd, object(), progress=False)
    assert "predicted" not in sd.tables["table"].layers


def _layer_block(tab, layer="predicted", section=None):
    t = tab if section is None else tab[(tab.obs["section"].astype(str) == section).to_numpy()]
    m = t[:, PANEL].layers[layer]
    return pd.DataFrame(m.toarray() if sparse.issparse(m) else np.asarray(m), index=t.obs_names, columns=PANEL)


def test_review_a_head_on_a_table_with_its_embedding_but_no_hypergraph():
    """Review 2026-12-04: the user ran embed_patches on a new slide; predict_expression returned early because the
    embedding was there, and the head failed on the missing hypergraph (documented as rebuilt)."""
    import torch

    from scst.models import HGGEPHead
    from scst.pp import hypergraph
    from scst.tl import embed_patches

    torch.set_num_threads(1)
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, key_added="X_hc", progress=False)
    hypergraph(tab, use_rep="X_hc", k=3)
    HGGEPHead.setup_anndata(tab, use_rep="X_hc", genes=PANEL, sections=["S1", "S2"])
    model = HGGEPHead(tab, **{**HGGEPHead.bench_config, "max_epochs": 1}).train(enable_progress_bar=False)
    expected = model.predict(tab, "S3")
    new = syn.make_sdata()
    embed_patches(new, "handcrafted", size_um=syn.SIZE_UM, out_px=32, key_added="X_hc", progress=False)
    for sections in (None, "S3"):
        out = predict_expression(new, model, sections=sections, progress=False, copy=True)
        np.testing.assert_allclose(_layer_block(out, section="S3").to_numpy(), expected, atol=1e-6)


def test_review_features_scaled_per_patient_are_remade_on_the_whole_group_for_a_subset():
    """Review 2026-12-04: features scaled by obs['patient'] (S1 + S2 one patient) were remade on a subset's spots
    only, so predicting S2 alone standardised the patient on S2 alone (predictions off by up to 0.04)."""
    from scst.pp import scale_by_section
    from scst.tl import embed_patches

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    tab.obs["patient"] = np.where(tab.obs["section"].astype(str) == "S3", "B", "A")
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, key_added="X_hc", progress=False)
    scale_by_section(tab, "X_hc", library_key="patient", min_spots=2)
    RidgeExpression.setup_anndata(tab, embedding_key="X_hc_scaled", genes=PANEL, sections=["S1", "S3"])
    model = RidgeExpression(tab).train()
    ref = _layer_block(predict_expression(sd, model, progress=False, copy=True))
    bare = syn.make_sdata()
    bare.tables["table"].obs["patient"] = tab.obs["patient"].to_numpy()
    out = predict_expression(bare, model, sections="S2", progress=False, copy=True)
    got = _layer_block(out, section="S2")
    np.testing.assert_allclose(got.to_numpy(), ref.loc[got.index].to_numpy(), atol=1e-5)


def test_review_predicting_section_by_section_into_one_new_table_keeps_every_section():
    """Review 2026-12-04: predicting S1 then S2 into one ``table_added`` left only S2's rows (a layer keeps the
    earlier sections' values; the table was replaced whole). Now the earlier sections' rows stay, unchanged; another
    panel replaces the table with a warning."""
    import spatialdata

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    MeanExpression.setup_anndata(tab, genes=PANEL, sections=["S1", "S2"])
    model = MeanExpression(tab).train()
    predict_expression(sd, model, sections="S1", table_added="pred_table", progress=False)
    first = _layer_block(sd.tables["pred_table"])
    predict_expression(sd, model, sections="S2", table_added="pred_table", progress=False)
    both = sd.tables["pred_table"]
    assert both.obs["section"].astype(str).value_counts().to_dict() == {"S1": 64, "S2": 64}
    pd.testing.assert_frame_equal(_layer_block(both).loc[first.index], first)
    assert sorted(both.uns["spatialdata_attrs"]["region"]) == ["S1_spots", "S2_spots"]
    assert both.uns["scst_predict"]["sections"] == ["S1", "S2"]  # the record names every section the table holds
    spatialdata.models.TableModel.validate(both)
    predict_expression(sd, model, sections="S2", table_added="pred_table", progress=False)  # S2 again: replaced
    assert sd.tables["pred_table"].obs["section"].astype(str).value_counts().to_dict() == {"S1": 64, "S2": 64}
    MeanExpression.setup_anndata(tab, genes=PANEL[:2], sections=["S1", "S2"])  # another panel
    with pytest.warns(
        UserWarning, match=r"table 'pred_table' held the predictions of section\(s\) \['S1'\] for another"
    ):
        predict_expression(sd, MeanExpression(tab).train(), sections="S2", table_added="pred_table", progress=False)
    assert set(sd.tables["pred_table"].obs["section"].astype(str)) == {"S2"}


def test_a_head_whose_hypergraph_came_from_another_representation_warns_and_uses_its_embedding():
    """The training hypergraph was built from obsm['X_copy'] (here the embedding itself, copied): a new table lacks
    it, so the graph is built from the embedding with a warning naming both keys, and the prediction is the same."""
    from scst.models import HGGEPHead
    from scst.pp import hypergraph
    from scst.tl import embed_patches

    sd = syn.make_sdata()
    tab = sd.tables["table"]
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, key_added="X_hc", progress=False)
    tab.obsm["X_copy"] = tab.obsm["X_hc"].copy()
    hypergraph(tab, use_rep="X_copy", k=3)
    HGGEPHead.setup_anndata(tab, use_rep="X_hc", genes=PANEL, sections=["S1", "S2"])
    model = HGGEPHead(tab, **{**HGGEPHead.bench_config, "max_epochs": 1}).train(enable_progress_bar=False)
    assert model.registry["hypergraph_params"]["use_rep"] == "X_copy"
    expected = model.predict(tab, "S3")
    bare = syn.make_sdata()
    with pytest.warns(UserWarning, match=r"hypergraph was built from obsm\['X_copy'\], .*from obsm\['X_hc'\] instead"):
        predict_expression(bare, model, progress=False)
    np.testing.assert_allclose(_layer_block(bare.tables["table"], section="S3").to_numpy(), expected, atol=1e-5)


def test_a_section_named_as_a_string_and_predicted_twice_into_a_new_table():
    """``sections="S5"`` on an H&E-only slide: pseudo-spots of S5 only (as ``["S5"]``); predicting the same section
    again into the same table replaces its rows (no duplicates, no other section to keep)."""
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    MeanExpression.setup_anndata(tab, genes=PANEL, sections=["S1", "S2"])
    model = MeanExpression(tab).train()
    he = syn.make_sdata(sections=("S5", "S6"), seed=7)
    del he.tables["table"]
    predict_expression(he, model, sections="S5", um_per_px=syn.UM_PER_PX, spacing_um=80.0, progress=False)
    one = he.tables["table_predicted"]
    assert set(one.obs["section"].astype(str)) == {"S5"} and one.n_obs >= 9
    np.testing.assert_allclose(one.X, np.broadcast_to(one.X[0], one.X.shape))  # the mean model: one profile
    predict_expression(he, model, sections=["S5"], um_per_px=syn.UM_PER_PX, spacing_um=80.0, progress=False)
    again = he.tables["table_predicted"]
    assert again.n_obs == one.n_obs and list(again.obs_names) == list(one.obs_names)
    np.testing.assert_array_equal(again.X, one.X)
