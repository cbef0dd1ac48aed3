"""embed_patches on a tiny synthetic SpatialData whose spot colour is planted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

import scst.datasets  # noqa: F401  (loads scst.io through datasets: a direct `import scst.io` hits an import cycle)
from scst.io import concatenate_sections, read_st
from scst.pp._features import handcrafted_feature_names
from scst.tl._embed import embed_patches


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two sections of 3 × 3 spots; spot i is a square blob from eosin pink (v=0) to haematoxylin blue (v=1)."""
    tmp = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)
    parts, signal = [], []
    for s in ("S1", "S2"):
        img = np.full((160, 160, 3), 245, dtype=np.uint8)
        rows, cnt = [], {}
        for x in range(1, 4):
            for y in range(1, 4):
                v = rng.uniform()
                colour = (1 - v) * np.array([230, 120, 190]) + v * np.array([60, 50, 140])
                img[y * 40 - 14 : y * 40 + 14, x * 40 - 14 : x * 40 + 14] = colour.astype(np.uint8)
                rows.append({"x": x, "y": y, "pixel_x": 40.0 * x, "pixel_y": 40.0 * y, "selected": 1})
                cnt[f"{x}x{y}"] = rng.poisson([20, 20])
                signal.append(v)
        Image.fromarray(img).save(tmp / f"{s}.png")
        counts = pd.DataFrame.from_dict(cnt, orient="index", columns=["g0", "g1"])
        parts.append(read_st(counts, pd.DataFrame(rows), tmp / f"{s}.png", sample=s, um_per_px=1.0, cache_dir=tmp))
    return concatenate_sections(parts), np.asarray(signal), tmp


def test_handcrafted_features_follow_planted_stain(tiny):
    sdata, signal, _ = tiny
    embed_patches(sdata, "handcrafted", size_um=24.0, out_px=24, batch_size=4, progress=False)
    t = sdata.tables["table"]
    x = t.obsm["X_handcrafted"]
    assert x.shape == (18, 95) and x.dtype == np.float32
    info = t.uns["scst_embed"]["X_handcrafted"]
    assert info["feature_names"] == handcrafted_feature_names() and info["weights"] == "none (hand-crafted)"
    names = info["feature_names"]
    # the patch lies inside the blob: haematoxylin rises and eosin falls with the planted mix
    assert spearmanr(x[:, names.index("hed_h_mean")], signal)[0] > 0.95
    assert spearmanr(x[:, names.index("hed_e_mean")], signal)[0] < -0.95


def test_backbone_random_init_and_local_weights(tiny):
    import torchvision

    sdata, _, tmp = tiny
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random initialisation; predictions will be weak"):
        embed_patches(sdata, "resnet18", size_um=32.0, out_px=32, batch_size=8, progress=False)
    t = sdata.tables["table"]
    assert t.obsm["X_resnet18"].shape == (18, 512)
    assert t.uns["scst_embed"]["X_resnet18"]["weights"] == "random init"
    # a local state_dict: two runs with the same file give the same features (initialisation no longer matters)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp / "r18.pth")
    embed_patches(sdata, "resnet18", weights=tmp / "r18.pth", out_px=32, key_added="a", progress=False)
    torch.manual_seed(123)
    embed_patches(sdata, "resnet18", weights=tmp / "r18.pth", out_px=32, key_added="b", progress=False)
    np.testing.assert_allclose(t.obsm["a"], t.obsm["b"], rtol=1e-5, atol=1e-6)
    assert t.uns["scst_embed"]["a"]["weights"] == str(tmp / "r18.pth")
    assert not np.allclose(t.obsm["a"], t.obsm["X_resnet18"])
    with pytest.raises(FileNotFoundError, match="weights"):
        embed_patches(sdata, "resnet18", weights=tmp / "missing.pth", progress=False)


class MeanColour(torch.nn.Module):
    """Returns the patch itself: embed_patches must average (B, 3, H, W) to the mean colour."""

    def forward(self, x):
        return x


def test_module_encoder_is_pooled(tiny):
    sdata, signal, _ = tiny
    embed_patches(sdata, MeanColour(), size_um=24.0, out_px=24, normalize=None, progress=False)
    t = sdata.tables["table"]
    x = t.obsm["X_meancolour"]
    assert x.shape == (18, 3)
    # mean red of the blob interior: (1 - v) 230 + v 60, in [0, 1]
    np.testing.assert_allclose(x[:, 0], np.floor((1 - signal) * 230 + signal * 60) / 255, atol=1e-5)
    with pytest.raises(TypeError, match="encoder"):
        embed_patches(sdata, 3, progress=False)
    with pytest.raises(ValueError, match="neither"):
        embed_patches(sdata, "no_such_net", progress=False)


def test_named_weights_arrive_and_missing_images_are_named(tiny, monkeypatch):
    import torchvision

    sdata, _, _ = tiny
    torch.manual_seed(7)
    ref = torchvision.models.resnet18(weights=None)
    urls = []

    def fake_download(url, *args, **kwargs):  # torchvision's download, served from memory (no network here)
        urls.append(url)
        return ref.state_dict()

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    embed_patches(sdata, "resnet18", weights="IMAGENET1K_V1", out_px=32, key_added="named", progress=False)
    embed_patches(sdata, "resnet18", weights=ref, out_px=32, key_added="module", progress=False)
    t = sdata.tables["table"]
    assert len(urls) == 1 and "resnet18" in urls[0]
    np.testing.assert_allclose(t.obsm["named"], t.obsm["module"], rtol=1e-5, atol=1e-6)
    assert t.uns["scst_embed"]["named"]["weights"] == "IMAGENET1K_V1"
    assert t.uns["scst_embed"]["module"]["weights"] == "copied from a ResNet"

    key = next(iter(sdata.images))
    image = sdata.images[key]
    del sdata.images[key]
    try:
        with pytest.raises(ValueError, match=rf"sdata: embed_patches needs the H&E image .*1 of 2 lack one.*{key!r}"):
            embed_patches(sdata, "handcrafted", progress=False)
    finally:
        sdata.images[key] = image


def test_relative_weights_path_is_recorded_absolute(tiny, tmp_path, monkeypatch):
    """The recipe in uns["scst_embed"] must name the file that was read, from any working directory."""
    import torchvision

    sdata, _, _ = tiny
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "rel.pth")
    monkeypatch.chdir(tmp_path)
    embed_patches(sdata, "resnet18", weights="rel.pth", size_um=24.0, out_px=32, key_added="rel", progress=False)
    recorded = sdata.tables["table"].uns["scst_embed"]["rel"]["weights"]
    assert recorded == str(tmp_path / "rel.pth")
    monkeypatch.chdir("/")  # predict_expression recomputes the embedding from the recipe, elsewhere
    embed_patches(sdata, "resnet18", weights=recorded, size_um=24.0, out_px=32, key_added="again", progress=False)
    t = sdata.tables["table"]
    np.testing.assert_allclose(t.obsm["again"], t.obsm["rel"], rtol=1e-5, atol=1e-6)
