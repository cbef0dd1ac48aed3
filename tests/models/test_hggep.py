"""HGGEP model: planted image → expression signal, windows, save/load, geometry checks, bad input."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from scst._normalize import log_normalized
from scst.models._hggep import HGGEP
from scst.models._image import _random_windows, _tiling_windows

_spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).with_name("_he_synthetic.py"))
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

SETUP = {"size_um": syn.SIZE_UM, "patch_px": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained():
    sd = syn.make_sdata()
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], **SETUP)
    # The paper's random output init and lr 1e-3: 96 steps are few (bench_config's zero_head, lr 1e-4 are for the
    # weak real signal and hundreds of steps)
    model = HGGEP(sd, **{**HGGEP.bench_config, "lr": 1e-3, "zero_head": False})
    # 16-spot spatial windows: 4 steps per section and epoch, and the window sampler is exercised.
    model.train(max_epochs=12, batch_size=16, validation=False, enable_progress_bar=False)
    return sd, model


def test_learns_planted_signal(trained):
    sd, model = trained
    tab = sd.tables["table"]
    test = (tab.obs["section"] == "S3").to_numpy()
    pred = model.predict(sd, "S3", progress=False)
    truth = log_normalized(tab[test], model.var_names)
    assert pred.shape == (test.sum(), len(model.var_names)) and pred.dtype == np.float32
    up, down = model.var_names.index("UP"), model.var_names.index("DOWN")
    r_up, r_down = syn.pearson(pred[:, up], truth[:, up]), syn.pearson(pred[:, down], truth[:, down])
    # 64 held-out spots: chance correlations have sd ≈ 0.13
    assert r_up > 0.3 and r_down > 0.3, (r_up, r_down)
    assert model.history is not None and {"train_loss", "train_mse", "train_zinb"} <= set(model.history)
    assert model.registry["sections"] == ["S1", "S2"]


def test_validation_is_a_training_section():
    sd = syn.make_sdata()
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], **SETUP)
    model = HGGEP(sd, **HGGEP.bench_config)
    train, val = model._validation_sections(None, seed=0)
    assert len(val) == 1 and val[0] in ("S1", "S2") and sorted(train + val) == ["S1", "S2"]
    model.train(max_epochs=1, enable_progress_bar=False)
    assert {"train_loss", "val_loss", "val_mse", "val_zinb"} <= set(model.history)


def test_zero_head_starts_at_the_training_means():
    sd = syn.make_sdata()
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], **SETUP)
    tab = sd.tables["table"]
    for zero_head in (True, False):
        model = HGGEP(sd, **{**HGGEP.bench_config, "zero_head": zero_head})
        model._training_sections(False, seed=0)  # sets the output bias (and, with zero_head, zero weights)
        model._is_trained = True  # predict refuses untrained models; here we want the initial state on purpose
        pred = model.predict(sd, "S3", progress=False)
        train = tab.obs["section"].isin(["S1", "S2"]).to_numpy()
        means = log_normalized(tab[train], model.var_names).mean(0)
        if zero_head:  # every spot gets the training mean of each gene, before any step
            np.testing.assert_allclose(pred, np.broadcast_to(means, pred.shape), rtol=1e-5, atol=1e-5)
        else:  # random output weights: spots differ from the start
            assert pred.std(0).mean() > 1e-3


def test_predict_on_untrained_model_raises():
    sd = syn.make_sdata()
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], **SETUP)
    model = HGGEP(sd, **HGGEP.bench_config)
    with pytest.raises(RuntimeError, match="not trained"):
        model.predict(sd, "S3", progress=False)


def test_save_load_roundtrip(trained, tmp_path):
    sd, model = trained
    model.save(tmp_path / "m")
    attrs = json.loads((tmp_path / "m" / "attr.json").read_text())
    assert attrs["extra"]["var_names"] == model.var_names
    assert attrs["extra"]["geometry"] == {"size_um": syn.SIZE_UM, "patch_px": 64, "um_per_px_train": syn.UM_PER_PX}
    loaded = HGGEP.load(tmp_path / "m")  # no training data needed
    assert loaded.data is None and loaded.is_trained
    np.testing.assert_array_equal(loaded.predict(sd, "S3", progress=False), model.predict(sd, "S3", progress=False))


def test_predict_rescales_other_resolution_with_warning(trained):
    _, model = trained
    fine = syn.make_sdata(sections=("S9",), um_per_px=1.6, seed=3)  # same tissue geometry in µm, 25 % finer pixels
    with pytest.warns(UserWarning, match="µm/px"):
        pred = model.predict(fine, progress=False)
    assert pred.shape == (64, len(model.var_names)) and np.isfinite(pred).all()
    close = syn.make_sdata(sections=("S9",), um_per_px=syn.UM_PER_PX * 1.03, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.predict(close, progress=False)


def test_windows_cover_every_spot_once():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 100, (301, 2))
    wins = _tiling_windows(pos, 40)
    cores = np.concatenate([c for _, c in wins])
    assert np.array_equal(np.sort(cores), np.arange(301))
    for w, c in wins:
        assert len(w) <= 40 and np.isin(c, w).all()
    assert len(_tiling_windows(pos, 400)) == 1  # a whole section when it fits
    rand = _random_windows(pos, 40, rng)
    assert len(rand) == 8 and all(len(w) == 40 for w in rand)
    # a window is spatially compact: its spots are the 40 nearest to one of them
    w = rand[0]
    d = np.linalg.norm(pos[w][:, None] - pos[w][None], axis=-1).max()
    assert d < 60


def test_nan_loss_stops_with_clear_message():
    sd = syn.make_sdata(sections=("S1", "S2"))
    HGGEP.setup_sdata(sd, **SETUP)
    model = HGGEP(sd, **{**HGGEP.bench_config, "lr": 1e30})
    with pytest.raises(FloatingPointError, match="loss is"):
        model.train(max_epochs=3, enable_progress_bar=False)


def test_bad_input():
    sd = syn.make_sdata(sections=("S1", "S2"))
    with pytest.raises(KeyError, match="highly_variable"):
        HGGEP.setup_sdata(sd, genes="highly_variable", **SETUP)
    with pytest.raises(KeyError, match="NOPE"):
        HGGEP.setup_sdata(sd, genes=["UP", "NOPE"], **SETUP)
    with pytest.raises(ValueError, match="no spots"):
        HGGEP.setup_sdata(sd, sections=["S7"], **SETUP)
    with pytest.raises(ValueError, match="larger than"):
        HGGEP.setup_sdata(sd, size_um=5000.0, patch_px=64)
    noimg = syn.make_sdata(sections=("S1",), image=False)
    with pytest.raises(ValueError, match="Image missing for section 'S1'"):
        HGGEP.setup_sdata(noimg, **SETUP)
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], **SETUP)
    model = HGGEP(sd, **HGGEP.bench_config)
    with pytest.raises(ValueError, match="not training sections"):
        model.train(max_epochs=1, validation="S3", enable_progress_bar=False)
    with pytest.raises(ValueError, match="Unknown config"):
        HGGEP(sd, n_layers=3)


@pytest.mark.slow
def test_her2st_smoke(her2st_sdata):
    """Two real sections (a compact block of 30 spots each, to keep it short), one epoch, predict the other."""
    import spatialdata as sd_

    from scst.pp import select_genes

    tab = her2st_sdata.tables["table"]
    keep = []
    for s in ("C2", "C3"):
        rows = np.flatnonzero(tab.obs["section"].to_numpy() == s)
        xy = tab.obsm["spatial"][rows]
        keep.append(rows[np.argsort(np.linalg.norm(xy - np.median(xy, 0), axis=1))[:30]])
    sub = tab[np.concatenate(keep)].copy()
    sub.obs["region"] = sub.obs["region"].cat.remove_unused_categories()
    sub.uns["spatialdata_attrs"]["region"] = ["C2_spots", "C3_spots"]
    select_genes(sub, n_top=200, min_fraction=0.5)
    sdata = sd_.SpatialData(
        images={k: her2st_sdata.images[k] for k in ("C2_image", "C3_image")},
        shapes={k: her2st_sdata.shapes[k] for k in ("C2_spots", "C3_spots")},
        tables={"table": sub},
    )
    HGGEP.setup_sdata(sdata, sections=["C2"])
    model = HGGEP(sdata, **HGGEP.bench_config).train(max_epochs=1, enable_progress_bar=False)
    pred = model.predict(sdata, "C3", progress=False)
    assert pred.shape == (30, int(sub.var["highly_variable_scst"].sum()))
    assert np.isfinite(pred).all() and (pred >= 0).all()
    assert model.registry["um_per_px_train"] == pytest.approx(0.69, abs=0.02)
