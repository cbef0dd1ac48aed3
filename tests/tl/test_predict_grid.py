"""Pseudo-spot grids of predict_expression: spacing from the training grid step, window from the model's patch."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from scst.models import HGGEPHead, MeanExpression, MLPExpression, RidgeExpression
from scst.tl import embed_patches, predict_expression

_spec = importlib.util.spec_from_file_location(
    "_he_synthetic", Path(__file__).parents[1] / "models" / "_he_synthetic.py"
)
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PANEL = ["UP", "DOWN", "HOUSE"]
TRAIN = ["S1", "S2"]
STEP_UM = 100.0  # the training sections' recorded grid step (the synthetic spots lie 80 µm apart: 100 is planted)


def _train(cls, steps=(STEP_UM, STEP_UM, STEP_UM), sizes=(syn.SIZE_UM,)):
    """``cls`` set up on S1, S2 of a synthetic table whose sections record ``steps``, trained briefly."""
    sd = syn.make_sdata()
    tab = sd.tables["table"]
    for s, step in zip(("S1", "S2", "S3"), steps):
        tab.uns["scst"]["sections"][s]["grid_step_um"] = step
    if cls is MeanExpression:
        cls.setup_sdata(sd, genes=PANEL, sections=TRAIN)
        return cls(sd).train()
    embed_patches(sd, "handcrafted", size_um=sizes, out_px=32, key_added="X_hc", progress=False)
    if cls is RidgeExpression:
        cls.setup_sdata(sd, embedding_key="X_hc", genes=PANEL, sections=TRAIN)
        return cls(sd).train()
    if cls is HGGEPHead:
        from scst.pp import hypergraph

        hypergraph(tab, use_rep="X_hc", k=3)
    cls.setup_anndata(tab, use_rep="X_hc", genes=PANEL, sections=TRAIN)
    return cls(tab, **{**cls.bench_config, "max_epochs": 1}).train(enable_progress_bar=False)


def _he_only():
    he = syn.make_sdata(sections=("S5",), seed=7)
    del he.tables["table"]
    return he


def _grid_geometry(he):
    new = he.tables["table_predicted"]
    return new, new.uns["scst"]["sections"]["S5"]


def _no_spacing_warning(record):
    return not [w for w in record if "spacing_um" in str(w.message)]


@pytest.mark.parametrize("cls", [MeanExpression, RidgeExpression, MLPExpression, HGGEPHead])
def test_models_on_stored_features_predict_on_their_training_grid_step(cls):
    model = _train(cls)
    assert model.registry["grid_step_um"] == STEP_UM  # recorded at setup, as the image models record it
    he = _he_only()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predict_expression(he, model, um_per_px=syn.UM_PER_PX, progress=False)
    assert _no_spacing_warning(record)
    new, geo = _grid_geometry(he)
    assert geo["grid_step_um"] == STEP_UM  # not the 200 µm fallback
    # neighbouring pseudo-spots lie 100 µm = 50 px apart along both axes
    for axis in (0, 1):
        np.testing.assert_array_equal(np.diff(np.unique(new.obsm["spatial"][:, axis])), STEP_UM / syn.UM_PER_PX)
    assert list(new.var_names) == PANEL and new.n_obs >= 9 and np.isfinite(new.X).all()


def test_training_sections_with_different_or_no_steps_fall_back_to_200_um_with_a_warning():
    # as the image models: steps that differ between the training sections record None
    model = _train(MeanExpression, steps=(80.0, STEP_UM, STEP_UM))
    assert model.registry["grid_step_um"] is None
    he = _he_only()
    with pytest.warns(UserWarning, match="spacing_um: MeanExpression records no training grid step"):
        predict_expression(he, model, um_per_px=syn.UM_PER_PX, progress=False)
    assert _grid_geometry(he)[1]["grid_step_um"] == 200.0
    # the test section's step plays no part: S1 and S2 agree
    assert _train(MeanExpression, steps=(STEP_UM, STEP_UM, 80.0)).registry["grid_step_um"] == STEP_UM
    # a table without section geometry (an AnnData from elsewhere) records None
    tab = syn.make_sdata().tables["table"]
    del tab.uns["scst"]
    MeanExpression.setup_anndata(tab, genes=PANEL)
    assert MeanExpression(tab).registry["grid_step_um"] is None
    # an explicit spacing is used as given, without a warning
    he = _he_only()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predict_expression(he, model, um_per_px=syn.UM_PER_PX, spacing_um=120.0, progress=False)
    assert _no_spacing_warning(record) and _grid_geometry(he)[1]["grid_step_um"] == 120.0


@pytest.mark.parametrize("cls", [MeanExpression, MLPExpression])
def test_a_model_saved_before_the_grid_step_was_recorded_loads_and_falls_back(cls, tmp_path):
    model = _train(cls)
    model.save(tmp_path / "m")
    attr = tmp_path / "m" / "attr.json"
    saved = json.loads(attr.read_text())
    del saved["registry"]["grid_step_um"]  # the old format
    attr.write_text(json.dumps(saved))
    old = cls.load(tmp_path / "m")
    assert "grid_step_um" not in old.registry
    he = _he_only()
    with pytest.warns(UserWarning, match="records no training grid step"):
        predict_expression(he, old, um_per_px=syn.UM_PER_PX, progress=False)
    new, geo = _grid_geometry(he)
    assert geo["grid_step_um"] == 200.0 and new.n_obs >= 4 and np.isfinite(new.X).all()


@pytest.mark.parametrize(
    ("sizes", "window"), [((2 * syn.SIZE_UM,), 2 * syn.SIZE_UM), ((syn.SIZE_UM, 160.0), syn.SIZE_UM)]
)
def test_a_head_grid_window_is_its_embedding_patch(sizes, window):
    """A model on obsm features has no ``size_um`` of its own: its pseudo-spots are the embedding's patches (the
    smallest field of a multi-scale one), not an 80 µm default, while the embedding is remade at every size."""
    model = _train(RidgeExpression, sizes=sizes)
    assert "size_um" not in model.registry
    he = _he_only()
    predict_expression(he, model, um_per_px=syn.UM_PER_PX, progress=False)
    new, geo = _grid_geometry(he)
    assert geo["spot_diameter_um"] == window and geo["spot_diameter_px"] == window / syn.UM_PER_PX
    assert he.shapes["S5_grid"]["radius"].to_numpy()[0] == window / syn.UM_PER_PX / 2
    assert new.uns["scst_embed"]["X_hc"]["size_um"] == (list(sizes) if len(sizes) > 1 else sizes[0])
