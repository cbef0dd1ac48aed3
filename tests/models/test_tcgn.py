"""TCGN model: planted image → expression signal, Grad-CAM attribution, save/load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

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


def _fake_section(sec_id, n, keep):
    """Section stub: spot j's patch and target both encode (section, j), so pairs can be checked."""
    import types

    code = (10 * sec_id + np.arange(n)).astype(np.uint8)
    patches = types.SimpleNamespace(get=lambda idx: np.broadcast_to(code[idx, None, None, None], (len(idx), 3, 4, 4)))
    return types.SimpleNamespace(keep=np.asarray(keep), patches=patches, target=code[:, None].astype(np.float32))


def test_spot_batches_pair_each_patch_with_its_target():
    from scst.models._tcgn import _SpotBatches
    from scst.nn import patches_to_input

    ds = _SpotBatches([_fake_section(1, 4, [0, 2, 3]), _fake_section(2, 3, [1, 2])], augment=False)
    assert len(ds) == 5  # kept spots only
    batch = ds[[4, 0, 3, 1]]  # section 2 spot 2, section 1 spot 0, section 2 spot 1, section 1 spot 2
    codes = batch["target"][:, 0].numpy()
    assert sorted(codes.tolist()) == [10, 12, 21, 22]
    expect = patches_to_input(np.broadcast_to(codes.astype(np.uint8)[:, None, None, None], (4, 3, 4, 4)).copy())
    torch.testing.assert_close(batch["patches"], expect)  # row i's patch is the patch of row i's spot


def test_batches_drop_a_final_singleton_and_validation_is_not_augmented():
    import types

    from scst.models._tcgn import _NoSingletonBatches, _spot_dataloaders

    for n, sizes in ((9, [4, 4]), (10, [4, 4, 2]), (8, [4, 4]), (1, [])):
        sampler = _NoSingletonBatches(range(n), 4, drop_last=False)
        assert [len(b) for b in sampler] == sizes and len(sampler) == len(sizes)
    train, val = [_fake_section(1, 5, range(5))], [_fake_section(2, 5, range(5))]
    model = types.SimpleNamespace(config={"augment": True}, _training_sections=lambda v, s: (train, val))
    tr_dl, va_dl = _spot_dataloaders(model, 2, None, 0, {})
    assert tr_dl.dataset.augment is True and va_dl.dataset.augment is False
    codes = np.concatenate([b["target"][:, 0].numpy() for b in va_dl])
    assert codes.tolist() == [20, 21, 22, 23, 24]  # every validation spot once, in order (the last batch of one too)
    model.config["augment"] = False
    assert _spot_dataloaders(model, 2, None, 0, {})[0].dataset.augment is False
    with pytest.raises(TypeError, match="dataloader_kwargs"):
        _spot_dataloaders(model, 2, None, 0, {"num_workers": 2})


def test_config_defaults_follow_the_module_and_patch_px_sets_img_size():
    import inspect

    from scst.nn import TCGNModule

    sig = inspect.signature(TCGNModule).parameters
    for key, val in TCGN._default_config.items():
        if key in sig:
            default = sig[key].default
            assert (list(default) if isinstance(default, tuple) else default) == val, key
    sd = syn.make_sdata(sections=("S1", "S2"), grid=4)
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM, patch_px=64)
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 128})
    assert model.module.img_size == 64 and model.patch_px == 64  # setup's patch_px wins over the config
    # before the first step the output bias is each gene's training mean (log1p-normalised)
    model._training_sections(False, seed=0)
    means = normalized_expression(sd.tables["table"], model.var_names).mean(0)
    np.testing.assert_allclose(model.module.head[-1].bias.detach().numpy(), means, rtol=1e-5, atol=1e-6)


def test_attribution_rows_follow_spots_across_sections():
    from scst.nn import patches_to_input
    from scst.pp._patches import SpotPatchDataset

    sd = syn.make_sdata(sections=("S1", "S2"), grid=4)
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM)
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    rows = np.array([20, 3, 17, 5])  # S2, S1, S2, S1 (16 spots per section)
    maps, patches = model.attribution(sd, "DOWN", rows, return_patches=True)  # gene 1, not 0
    ds = SpotPatchDataset(sd, "table", return_counts=False, size_um=syn.SIZE_UM, out_px=64, normalize=None)
    ref_patches = np.stack([ds.patch_uint8(int(r)) for r in rows])
    np.testing.assert_array_equal(patches, ref_patches)
    ref = model.module.attribution(patches_to_input(ref_patches, False), model.var_names.index("DOWN")).numpy()
    np.testing.assert_allclose(maps, ref, atol=1e-5)
    mask = np.zeros(32, dtype=bool)
    mask[rows] = True
    np.testing.assert_allclose(model.attribution(sd, "DOWN", mask), maps[np.argsort(rows)], atol=1e-5)
    with pytest.raises(ValueError, match="boolean mask"):
        model.attribution(sd, "UP", mask[:-1])
    with pytest.raises(IndexError, match="positions"):
        model.attribution(sd, "UP", [0, 32])
    with pytest.raises(IndexError, match="positions"):
        model.attribution(sd, "UP", [-1])
    with pytest.raises(ValueError, match="no spot"):
        model.attribution(sd, "UP", np.zeros(32, dtype=bool))
