"""handcrafted_features: known colours, stains and textures on synthetic patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from scst.pp._features import handcrafted_feature_names, handcrafted_features

NAMES = handcrafted_feature_names()
COL = {n: i for i, n in enumerate(NAMES)}


def _solid(rgb, size=32) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8)[:, None, None], (3, size, size)).copy()


def _stripes(size=32, period=2) -> np.ndarray:
    grey = np.where((np.arange(size) // (period // 2)) % 2 == 0, 40, 220).astype(np.uint8)
    return np.broadcast_to(grey[None, None, :], (3, size, size)).copy()


def test_names_unique_and_shape():
    assert len(NAMES) == len(set(NAMES)) == 95
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 24, 24), dtype=np.uint8)
    feats, names = handcrafted_features(x, return_names=True)
    assert feats.shape == (5, 95) and feats.dtype == np.float32 and names == NAMES
    assert np.isfinite(feats).all()
    # uint8, float in [0, 1] and torch give the same features; batching does not change them.
    np.testing.assert_allclose(handcrafted_features(x.astype(np.float32) / 255), feats, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(handcrafted_features(torch.from_numpy(x), batch_size=2), feats, rtol=1e-5, atol=1e-5)
    # one (3, H, W) patch
    np.testing.assert_allclose(handcrafted_features(x[0]), feats[:1], rtol=1e-6)


def test_pure_red_colour_statistics():
    f = handcrafted_features(_solid([255, 0, 0]))[0]
    assert f[COL["rgb_r_mean"]] == pytest.approx(1.0)
    assert f[COL["rgb_g_mean"]] == f[COL["rgb_b_mean"]] == pytest.approx(0.0)
    assert f[COL["rgb_r_std"]] == pytest.approx(0.0)
    for q in ("q10", "q50", "q90"):
        assert f[COL[f"rgb_r_{q}"]] == pytest.approx(1.0)
    assert f[COL["hsv_s_mean"]] == pytest.approx(1.0)
    assert f[COL["hsv_v_mean"]] == pytest.approx(1.0)
    # red: hue 0 → circular mean (cos, sin) = (1, 0)
    assert f[COL["hsv_h_cos"]] == pytest.approx(1.0) and f[COL["hsv_h_sin"]] == pytest.approx(0.0, abs=1e-6)
    assert f[COL["grey_mean"]] == pytest.approx(0.2125, abs=1e-4)


def test_quantiles_of_half_black_half_white():
    x = np.zeros((3, 20, 20), dtype=np.uint8)
    x[:, :, 10:] = 255
    f = handcrafted_features(x)[0]
    assert f[COL["grey_mean"]] == pytest.approx(0.5, abs=1e-6)
    assert f[COL["grey_std"]] == pytest.approx(0.5, abs=1e-6)
    assert f[COL["grey_q10"]] == pytest.approx(0.0) and f[COL["grey_q90"]] == pytest.approx(1.0)
    assert f[COL["tissue_fraction"]] == pytest.approx(0.5)
    # Sobel (normalised as skimage.filters.sobel): 0.5 on the two interior columns beside the edge, 0 elsewhere
    assert f[COL["sobel_mean"]] == pytest.approx(2 / 18 * 0.5, rel=1e-5)


def test_hed_matches_skimage_and_ranks_stains():
    # pure stains through skimage's own inverse (Ruifrok–Johnston vectors): haematoxylin blue, eosin pink
    hema = _solid(np.round(hed2rgb(np.array([[[0.15, 0.0, 0.0]]]))[0, 0] * 255))  # (66, 60, 140)
    eosin = _solid(np.round(hed2rgb(np.array([[[0.0, 0.15, 0.0]]]))[0, 0] * 255))  # (221, 33, 203)
    f = handcrafted_features(np.stack([hema, eosin]))
    h, e = f[0], f[1]
    ref = rgb2hed(hema.transpose(1, 2, 0)).reshape(-1, 3).mean(0)
    assert h[COL["hed_h_mean"]] == pytest.approx(ref[0], rel=1e-4)
    assert h[COL["hed_e_mean"]] == pytest.approx(ref[1], rel=1e-4, abs=1e-7)
    assert h[COL["hed_h_mean"]] > e[COL["hed_h_mean"]]
    assert e[COL["hed_e_mean"]] > h[COL["hed_e_mean"]]
    assert h[COL["hed_h_mean"]] == pytest.approx(0.15, abs=0.005)
    assert e[COL["hed_e_mean"]] == pytest.approx(0.15, abs=0.005)
    assert h[COL["hed_h_share"]] == pytest.approx(1.0) and e[COL["hed_h_share"]] == pytest.approx(0.0)
    assert h[COL["hed_h_strong"]] == 1.0 and e[COL["hed_h_strong"]] == 0.0
    assert e[COL["hed_e_strong"]] == 1.0 and h[COL["hed_e_strong"]] == 0.0


def test_glcm_and_lbp_separate_stripes_from_flat():
    flat, stripes = _solid([130, 130, 130]), _stripes()
    f = handcrafted_features(np.stack([flat, stripes]))
    for d in (1, 2, 4):
        assert f[0, COL[f"glcm_grey_contrast_d{d}"]] == pytest.approx(0.0)
        assert f[0, COL[f"glcm_grey_homogeneity_d{d}"]] == pytest.approx(1.0)
        assert f[0, COL[f"glcm_grey_energy_d{d}"]] == pytest.approx(1.0)
    # 1-px vertical stripes of grey 40 / 220 → levels 5 / 27 of 32: a pair differs by 22 when the offset's column
    # step is odd. skimage offsets (row, col) = round(d·(sin θ, cos θ)) over θ = 0°, 45°, 90°, 135°: d = 1 → col
    # steps 1, 1, 0, -1 (3 of 4 odd); d = 2 → 2, 1, 0, -1 (2 of 4); d = 4 → 4, 3, 0, -3 (2 of 4).
    assert f[1, COL["glcm_grey_contrast_d1"]] == pytest.approx(0.75 * 22**2)
    assert f[1, COL["glcm_grey_contrast_d2"]] == pytest.approx(0.5 * 22**2)
    assert f[1, COL["glcm_grey_contrast_d4"]] == pytest.approx(0.5 * 22**2)
    assert f[1, COL["glcm_grey_dissimilarity_d1"]] == pytest.approx(0.75 * 22)
    assert f[1, COL["glcm_grey_homogeneity_d1"]] < 0.6
    assert f[0, COL["sobel_mean"]] == 0.0
    lbp = [COL[f"lbp_{i}"] for i in range(10)]
    np.testing.assert_allclose(f[:, lbp].sum(1), 1.0, rtol=1e-6)
    # a flat image: every neighbour equals the centre (≥ → 1): all pixels have the "all ones" uniform code 8,
    # except at the border where skimage pads with 0
    assert f[0, COL["lbp_8"]] > 0.8
    assert f[1, COL["lbp_8"]] < 0.5


def test_lbp_codes_equal_skimage_bit_for_bit():
    from skimage.feature import local_binary_pattern

    from scst.pp._features import _lbp_histogram, _lbp_uniform

    rng = np.random.default_rng(0)
    noise = (rng.random((5, 23, 17)) * 256).astype(np.uint8)
    # plateaus (4 × 4 blocks): the interpolated diagonal value equals the centre up to float rounding
    blocks = np.repeat(np.repeat(rng.integers(0, 256, (5, 6, 5), dtype=np.uint8), 4, 1), 4, 2)
    edges = np.zeros((2, 9, 9), dtype=np.uint8)
    edges[0] = 255  # a saturated flat image: skimage's zero padding sets the border codes
    edges[1, :, 4:] = 1  # a step of one grey level
    for imgs in (noise, blocks, edges, noise[:, :1, :5], noise[:, :3, :3]):
        ref = np.stack([local_binary_pattern(im, 8, 1, method="uniform") for im in imgs]).astype(np.int64)
        np.testing.assert_array_equal(_lbp_uniform(imgs), ref)
        hist = np.stack([np.bincount(r.ravel(), minlength=10) / r.size for r in ref])
        np.testing.assert_allclose(_lbp_histogram(imgs, chunk=2), hist, rtol=1e-6)


def test_glcm_properties_equal_skimage():
    from skimage.feature import graycomatrix, graycoprops

    from scst.pp._features import _GLCM_PROPS, _glcm_props

    rng = np.random.default_rng(1)
    q = (rng.random((6, 20, 15)) * 32).astype(np.uint8)
    q[0] = 3  # constant: correlation falls back to 1
    q[1, :, :7] = 0
    angles = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    m = np.concatenate([graycomatrix(im, (1, 2, 4), angles, levels=32, symmetric=True) for im in q], axis=3)
    # a 3 × 3 image has no pixel pairs 4 px apart: all-zero matrices (skimage: 0, except correlation 1)
    tiny = graycomatrix(q[2, :3, :3], (1, 2, 4), angles, levels=32, symmetric=True)
    assert tiny[..., 2, :].sum() == 0
    for mats in (m, tiny):
        for name, got in zip(_GLCM_PROPS, _glcm_props(mats)):
            ref = graycoprops(mats, name)
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12, err_msg=name)
    assert (_glcm_props(m)[_GLCM_PROPS.index("correlation")][:, 0:4] == 1.0).all()  # image 0, every distance


def test_bad_input():
    with pytest.raises(ValueError, match="channels first"):
        handcrafted_features(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        handcrafted_features(np.full((1, 3, 8, 8), -1.5, dtype=np.float32))
    with pytest.raises(ValueError, match="glcm_levels"):
        handcrafted_features(np.zeros((1, 3, 8, 8), dtype=np.uint8), glcm_levels=1)


def test_quantiles_equal_numpy_linear_quantiles():
    x = np.random.default_rng(3).integers(0, 256, (2, 3, 7, 9), dtype=np.uint8)  # 63 px: positions not integral
    f = handcrafted_features(x)
    ref = np.quantile(x.reshape(2, 3, -1) / 255.0, [0.1, 0.5, 0.9], axis=-1)  # (3 q, 2, 3 channels)
    for ci, c in enumerate("rgb"):
        for qi, q in enumerate(("q10", "q50", "q90")):
            np.testing.assert_allclose(f[:, COL[f"rgb_{c}_{q}"]], ref[qi, :, ci], rtol=1e-5)


def test_tissue_fraction_counts_pixels_darker_than_the_threshold():
    x = np.full((3, 8, 8), 255, dtype=np.uint8)
    x[:, :2] = 0  # a quarter black
    x[:, 2:3] = 200  # grey 0.784 < 0.8: tissue
    x[:, 3:4] = 210  # 0.824: background
    assert handcrafted_features(x)[0, COL["tissue_fraction"]] == pytest.approx(3 / 8)


def test_glcm_grey_levels_are_floor_of_grey_times_levels():
    # Vertical 1-px stripes of grey 0 and 128: levels 0 and floor(128 / 255 * 32) = 16.
    grey = np.where(np.arange(32) % 2 == 0, 0, 128).astype(np.uint8)
    stripes = np.broadcast_to(grey[None, None, :], (3, 32, 32)).copy()
    f = handcrafted_features(stripes)[0]
    assert f[COL["glcm_grey_contrast_d1"]] == pytest.approx(0.75 * 16**2)


def _reference_features(patch: np.ndarray, levels: int = 32, thresholds=(0.1, 0.01)) -> np.ndarray:
    """All 95 features of one ``(3, H, W)`` uint8 patch from skimage/scipy, one patch at a time (mutation sweep)."""
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    rgb = np.moveaxis(patch, 0, -1).astype(np.float64) / 255  # (H, W, 3)
    grey = (patch.astype(np.float32) / np.float32(255)).transpose(1, 2, 0) @ np.array(
        [0.2125, 0.7154, 0.0721], dtype=np.float32
    )  # BT.709, as skimage.color.rgb2gray

    def stats(v):
        v = np.asarray(v, dtype=np.float64).ravel()
        return [v.mean(), v.std(), *np.quantile(v, [0.1, 0.5, 0.9])]

    hsv = rgb2hsv(rgb)
    hed = rgb2hed(rgb)
    f = [s for c in range(3) for s in stats(rgb[..., c])] + stats(grey)
    f += [np.cos(2 * np.pi * hsv[..., 0]).mean(), np.sin(2 * np.pi * hsv[..., 0]).mean()]
    f += stats(hsv[..., 1]) + stats(hsv[..., 2])
    for c in range(2):
        f += [*stats(hed[..., c]), (hed[..., c] > thresholds[c]).mean()]
    f += [hed[..., 2].mean(), hed[..., 0].mean() / (hed[..., 0].mean() + hed[..., 1].mean())]
    f += [(grey < 0.8).mean()]
    sob = np.hypot(ndimage.sobel(grey.astype(np.float64), 0), ndimage.sobel(grey.astype(np.float64), 1))[1:-1, 1:-1] / 8
    f += [sob.mean(), sob.std()]
    q_grey = np.minimum(grey * levels, levels - 1).astype(np.uint8)
    q_hema = np.minimum(np.minimum(hed[..., 0], 0.3) / 0.3 * levels, levels - 1).astype(np.uint8)
    angles = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    for q in (q_grey, q_hema):
        m = graycomatrix(q, (1, 2, 4), angles, levels=levels, symmetric=True)
        props = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "entropy")
        f += [graycoprops(m, p)[d].mean() for d in range(3) for p in props]
    codes = local_binary_pattern(np.round(grey * 255).astype(np.uint8), 8, 1, "uniform")
    f += list(np.bincount(codes.astype(int).ravel(), minlength=10) / codes.size)
    return np.asarray(f)


def test_every_feature_equals_a_patch_by_patch_skimage_reference():
    # Random colours (every hue sextant, saturation and stain), a smooth H&E-like gradient and a half-white patch
    # (tissue fraction, LBP plateaus); odd sizes so that no axis is confused with another.
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (3, 3, 13, 11), dtype=np.uint8)
    ramp = np.linspace(0, 1, 13 * 11).reshape(13, 11)
    x[1] = np.stack([200 - 120 * ramp, 80 + 40 * ramp, 190 - 30 * ramp]).astype(np.uint8)
    x[2, :, :, 6:] = 255
    got = handcrafted_features(x)
    for i in range(len(x)):
        np.testing.assert_allclose(got[i], _reference_features(x[i]), rtol=2e-4, atol=2e-5, err_msg=f"patch {i}")
    # Stain thresholds are per stain (H first) and strict: set each to a value the patch holds.
    hed = rgb2hed(np.moveaxis(x[0], 0, -1) / 255.0)
    th = (float(np.float32(np.sort(hed[..., 0].ravel())[70])), float(np.float32(np.sort(hed[..., 1].ravel())[40])))
    strong = handcrafted_features(x[:1], stain_thresholds=th)[0]
    hed32 = rgb2hed(np.moveaxis(x[0], 0, -1).astype(np.float32) / np.float32(255))
    want_h, want_e = (hed32[..., 0] > np.float32(th[0])).mean(), (hed32[..., 1] > np.float32(th[1])).mean()
    assert want_h != want_e
    assert strong[COL["hed_h_strong"]] == pytest.approx(want_h) and strong[COL["hed_e_strong"]] == pytest.approx(want_e)


def test_patches_smaller_than_three_pixels_are_refused():
    with pytest.raises(ValueError, match="at least 3"):
        handcrafted_features(np.zeros((1, 3, 2, 9), dtype=np.uint8))
    assert np.isfinite(handcrafted_features(np.zeros((1, 3, 3, 3), dtype=np.uint8))).all()


def test_settings_that_are_no_valid_number_are_named_errors_numpy_integers_are_not():
    """glcm_levels=16.7 was truncated to 16, a NaN stain threshold counted no pixel as stained and batch_size=True
    was a batch of one, all silently; a float batch size failed inside range(). numpy integers are fine."""
    p = np.random.default_rng(0).integers(0, 255, (3, 3, 16, 16), dtype=np.uint8)
    ref = handcrafted_features(p, glcm_levels=16, batch_size=2)
    np.testing.assert_array_equal(handcrafted_features(p, glcm_levels=np.int64(16), batch_size=np.int64(2)), ref)
    for kw, name in (
        ({"glcm_levels": 16.7}, "glcm_levels"),
        ({"glcm_levels": "16"}, "glcm_levels"),
        ({"stain_thresholds": (np.nan, 0.01)}, "stain_thresholds"),
        ({"stain_thresholds": 0.1}, "stain_thresholds"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
    ):
        with pytest.raises(ValueError, match=f"{name}: expected"):
            handcrafted_features(p, **kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"patches": np.zeros((1, 3, 8, 8), np.int16)},
            "patches: expected uint8 or float values in \\[0, 1\\], got dtype int16",
        ),
        (
            {"stain_thresholds": ("a", "b")},
            r"stain_thresholds: expected two non-negative numbers \(H, E\), got \('a', 'b'\)",
        ),
        ({"stain_thresholds": 0.1}, r"stain_thresholds: expected two non-negative numbers \(H, E\), got 0.1"),
    ],
)
def test_bad_dtype_and_stain_thresholds(kw, match):
    kw = {"patches": np.zeros((1, 3, 8, 8), np.uint8), **kw}
    with pytest.raises(ValueError, match=match):
        handcrafted_features(kw.pop("patches"), **kw)
