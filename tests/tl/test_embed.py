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


class Tokens(torch.nn.Module):
    """The patch as ``(B, H * W, 3)`` tokens: pooled over tokens it is the mean colour too."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class Wrapped(torch.nn.Module):
    """A one-entry dict output (e.g. ``{"features": ...}``): its value is pooled."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out(x)


def test_token_and_dict_outputs_are_pooled_like_maps_and_odd_outputs_refused(tiny):
    sdata, _, _ = tiny
    kw = {"size_um": 24.0, "out_px": 24, "normalize": None, "progress": False}
    embed_patches(sdata, MeanColour(), key_added="maps", **kw)
    embed_patches(sdata, Tokens(), key_added="tokens", **kw)
    embed_patches(sdata, Wrapped(lambda x: {"features": x}), key_added="dict", **kw)
    t = sdata.tables["table"]
    assert t.obsm["tokens"].shape == t.obsm["dict"].shape == (18, 3)
    np.testing.assert_allclose(t.obsm["tokens"], t.obsm["maps"], atol=1e-6)
    np.testing.assert_array_equal(t.obsm["dict"], t.obsm["maps"])
    with pytest.raises(ValueError, match="expected 2, 3 or 4 dims"):
        embed_patches(sdata, Wrapped(lambda x: x.mean((1, 2, 3))), key_added="flat", **kw)
    with pytest.raises(TypeError, match="returned tuple"):
        embed_patches(sdata, Wrapped(lambda x: (x, x)), key_added="pair", **kw)
    assert "flat" not in t.obsm and "pair" not in t.obsm


