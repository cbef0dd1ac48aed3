"""TCGN model: planted image → expression signal, Grad-CAM attribution, save/load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from scst._normalize import log_normalized as normalized_expression
from scst.models._tcgn import TCGN

_spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).with_name("_he_synthetic.py"))
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained():
    sd = syn.make_sdata()
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM, sections=["S1", "S2"])
    # 64 px: the smallest size the CMT key/value reduction (sr 8, 4, 2, 1) fits
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    model.train(max_epochs=8, enable_progress_bar=False)
    return sd, model


def test_learns_planted_signal(trained):
    sd, model = trained
    assert model.patch_px == 64 and model.module.img_size == 64
    tab = sd.tables["table"]
    test = (tab.obs["section"] == "S3").to_numpy()
    pred = model.predict(sd, "S3", progress=False)
    truth = normalized_expression(tab[test], model.var_names)
    for g in ("UP", "DOWN"):
        i = model.var_names.index(g)
        assert syn.pearson(pred[:, i], truth[:, i]) > 0.3, g
    assert {"train_loss", "val_loss"} <= set(model.history)


def test_attribution(trained):
    sd, model = trained
    tab = sd.tables["table"]
    spots = tab.obs_names[tab.obs["section"] == "S3"][:5]
    maps, patches = model.attribution(sd, "UP", spots, return_patches=True)
    assert maps.shape == (5, 64, 64) and patches.shape == (5, 3, 64, 64) and patches.dtype == np.uint8
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    nonzero = maps.reshape(5, -1).max(1) > 0
    np.testing.assert_allclose(maps.reshape(5, -1).max(1)[nonzero], 1.0, rtol=1e-5)
    same = model.attribution(sd, "UP", np.flatnonzero(tab.obs_names.isin(spots)))
    np.testing.assert_allclose(same, maps, atol=1e-6)
    with pytest.raises(KeyError, match="not in the model's panel"):
        model.attribution(sd, "NOT_A_GENE", spots)
    with pytest.raises(KeyError, match="not obs names"):
        model.attribution(sd, "UP", ["nope"])


def test_save_load_roundtrip(trained, tmp_path):
    sd, model = trained
    model.save(tmp_path / "tcgn")
    loaded = TCGN.load(tmp_path / "tcgn", data=sd)
    assert loaded.patch_px == 64 and loaded.var_names == model.var_names
    np.testing.assert_array_equal(loaded.predict(sd, "S3", progress=False), model.predict(sd, "S3", progress=False))