class ModeRecorder(MeanColour):
    """Records ``self.training`` at each forward."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)  # a mode-dependent layer: its batch statistics would change the features
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.bn(x)


def test_encoder_runs_in_eval_mode_and_keeps_its_mode(tiny):
    sdata, _, _ = tiny
    kw = {"size_um": 24.0, "out_px": 24, "normalize": None, "batch_size": 5, "progress": False}
    enc = ModeRecorder().train()
    embed_patches(sdata, enc, key_added="bn", **kw)
    assert enc.modes and not any(enc.modes) and enc.training  # eval inside, training mode given back
    embed_patches(sdata, MeanColour(), key_added="plain", **kw)
    t = sdata.tables["table"]
    # fresh BatchNorm in eval mode: running mean 0, var 1, so x / sqrt(1 + eps), whatever the batch
    np.testing.assert_allclose(t.obsm["bn"], t.obsm["plain"] / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-6)
    enc.eval()
    embed_patches(sdata, enc, key_added="bn2", **kw)
    assert not enc.training  # an encoder in eval mode stays in eval mode


def test_several_fields_of_view_are_concatenated_in_order(tiny):
    sdata, _, _ = tiny
    kw = {"out_px": 16, "normalize": None, "progress": False}
    embed_patches(sdata, MeanColour(), size_um=(24.0, 60.0), key_added="multi", **kw)
    embed_patches(sdata, MeanColour(), size_um=24.0, key_added="small", **kw)
    embed_patches(sdata, MeanColour(), size_um=60, key_added="large", **kw)
    t = sdata.tables["table"]
    assert not np.allclose(t.obsm["small"], t.obsm["large"])  # the wider view holds background: other colours
    np.testing.assert_array_equal(t.obsm["multi"], np.hstack([t.obsm["small"], t.obsm["large"]]))
    info = t.uns["scst_embed"]
    assert info["multi"]["size_um"] == [24.0, 60.0] and info["multi"]["n_features"] == 6
    assert info["large"]["size_um"] == 60.0 and isinstance(info["large"]["size_um"], float)
    embed_patches(sdata, "handcrafted", size_um=(24.0, 60.0), out_px=16, key_added="hc", progress=False)
    names = handcrafted_feature_names()
    hc = t.uns["scst_embed"]["hc"]
    assert hc["feature_names"] == [f"{n}_24um" for n in names] + [f"{n}_60um" for n in names]
    assert t.obsm["hc"].shape == (18, 2 * len(names))


class NanRed(torch.nn.Module):
    """Mean colour with the red feature not finite."""

    def forward(self, x):
        out = x.mean((2, 3))
        return torch.cat([torch.full_like(out[:, :1], float("nan")), out[:, 1:]], 1)


def test_non_finite_features_are_refused(tiny):
    sdata, _, _ = tiny
    with pytest.raises(FloatingPointError, match=r"non-finite features for 18 spot\(s\)"):
        embed_patches(sdata, NanRed(), size_um=24.0, out_px=16, key_added="nan", progress=False)
    assert "nan" not in sdata.tables["table"].obsm and "nan" not in sdata.tables["table"].uns["scst_embed"]


def test_argument_checks(tiny):
    sdata, _, _ = tiny
    kw = {"size_um": 24.0, "out_px": 16, "progress": False}
    with pytest.raises(ValueError, match="normalize: expected 'imagenet' or None"):
        embed_patches(sdata, MeanColour(), normalize="none", **kw)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        embed_patches(sdata, MeanColour(), batch_size=0, **kw)
    for bad in (True, 2.5, "4"):
        with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
            embed_patches(sdata, MeanColour(), batch_size=bad, **kw)
    embed_patches(sdata, MeanColour(), batch_size=np.int64(4), key_added="X_np", **{**kw, "size_um": np.array(24.0)})
    assert sdata.tables["table"].uns["scst_embed"]["X_np"]["size_um"] == 24.0
    # True was a 1 µm window, NaN passed the check (failing later), a 0-d array and 4.0 were TypeErrors
    for bad in (0.0, -5.0, (), True, np.nan, np.inf, (24.0, np.nan)):
        with pytest.raises(ValueError, match="size_um: expected positive patch size"):
            embed_patches(sdata, MeanColour(), size_um=bad, out_px=16, progress=False)
    with pytest.raises(ValueError, match="only used with a backbone name"):
        embed_patches(sdata, MeanColour(), weights="DEFAULT", **kw)
    with pytest.raises(ValueError, match="only used with a backbone name"):
        embed_patches(sdata, MeanColour(), encoder_kwargs={"a": 1}, **kw)
    for bad in ({"weights": "DEFAULT"}, {"encoder_kwargs": {"a": 1}}):
        with pytest.raises(ValueError, match="not used with encoder='handcrafted'"):
            embed_patches(sdata, "handcrafted", **bad, **kw)
    with pytest.raises(TypeError, match="sdata: expected a SpatialData"):
        embed_patches(sdata.tables["table"], "handcrafted", **kw)
    # one spot per batch: the same features as bigger batches
    t = sdata.tables["table"]
    embed_patches(sdata, MeanColour(), batch_size=1, key_added="one", normalize=None, **kw)
    embed_patches(sdata, MeanColour(), batch_size=7, key_added="seven", normalize=None, **kw)
    np.testing.assert_array_equal(t.obsm["one"], t.obsm["seven"])
    bare = sdata.tables["table"].copy()
    del bare.obs["section"]
    import spatialdata

    with pytest.raises(ValueError, match="no 'section' column"):
        bare_sdata = spatialdata.SpatialData(
            images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": bare}
        )
        embed_patches(bare_sdata, "handcrafted", **kw)


def test_recipe_in_uns_keeps_earlier_embeddings_and_names_hub_encoders(tiny, monkeypatch):
    import scst.nn._backbones as backbones

    sdata, _, _ = tiny
    seen = {}

    def fake_build(name, weights, where, model_kwargs=None):  # a hub backbone, without the hub
        seen.update(name=name, weights=weights, model_kwargs=model_kwargs)
        return MeanColour(), 3

    monkeypatch.setattr(backbones, "build_backbone", fake_build)
    kw = {"size_um": 24.0, "out_px": 16, "progress": False}
    embed_patches(sdata, "handcrafted", key_added="hc", **kw)
    embed_patches(sdata, "hf-hub:org/net v2", weights="pretrained", encoder_kwargs={"init_values": 1e-5}, **kw)
    assert seen == {"name": "hf-hub:org/net v2", "weights": "pretrained", "model_kwargs": {"init_values": 1e-5}}
    t = sdata.tables["table"]
    info = t.uns["scst_embed"]
    assert {"hc", "X_hf-hub_org_net_v2"} <= set(info)  # the earlier recipe is kept; no "/", ":" or " " in the key
    hub = info["X_hf-hub_org_net_v2"]
    assert hub["encoder"] == "hf-hub:org/net v2" and hub["weights"] == "pretrained"
    assert hub["encoder_kwargs"] == {"init_values": 1e-5} and hub["normalize"] == "imagenet"
    assert hub["out_px"] == 16 and hub["n_features"] == 3 and "feature_names" not in hub
    assert info["hc"]["normalize"] == "none" and "encoder_kwargs" not in info["hc"]  # [0, 1] RGB, whatever normalize
    # imagenet normalisation reached the network: mean colour of the normalised patch
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    embed_patches(sdata, MeanColour(), normalize=None, key_added="raw", **kw)
    np.testing.assert_allclose(t.obsm["X_hf-hub_org_net_v2"], (t.obsm["raw"] - mean) / std, rtol=1e-4, atol=1e-4)


def test_bad_size_um_or_out_px_is_refused_before_the_backbone_is_built(tiny, monkeypatch):
    """A named backbone may mean a weights download: the cheap checks come first (they came after the build)."""
    import scst.nn._backbones as backbones

    sdata, _, _ = tiny
    built = []
    monkeypatch.setattr(backbones, "build_backbone", lambda *a, **k: built.append(a) or (MeanColour(), 3))
    for bad in (
        {"size_um": -5.0},
        {"size_um": ()},
        {"out_px": 0},
        {"out_px": 2.5},
        {"out_px": True},
        {"out_px": np.nan},
    ):
        kw = {"size_um": 24.0, "out_px": 16, "progress": False, **bad}
        with pytest.raises(ValueError, match=f"{next(iter(bad))}: expected"):
            embed_patches(sdata, "resnet18", weights="DEFAULT", **kw)
    assert built == []
    embed_patches(sdata, "resnet18", weights="DEFAULT", size_um=24.0, out_px=16, progress=False)
    assert len(built) == 1


def test_a_section_without_an_image_key_is_named(tiny):
    """A section whose geometry in uns records no image_key: named with the uns path, before any tile is read."""
    sdata, _, _ = tiny
    geo = sdata.tables["table"].uns["scst"]["sections"]["S2"]
    key = geo.pop("image_key")
    try:
        with pytest.raises(
            ValueError,
            match=r"1 of 2 lack one \(S2: no image_key in uns\['scst'\]\['sections'\]\['S2'\]; images present",
        ):
            embed_patches(sdata, "handcrafted", progress=False)
    finally:
        geo["image_key"] = key
