"""Tests for scst.pp tissue_mask / filter_tiles / tile_grid on her2st C2 and synthetic images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.color import hed2rgb
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity, get_transformation

from scst.pp._patches import SpotPatchDataset
from scst.pp._tissue import filter_tiles, tile_grid, tissue_mask

UM_PER_PX = 0.6889645580764518  # C2, uns["scst"]["sections"]["C2"]["um_per_px"] (affine grid fit; 0.68884 before)


def _to_mask_px(labels, xy: np.ndarray, cs: str = "C2") -> np.ndarray:
    """Full-resolution (x, y) -> integer (row, col) of the labels, through the labels' own transformation."""
    m = get_transformation(labels, to_coordinate_system=cs).to_affine_matrix(("x", "y"), ("x", "y"))
    inv = np.linalg.inv(np.asarray(m))
    p = np.c_[xy, np.ones(len(xy))] @ inv.T
    return np.floor(p[:, 1]).astype(int), np.floor(p[:, 0]).astype(int)


def _dab_tiles(n=6, size=32, seed=0) -> np.ndarray:
    """IHC tiles of pure DAB (optical density 0.05-0.25, the stain's colour vector from skimage) with noise."""
    rng = np.random.default_rng(seed)
    hed = np.zeros((n, size, size, 3))
    hed[..., 2] = rng.uniform(0.05, 0.25, size=(n, size, size))
    rgb = hed2rgb(hed.reshape(-1, 3)).reshape(n, size, size, 3)
    rgb = np.clip(rgb + rng.normal(0, 0.01, rgb.shape), 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def _glass_sdata(img: np.ndarray, scale_factors=None) -> SpatialData:
    """Image 'S_image' in coordinate system 'S' (a pyramid with ``scale_factors``)."""
    el = Image2DModel.parse(img, dims=("c", "y", "x"), scale_factors=scale_factors, transformations={"S": Identity()})
    return SpatialData(images={"S_image": el})


def _synthetic_sdata(h=400, w=600):
    """White glass with one purple (H&E-like) rectangle of tissue at rows 100:300, cols 140:460."""
    rng = np.random.default_rng(0)
    img = np.full((3, h, w), 242, dtype=np.uint8)
    tissue = np.array([150, 90, 170])[:, None, None] + rng.integers(-20, 20, size=(3, 200, 320))
    img[:, 100:300, 140:460] = tissue.clip(0, 255)
    return _glass_sdata(img, scale_factors=[2, 2])


# ------------------------------------------------------------------------------------------------ tissue_mask
def test_tissue_mask_covers_c2_spots(c2):
    assert tissue_mask(c2, section="C2") is None
    labels = c2.labels["C2_tissue"]
    mask = labels.values > 0
    h, w = c2.tables["table"].uns["scst"]["sections"]["C2"]["image_shape"]
    assert mask.shape == (1238, 1159)  # scale3: 5.5 µm px, the coarsest level <= 8 µm/px
    assert 0.05 < mask.mean() < 0.6  # her2st C2: tissue is a sixth of the frame
    xy = c2.tables["table"].obsm["spatial"]
    r, c = _to_mask_px(labels, xy)
    assert r.max() < mask.shape[0] and c.max() < mask.shape[1]
    on = mask[r, c]
    assert on.mean() >= 0.95
    # The rest are edge spots (ST keeps spots that overlap tissue): each lies within its radius (~70 px =
    # 48 µm) of the mask.
    dist_um = ndi.distance_transform_edt(~mask)[r, c] * (h / mask.shape[0]) * UM_PER_PX
    assert dist_um.max() < 50


def test_tissue_mask_synthetic_rectangle_and_levels():
    sd = _synthetic_sdata()
    lab = tissue_mask(sd, "S_image", um_per_px=1.0, scale="scale1", smooth_um=2, min_object_um2=100, inplace=False)
    mask = lab.values > 0
    truth = np.zeros((200, 300), bool)
    truth[50:150, 70:230] = True
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95
    m = np.asarray(get_transformation(lab, "S").to_affine_matrix(("x", "y"), ("x", "y")))
    np.testing.assert_allclose(np.diag(m)[:2], [2.0, 2.0])
    full = tissue_mask(sd, "S_image", um_per_px=1.0, scale=0, smooth_um=2, min_object_um2=100, inplace=False)
    assert full.shape == (400, 600) and abs((full.values > 0).mean() - 64 / 240) < 0.02
    otsu = tissue_mask(sd, "S_image", um_per_px=1.0, method="otsu", scale=0, smooth_um=2, inplace=False)
    assert abs((otsu.values > 0).mean() - 64 / 240) < 0.02
    with pytest.warns(UserWarning, match="pixel size"):
        tissue_mask(sd, "S_image")
    assert "S_image_tissue" in sd.labels


def test_tissue_mask_errors(c2):
    with pytest.raises(ValueError, match="preset"):
        tissue_mask(c2, section="C2", preset="ihc")
    with pytest.raises(ValueError, match="method"):
        tissue_mask(c2, section="C2", method="kmeans")
    with pytest.raises(KeyError, match="scale"):
        tissue_mask(c2, section="C2", scale="scale9")
    with pytest.raises(KeyError, match="image_key"):
        tissue_mask(c2, "C9_image")


# ------------------------------------------------------------------------------------------------ filter_tiles
def test_filter_tiles_on_c2_patches(c2_sdata):
    ds = SpotPatchDataset(c2_sdata, obs_subset=np.arange(0, 187, 4), return_counts=False, normalize=None)
    frac, keep = filter_tiles(ds)
    assert frac.shape == (len(ds),) and np.median(frac) > 0.8 and keep.mean() > 0.9
    brown, keep_brown = filter_tiles(ds, preset="dab_brown")
    assert brown.max() < 0.01 and not keep_brown.any()  # H&E has no DAB
    glass = np.full((4, 3, 64, 64), 240, np.uint8)
    glass[:, 0] = 246  # slightly pink glass
    g, gk = filter_tiles(glass)
    assert g.max() == 0 and not gk.any()


def test_filter_tiles_dab_brown_synthetic():
    dab = _dab_tiles()
    frac, keep = filter_tiles(dab, preset="dab_brown")  # channels last
    assert frac.min() > 0.97 and keep.all()
    hema = np.zeros((3, 32, 32, 3))
    hema[..., 0] = 0.3  # hematoxylin only: blue, not brown
    h_tiles = (hed2rgb(hema.reshape(-1, 3)).reshape(3, 32, 32, 3) * 255).astype(np.uint8)
    assert filter_tiles(h_tiles, preset="dab_brown")[0].max() == 0
    half = np.concatenate([dab[:1, :, :16], h_tiles[:1, :, :16]], axis=2)  # left half brown
    f_half, k_half = filter_tiles(np.moveaxis(half, -1, 1), preset="dab_brown")  # channels first
    assert abs(f_half[0] - 0.5) < 0.03 and k_half[0]  # > 20 %: kept (GBM paper's rule)
    assert not filter_tiles(np.moveaxis(half, -1, 1), preset="dab_brown", threshold=0.6)[1][0]
    f_float, _ = filter_tiles(dab.astype(np.float32) / 255, preset="dab_brown")
    np.testing.assert_allclose(f_float, frac)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        filter_tiles(dab.astype(np.float32), preset="dab_brown")
    with pytest.raises(TypeError, match="hue_rnage"):
        filter_tiles(dab, preset="dab_brown", hue_rnage=(0, 10))


# ------------------------------------------------------------------------------------------------ tile_grid
def test_tile_grid_on_c2(c2):
    tissue_mask(c2, section="C2")
    assert tile_grid(c2, "C2", spacing_um=200.0, size_um=80.0, min_tissue=0.5) is None
    t, shapes = c2.tables["C2_grid_table"], c2.shapes["C2_grid"]
    xy = t.obsm["spatial"]
    step = 200.0 / UM_PER_PX
    # Neighbours on the grid are exactly spacing_um apart.
    x_by_col = dict(zip(t.obs["array_col"], xy[:, 0]))
    y_by_row = dict(zip(t.obs["array_row"], xy[:, 1]))
    cols, rows = sorted(x_by_col), sorted(y_by_row)
    np.testing.assert_allclose(np.diff([x_by_col[c] for c in cols]) / np.diff(cols), step)
    np.testing.assert_allclose(np.diff([y_by_row[r] for r in rows]) / np.diff(rows), step)
    # All pseudo-spots on tissue; as many as the real 200 µm ST grid has spots under tissue (187), give or take.
    labels = c2.labels["C2_tissue"]
    r, c = _to_mask_px(labels, xy)
    assert (labels.values[r, c] > 0).all() and (t.obs["tissue_fraction"] >= 0.5).all()
    assert 150 < t.n_obs < 260
    geo = t.uns["scst"]["sections"]["C2"]
    assert geo["image_key"] == "C2_image" and geo["um_per_px"] == pytest.approx(UM_PER_PX)
    assert geo["shapes_key"] == "C2_grid" and t.obs["region"].unique().tolist() == ["C2_grid"]
    np.testing.assert_allclose(shapes.geometry.x.to_numpy(), xy[:, 0])
    np.testing.assert_allclose(shapes["radius"].to_numpy(), 40.0 / UM_PER_PX)
    # The grid table feeds SpotPatchDataset directly (predicting on H&E-only slides).
    ds = SpotPatchDataset(c2, "C2_grid_table", out_px=112)
    item = ds[0]
    assert len(ds) == t.n_obs and item["patch"].shape == (3, 112, 112) and "counts" not in item


def test_tile_grid_synthetic_without_table():
    sd = _synthetic_sdata()
    table, shapes = tile_grid(
        sd, "S", spacing_um=20.0, size_um=10.0, um_per_px=1.0, inplace=False, scale=0, smooth_um=2, min_object_um2=100
    )
    xy = table.obsm["spatial"]
    # Grid over 600 x 400 px, 20 px apart, centred: x = 10, 30, ..., y = 10, 30, ...; tissue spans x 140-460 and
    # y 100-300: the 10 px windows at x = 150 (145-155) and y = 110 are tissue, those at x = 130 and y = 90 are not.
    assert set(np.unique(xy[:, 0])) == set(np.arange(150, 451, 20))
    assert set(np.unique(xy[:, 1])) == set(np.arange(110, 291, 20))
    assert len(shapes) == table.n_obs == 16 * 10
    with pytest.raises(ValueError, match="um_per_px"):
        tile_grid(sd, "S")
    with pytest.raises(ValueError, match="min_tissue"):
        tile_grid(sd, "S", um_per_px=1.0, min_tissue=2)


def _synthetic_with_geometry():
    """_synthetic_sdata plus a table whose geometry says 2 µm/px and image 'S_image', and a second image 'other'
    (the same pixels, blue channel + 10, so windows read from it are recognisable)."""
    import anndata as ad
    import pandas as pd

    sd = _synthetic_sdata()
    img = np.asarray(sd.images["S_image"]["scale0"]["image"].values).copy()
    img[2] += 10  # ≤ 252: no overflow
    sd.images["other"] = Image2DModel.parse(img, dims=("c", "y", "x"), transformations={"S": Identity()})
    t = ad.AnnData(np.zeros((1, 0), np.float32), obs=pd.DataFrame(index=["x"]))
    t.uns["scst"] = {"sections": {"S": {"image_key": "S_image", "um_per_px": 2.0, "coordinate_system": "S",
                                        "image_shape": [1, 1], "spot_diameter_um": 100.0}}}  # fmt: skip
    sd.tables["table"] = t
    return sd


def test_tile_grid_uses_the_um_per_px_and_image_passed_not_the_tables():
    # Before: the table's um_per_px (2.0) and image_key overwrote the ones passed in the grid's geometry, so
    # SpotPatchDataset read windows of another size (and image) than the grid was measured with.
    sd = _synthetic_with_geometry()
    kw = {"spacing_um": 20.0, "size_um": 10.0, "inplace": False, "scale": 0, "smooth_um": 2, "min_object_um2": 100}
    table, _ = tile_grid(sd, "S", um_per_px=1.0, image_key="other", **kw)
    geo = table.uns["scst"]["sections"]["S"]
    assert geo["um_per_px"] == 1.0 and geo["image_key"] == "other" and geo["image_shape"] == [400, 600]
    assert geo["spot_diameter_px"] == 10.0 and geo["spot_diameter_um"] == 10.0
    xs = np.unique(table.obsm["spatial"][:, 0])
    np.testing.assert_allclose(np.diff(xs), 20.0)  # 20 µm at 1 µm/px
    sd.tables["grid"] = table
    ds = SpotPatchDataset(sd, "grid", return_counts=False, normalize=None, size_um=10.0)
    assert ds.size_px == {"S": 10}  # 10 µm at 1 µm/px (the table's 2 µm/px gave 5 px)
    cx, cy = ds.centers[0]
    x0, y0 = int(np.floor(cx - 5 + 0.5)), int(np.floor(cy - 5 + 0.5))
    other = np.asarray(sd.images["other"].values)
    np.testing.assert_array_equal(ds.window(0), other[:, y0 : y0 + 10, x0 : x0 + 10])  # cut from 'other'

    # Without arguments the table's geometry is used.
    table2, _ = tile_grid(sd, "S", **kw)
    geo2 = table2.uns["scst"]["sections"]["S"]
    assert geo2["um_per_px"] == 2.0 and geo2["image_key"] == "S_image" and geo2["spot_diameter_px"] == 5.0


@pytest.mark.parametrize("bad", [0, 0.0, -2.0, float("nan"), float("inf"), True])
def test_tile_grid_refuses_a_non_positive_um_per_px(bad):
    # Before: 0 fell back to the table's value silently; -2 failed with a misleading message.
    sd = _synthetic_with_geometry()
    with pytest.raises(ValueError, match=r"^um_per_px: expected a finite positive pixel size in µm, got"):
        tile_grid(sd, "S", spacing_um=20.0, size_um=10.0, um_per_px=bad, inplace=False, scale=0)


# ------------------------------------------------------------------------------------------------ exact pixel rules
def test_filter_tiles_thresholds_are_inclusive():
    # Pure yellow (255, 255, 0): hue 60°, saturation 1, lightness 0.5, all exact in float32.
    yellow = np.zeros((1, 3, 2, 2), np.uint8)
    yellow[:, :2] = 255
    kw = {"preset": "dab_brown", "sat_min": 1.0, "light_range": (0.5, 0.5)}
    assert filter_tiles(yellow, hue_range=(60.0, 90.0), **kw)[0][0] == 1.0
    assert filter_tiles(yellow, hue_range=(30.0, 60.0), **kw)[0][0] == 1.0
    assert filter_tiles(yellow, hue_range=(60.5, 90.0), **kw)[0][0] == 0.0
    assert filter_tiles(yellow, sat_min=1.0, light_max=0.5)[0][0] == 1.0  # he: sat >= sat_min, light <= light_max
    assert filter_tiles(yellow, sat_min=1.0, light_max=0.49)[0][0] == 0.0
    # Half the pixels yellow, half glass: fraction 0.5 is kept at threshold 0.5 (>=), not above it.
    half = np.full((1, 3, 2, 2), 240, np.uint8)
    half[:, :, 0] = yellow[:, :, 0]
    frac, keep = filter_tiles(half, threshold=0.5)
    assert frac[0] == 0.5 and keep[0]
    assert not filter_tiles(half, threshold=0.51)[1][0]


def test_tissue_mask_hsl_lightness_must_be_below_the_glass():
    # Glass 242 (lightness 0.949 -> light_max 0.929); purple tissue (dark) and a pale pink patch, saturation 0.1,
    # lightness 0.931: saturated enough, but lighter than glass - margin, so not tissue. No smoothing, no cleanup.
    img = np.full((3, 40, 60), 242, np.uint8)
    img[:, 5:15, 5:25] = np.array([150, 90, 170])[:, None, None]
    img[:, 20:35, 30:55] = np.array([250, 225, 250])[:, None, None]
    kw = {"um_per_px": 1.0, "scale": 0, "smooth_um": 0.1, "min_object_um2": 1, "min_hole_um2": 1, "inplace": False}
    mask = tissue_mask(_glass_sdata(img), "S_image", sat_min=0.05, **kw).values > 0
    truth = np.zeros((40, 60), bool)
    truth[5:15, 5:25] = True
    np.testing.assert_array_equal(mask, truth)
    # A fixed light_max above the pink's lightness takes it in.
    mask2 = tissue_mask(_glass_sdata(img), "S_image", sat_min=0.05, light_max=0.94, **kw).values > 0
    truth[20:35, 30:55] = True
    np.testing.assert_array_equal(mask2, truth)


def test_tissue_mask_saturation_floor():
    # Glass and a grey smudge (dust, a fold) darker than the glass but with saturation 6/126 = 0.048: Otsu alone
    # splits the two; the floor (PRESETS["he"]["sat_floor"] = 0.05) keeps the smudge out of the tissue.
    img = np.full((3, 40, 60), 240, np.uint8)
    img[:, 10:30, 10:40] = np.array([120, 120, 126])[:, None, None]
    kw = {"um_per_px": 1.0, "scale": 0, "smooth_um": 0.1, "min_object_um2": 1, "min_hole_um2": 1, "inplace": False}
    assert not (tissue_mask(_glass_sdata(img), "S_image", **kw).values > 0).any()
    img[:, 10:30, 10:40] = np.array([120, 110, 126])[:, None, None]  # saturation 0.127: tissue
    assert (tissue_mask(_glass_sdata(img), "S_image", **kw).values > 0).sum() == 20 * 30


def test_tissue_mask_cleanup_areas_are_in_square_um_of_the_level():
    # scale1 of a 2x pyramid at 1 µm/px: level pixels are 2 µm, 4 µm² each. min_object_um2=397 -> ceil(99.25) = 100
    # level px: the 10 x 10 px object stays, the 9 x 11 = 99 px one goes; likewise a 99 px hole is filled, 100 kept.
    img = np.full((3, 120, 160), 242, np.uint8)
    purple = np.array([150, 90, 170])[:, None, None]
    img[:, 10:30, 10:30] = purple  # 10 x 10 at scale1
    img[:, 10:28, 50:72] = purple  # 9 x 11
    img[:, 60:110, 10:70] = purple  # 25 x 30 with a 10 x 10 hole
    img[:, 70:90, 20:40] = 242
    img[:, 60:110, 90:150] = purple  # 25 x 30 with a 9 x 11 hole
    img[:, 70:88, 100:122] = 242
    sd = _glass_sdata(img, scale_factors=[2])
    kw = {"um_per_px": 1.0, "smooth_um": 0.1, "sat_min": 0.2, "light_max": 0.9, "inplace": False}
    mask = tissue_mask(sd, "S_image", scale="scale1", min_object_um2=397, min_hole_um2=397, **kw).values > 0
    assert mask.shape == (60, 80)
    assert mask[5:15, 5:15].all()  # 100 px object kept
    assert not mask[5:14, 25:36].any()  # 99 px object removed
    assert not mask[35:45, 10:20].any()  # 100 px hole kept
    assert mask[35:44, 50:61].all()  # 99 px hole filled
    # At scale0 (1 µm px) 401 µm² is 401 px: both small objects (400 and 396 px) go.
    full = tissue_mask(sd, "S_image", scale=0, min_object_um2=401, min_hole_um2=1, **kw).values > 0
    assert not full[10:30, 10:72].any() and full[60:110, 10:20].all()
    assert not full[70:90, 20:40].any() and not full[70:88, 100:122].any()  # min_hole_um2=1: both holes stay


def test_tissue_mask_auto_level_choice():
    sd = _glass_sdata(np.full((3, 64, 96), 242, np.uint8), scale_factors=[2, 2])
    kw = {"um_per_px": 1.0, "inplace": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Levels of 1, 2 and 4 µm px: the coarsest at most target_um_per_px, 2 µm itself included.
        assert tissue_mask(sd, "S_image", target_um_per_px=2.0, **kw).shape == (32, 48)
        assert tissue_mask(sd, "S_image", target_um_per_px=3.9, **kw).shape == (32, 48)
        assert tissue_mask(sd, "S_image", target_um_per_px=0.5, **kw).shape == (64, 96)
        # A single-scale image is coarsened by floor(target / um_per_px).
        single = _glass_sdata(np.full((3, 64, 96), 242, np.uint8))
        assert tissue_mask(single, "S_image", target_um_per_px=8.0, **kw).shape == (8, 12)
        assert tissue_mask(single, "S_image", target_um_per_px=2.0, **kw).shape == (32, 48)
        assert tissue_mask(single, "S_image", target_um_per_px=1.9, **kw).shape == (64, 96)
        lab = tissue_mask(single, "S_image", target_um_per_px=3.0, **kw)
    assert lab.shape == (21, 32)  # k = 3: 64 // 3 rows
    m = np.asarray(get_transformation(lab, "S").to_affine_matrix(("x", "y"), ("x", "y")))
    np.testing.assert_allclose(np.diag(m)[:2], [96 / 32, 64 / 21])


def test_window_fraction_snaps_windows_to_mask_pixels():
    from scst.pp._tissue import _window_fraction

    # 4 x 4 mask of 2 x 2 full-resolution px; only mask pixel (row 1, col 1) = full-res [2, 4) x [2, 4) is tissue.
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    xy = np.array([[3.0, 3.0], [2.0, 2.0], [0.0, 0.0], [4.0, 4.0], [1.0, 3.0]])
    size = np.array([3.0, 0.2, 4.0, 4.0, 3.0])
    frac = np.array([_window_fraction(mask, p[None], s, 2.0, 2.0)[0] for p, s in zip(xy, size)])
    # [1.5, 4.5] / 2 = [0.75, 2.25] rounds to mask col/row 1 only; a 0.2 px window still covers its mask pixel;
    # [-2, 2] covers rows/cols -1..0 (outside counts as background); [2, 6] covers 1..2; [-0.5, 2.5] x [1.5, 4.5]
    # covers col 0 and row 1.
    np.testing.assert_allclose(frac, [1.0, 1.0, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(_window_fraction(mask, np.array([[2.0, 3.0]]), 3.0, 2.0, 2.0), [0.5])


def _grid_sdata(mask: np.ndarray, h=50, w=70, image_scale=None):
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale

    t = Identity() if image_scale is None else Scale([image_scale, image_scale], axes=("y", "x"))
    img = Image2DModel.parse(np.full((3, h, w), 242, np.uint8), dims=("c", "y", "x"), transformations={"S": t})
    lab = Labels2DModel.parse(mask.astype(np.uint8), dims=("y", "x"), transformations={"S": Identity()})
    return SpatialData(images={"S_image": img}, labels={"S_tissue": lab})


def test_tile_grid_exact_layout_on_non_square_mask_pixels():
    # 70 x 50 px image at 1 µm/px, 20 µm spacing: 3 columns x 2 rows, centred: x = 15, 35, 55 and y = 15, 35.
    # The mask is 14 x 25: each mask pixel is 5 px wide and 2 px tall. A centre (x, y) lies on mask pixel
    # (y // 2, x // 5); three centres are on tissue, each 10 px window holds one tissue pixel of 2 x 5 = 10.
    mask = np.zeros((25, 14), bool)
    mask[15 // 2, 15 // 5] = mask[35 // 2, 35 // 5] = mask[35 // 2, 55 // 5] = True
    mask[0, 0] = True  # under no centre
    table, shapes = tile_grid(
        _grid_sdata(mask), "S", spacing_um=20.0, size_um=10.0, min_tissue=0.1, um_per_px=1.0, inplace=False
    )
    np.testing.assert_array_equal(table.obsm["spatial"], [[15, 15], [35, 35], [55, 35]])
    assert table.obs["spot_id"].tolist() == ["0x0", "1x1", "2x1"]  # "{col}x{row}"
    assert table.obs["array_col"].tolist() == [0, 1, 2] and table.obs["array_row"].tolist() == [0, 1, 1]
    assert table.obs_names.tolist() == ["S_0x0", "S_1x1", "S_2x1"]
    np.testing.assert_array_equal(table.obs["tissue_fraction"], [0.1, 0.1, 0.1])  # >= min_tissue keeps 0.1
    np.testing.assert_array_equal(shapes.geometry.y.to_numpy(), [15, 35, 35])
    with pytest.raises(ValueError, match="No grid point"):
        tile_grid(_grid_sdata(mask), "S", spacing_um=20.0, size_um=10.0, min_tissue=0.11, um_per_px=1.0)


def test_tile_grid_in_um_matches_the_grid_in_pixels_when_it_fits_exactly():
    # 224 px tiles on a 448 x 672 px image: 2 x 3 abutting tiles whatever the pixel size. At 0.2005 µm/px,
    # 224 * 0.2005 µm / 0.2005 µm/px is 224.00000000000003 px by round-off and 672 // that dropped a row and a column
    # (2 tiles, straddling the others' borders) - bulk_to_mudata tiles with exactly these spacing_um and um_per_px.
    mask = np.ones((56, 84), bool)
    kw = {"min_tissue": 0.0, "inplace": False}
    ref, _ = tile_grid(_grid_sdata(mask, h=448, w=672), "S", spacing_um=224.0, size_um=224.0, um_per_px=1.0, **kw)
    upp = 0.2005
    assert 224 * upp / upp > 224  # the round-off this guards against
    table, _ = tile_grid(_grid_sdata(mask, h=448, w=672), "S", spacing_um=224 * upp, size_um=224 * upp, um_per_px=upp,
                         **kw)  # fmt: skip
    assert table.n_obs == ref.n_obs == 6
    np.testing.assert_allclose(table.obsm["spatial"], ref.obsm["spatial"], atol=1e-9)
    assert table.obs_names.tolist() == ref.obs_names.tolist()


@pytest.mark.parametrize(("spacing", "size", "upp"), [(6, 14, 0.2042), (10, 26, 1.5165), (27, 13, 1.6433)])
def test_tile_grid_is_the_same_grid_in_um_at_any_pixel_size(spacing, size, upp):
    # spacing / size in px at 1 µm/px, or the same in µm at upp µm/px: the same grid. Lattice centres and window edges
    # often lie on mask pixel borders (mask pixels of 4 x 4 px here); round-off in spacing_um / um_per_px moved them
    # to the other side, so centres fell off the tissue and fractions changed.
    rng = np.random.default_rng(0)
    mask = rng.random((60, 80)) > 0.4
    kw = {"min_tissue": 0.3, "inplace": False}
    ref, _ = tile_grid(_grid_sdata(mask, h=240, w=320), "S", spacing_um=spacing, size_um=size, um_per_px=1.0, **kw)
    table, _ = tile_grid(_grid_sdata(mask, h=240, w=320), "S", spacing_um=spacing * upp, size_um=size * upp,
                         um_per_px=upp, **kw)  # fmt: skip
    assert table.obs_names.tolist() == ref.obs_names.tolist()
    np.testing.assert_allclose(table.obsm["spatial"], ref.obsm["spatial"], atol=1e-9)
    np.testing.assert_array_equal(table.obs["tissue_fraction"], ref.obs["tissue_fraction"])


def test_tile_grid_refuses_an_image_scaled_into_the_section():
    with pytest.raises(ValueError, match="scaled by 4"):
        tile_grid(_grid_sdata(np.ones((25, 35), bool), image_scale=4.0), "S", um_per_px=1.0, spacing_um=20.0)


def test_tile_grid_refuses_an_image_translated_in_the_section_naming_it():
    """The grid is stored in the section's coordinate system as the image's pixels: an image translated there (its
    grid would sit off the image, and SpotPatchDataset reads no translated image) is refused naming image_key, the
    coordinate system and what is supported; the same image in another coordinate system is tiled in its pixels."""
    from spatialdata.transformations import Translation, set_transformation

    sd = _grid_sdata(np.ones((25, 35), bool))
    set_transformation(sd.images["S_image"], Translation([100.0, 50.0], axes=("x", "y")), to_coordinate_system="S")
    match = r"image_key: image 'S_image' is translated or otherwise moved in coordinate system 'S'.*only an image whose"
    with pytest.raises(ValueError, match=match + " transformation there is the identity"):
        tile_grid(sd, "S", um_per_px=1.0, spacing_um=20.0, size_um=10.0)
    sd.labels["T_tissue"] = sd.labels["S_tissue"]
    table, _ = tile_grid(sd, "T", image_key="S_image", um_per_px=1.0, spacing_um=20.0, size_um=10.0, inplace=False)
    np.testing.assert_array_equal(np.unique(table.obsm["spatial"][:, 0]), [15, 35, 55])  # 70 px wide, not 170


# ------------------------------------------------------------------------------------------------ mutation sweep
def test_hue_of_each_branch_by_hand():
    from scst.pp._tissue import _hsl_channels

    # (r, g, b) -> hue: max r: 60 * ((g - b) / c mod 6); max g: 60 * ((b - r) / c + 2); max b: 60 * ((r - g) / c + 4).
    rgb = np.array(
        [[1.0, 0.5, 0.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.5, 1.0], [0.5, 0.0, 1.0]]
    )
    hue, sat, light = _hsl_channels(rgb.T)
    np.testing.assert_allclose(hue, [30, 330, 90, 150, 210, 270])
    np.testing.assert_allclose(sat, 1.0)
    np.testing.assert_allclose(light, 0.5)
    grey = _hsl_channels(np.array([[0.4], [0.4], [0.4]]))
    assert grey[0][0] == 0 and grey[1][0] == 0 and grey[2][0] == pytest.approx(0.4)


def _pixels(n_on: int, on, off=(240, 240, 240), n=20) -> np.ndarray:
    """One uint8 tile (1, 3, 4, 5) of n pixels, the first n_on of colour ``on``."""
    px = np.array([on] * n_on + [off] * (n - n_on), np.uint8)
    return np.moveaxis(px.reshape(1, 4, 5, 3), -1, 1)


def test_filter_tiles_default_thresholds_of_the_presets():
    purple, brown = (150, 90, 170), (200, 120, 40)  # he tissue; DAB brown: hue 30, saturation 0.8, lightness 0.47
    assert filter_tiles(_pixels(10, purple))[1][0]  # 10 / 20 = 0.5 >= 0.5 (he)
    frac, keep = filter_tiles(_pixels(9, purple))
    assert frac[0] == 0.45 and not keep[0]
    assert filter_tiles(_pixels(4, brown), preset="dab_brown")[1][0]  # 0.2 >= 0.2 (dab_brown)
    frac, keep = filter_tiles(_pixels(3, brown), preset="dab_brown")
    assert frac[0] == 0.15 and not keep[0]
    # The bounds of threshold itself are valid: 1.0 keeps only all-tissue tiles.
    assert (
        filter_tiles(_pixels(20, purple), threshold=1.0)[1][0]
        and not filter_tiles(_pixels(19, purple), threshold=1.0)[1][0]
    )
    with pytest.raises(ValueError, match=r"threshold: expected a fraction in \[0, 1\]"):
        filter_tiles(_pixels(20, purple), threshold=1.01)


def test_filter_tiles_channels_first_with_three_columns_and_uint16():
    # A channels-first tile 3 px wide is not taken for channels-last: yellow everywhere (he fraction 1); moved, each
    # "pixel" would be grey (one channel's value three times): fraction 0.
    yellow = np.zeros((1, 3, 4, 3), np.uint8)
    yellow[:, :2] = 255
    assert filter_tiles(yellow)[0][0] == 1.0
    # RGBA channels last, as openslide/PIL read_region give tiles: the alpha channel is dropped, not an image row
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[0], rgb[1] = (150, 90, 170), (240, 240, 240)  # a tile of tissue colour, a tile of glass
    rgba = np.concatenate([rgb, np.full((2, 8, 8, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(filter_tiles(rgba)[0], filter_tiles(rgb)[0])
    assert filter_tiles(rgba)[0].tolist() == [1.0, 0.0]
    # uint16 tiles scale by 65535: the same fractions as the uint8 tile.
    tile8 = _pixels(9, (150, 90, 170))
    np.testing.assert_array_equal(filter_tiles(tile8.astype(np.uint16) * 257)[0], filter_tiles(tile8)[0])


def test_filter_tiles_of_a_patch_dataset_scores_every_spot():
    img = np.full((3, 30, 40), 240, np.uint8)
    img[:, :, :20] = np.array([150, 90, 170])[:, None, None]  # left half tissue
    ds = SpotPatchDataset.from_arrays({"s": img}, [[5, 15], [30, 15], [10, 10]], ["s"] * 3, None, size_px=6,
                                      normalize=None)  # fmt: skip
    frac, keep = filter_tiles(ds)
    np.testing.assert_array_equal(frac, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(keep, [True, False, True])


def test_window_fraction_counts_the_outside_as_background():
    from scst.pp._tissue import _window_fraction

    # All-tissue 4 x 4 mask of 2 x 2 px; a 4 px window centred at (0, 4): x -2..2 -> cols -1..0 (col -1 outside),
    # y 2..6 -> rows 1..2: 2 of its 4 mask pixels are tissue.
    mask = np.ones((4, 4), bool)
    np.testing.assert_allclose(_window_fraction(mask, np.array([[0.0, 4.0], [4.0, 8.0]]), 4.0, 2.0, 2.0), [0.5, 0.5])


def test_tile_grid_keeps_only_centres_on_tissue_and_accepts_min_tissue_1():
    # Mask pixels 5 px wide, 2 px tall (as above). Tissue at mask (7, 2) lies in the 10 px window of centre (15, 15)
    # (fraction 0.1) but not under the centre (mask (7, 3)): no point is kept.
    mask = np.zeros((25, 14), bool)
    mask[7, 2] = True
    with pytest.raises(ValueError, match="No grid point"):
        tile_grid(_grid_sdata(mask), "S", spacing_um=20.0, size_um=10.0, min_tissue=0.1, um_per_px=1.0)
    full = np.ones((25, 14), bool)
    table, shapes = tile_grid(
        _grid_sdata(full), "S", spacing_um=20.0, size_um=10.0, min_tissue=1.0, um_per_px=1.0, inplace=False
    )
    assert table.n_obs == 6 and (table.obs["tissue_fraction"] == 1.0).all()
    np.testing.assert_array_equal(shapes["radius"].to_numpy(), 5.0)  # radius = size_um / 2 in px


def test_tissue_mask_explicit_scale_out_of_range():
    sd = _glass_sdata(np.full((3, 64, 96), 242, np.uint8), scale_factors=[2, 2])
    with pytest.raises(ValueError, match=r"scale: level 3 out of range; the image has 3 level\(s\)"):
        tissue_mask(sd, "S_image", um_per_px=1.0, scale=3)
    assert tissue_mask(sd, "S_image", um_per_px=1.0, scale=2, inplace=False).shape == (16, 24)


def test_tissue_mask_background_lightness_is_the_median_of_the_unsaturated_pixels():
    # Glass 242 (lightness 0.949) on 3/4 of the frame, black dust (unsaturated) on a fifth, pale pink tissue
    # (saturation 0.2, lightness 0.882). The median background is the glass: light_max 0.929 takes the pink in (the
    # mean, 0.77, would not). Pixels of saturation exactly sat_min are tissue, not background.
    img = np.full((3, 40, 60), 242, np.uint8)
    img[:, :8, :] = 0
    img[:, 20:30, 10:30] = np.array([250, 200, 250])[:, None, None]
    kw = {"um_per_px": 1.0, "scale": 0, "smooth_um": 0.1, "min_object_um2": 1, "min_hole_um2": 1, "inplace": False}
    mask = tissue_mask(_glass_sdata(img), "S_image", sat_min=0.05, **kw).values > 0
    truth = np.zeros((40, 60), bool)
    truth[20:30, 10:30] = True
    np.testing.assert_array_equal(mask, truth)
    # Yellow (saturation 1, lightness 0.5) on most of the frame with sat_min=1: background = the glass only.
    img = np.full((3, 40, 60), 242, np.uint8)
    img[:2, :30, :] = 255
    img[2, :30, :] = 0
    yellow = tissue_mask(_glass_sdata(img), "S_image", sat_min=1.0, **kw).values > 0
    assert yellow[:30].all() and not yellow[30:].any()
    # A fixed light_max equal to a pixel's lightness includes it (<=).
    at = tissue_mask(_glass_sdata(img), "S_image", sat_min=1.0, light_max=0.5, **kw).values > 0
    assert at[:30].all() and not at[30:].any()


def test_tissue_mask_of_a_coarsened_single_scale_image():
    # Coarsening a uint8 image by 2 gives floats in 0..255: they are scaled to [0, 1] like the uint8 levels.
    img = np.full((3, 80, 120), 242, np.uint8)
    img[:, 20:60, 40:100] = np.array([150, 90, 170])[:, None, None]
    kw = {"um_per_px": 1.0, "smooth_um": 0.1, "min_object_um2": 1, "min_hole_um2": 1, "inplace": False}
    lab = tissue_mask(_glass_sdata(img), "S_image", target_um_per_px=2.0, **kw)
    truth = np.zeros((40, 60), bool)
    truth[10:30, 20:50] = True
    np.testing.assert_array_equal(lab.values > 0, truth)


def test_tissue_mask_is_the_same_for_uint8_uint16_and_float_copies_of_an_image():
    # The same image as uint16 (x 257) or float in [0, 1], coarsened on the fly or read at full resolution, gives
    # the same mask. Before: a coarsened uint16 level (float means in 0..65535) was divided by 255, and one float pixel
    # at 1.0008 (an overshoot SpotPatchDataset accepts) made a full-resolution float image count as 0..255: both
    # gave an empty mask without an error.
    img = np.full((3, 80, 120), 242, np.uint8)
    img[:, 20:60, 40:100] = np.array([150, 90, 170])[:, None, None]
    flt = img.astype(np.float32) / 255
    flt[0, 0, 0] = 1.0008
    kw = {"um_per_px": 1.0, "smooth_um": 0.1, "min_object_um2": 1, "min_hole_um2": 1, "inplace": False}
    for target in (2.0, 1.0):  # coarsened by 2 / full resolution
        ref = tissue_mask(_glass_sdata(img), "S_image", target_um_per_px=target, **kw).values
        assert ref.mean() == pytest.approx(0.25)
        for other in (img.astype(np.uint16) * 257, flt):
            np.testing.assert_array_equal(
                tissue_mask(_glass_sdata(other), "S_image", target_um_per_px=target, **kw).values, ref
            )


def test_tissue_mask_default_key_is_the_section():
    sd = _synthetic_with_geometry()
    kw = {"scale": 0, "smooth_um": 2, "min_object_um2": 100}
    tissue_mask(sd, section="S", **kw)
    assert "S_tissue" in sd.labels and "S_image_tissue" not in sd.labels
    tissue_mask(sd, "other", um_per_px=1.0, **kw)  # an image of no section of the table: named by its key
    assert "other_tissue" in sd.labels


def test_tissue_mask_without_a_pixel_size_cleans_up_64_level_pixels():
    # No µm/px: sigma 1.5 px and objects under 64 level pixels go. After smoothing the 8 x 8 square covers fewer than
    # 64 px and goes; the 12 x 12 one stays.
    img = np.full((3, 48, 64), 242, np.uint8)
    purple = np.array([150, 90, 170])[:, None, None]
    img[:, 5:13, 40:48] = purple
    img[:, 20:32, 20:32] = purple
    with pytest.warns(UserWarning, match="pixel size"):
        lab = tissue_mask(_glass_sdata(img), "S_image", scale=0, sat_min=0.2, light_max=0.9, inplace=False)
    mask = lab.values > 0
    assert mask[21:31, 21:31].all() and not mask[:15, 35:].any()
    assert 64 <= mask.sum() <= 12 * 12 + 4 * 16  # one object, about the square (sigma 1.5 widens it a little)


def test_tile_grid_warns_that_mask_options_are_ignored_with_a_stored_mask():
    """The stored S_tissue mask is used as is: tissue_mask options (smooth_um=...) would be silently dropped."""
    mask = np.ones((25, 14), bool)
    kw = {"spacing_um": 20.0, "size_um": 10.0, "um_per_px": 1.0, "inplace": False}
    with pytest.warns(UserWarning, match=r"stored tissue mask sdata.labels\['S_tissue'\].*\['smooth_um'\] are ignored"):
        with_opt, _ = tile_grid(_grid_sdata(mask), "S", smooth_um=5.0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain, _ = tile_grid(_grid_sdata(mask), "S", **kw)
    np.testing.assert_array_equal(with_opt.obsm["spatial"], plain.obsm["spatial"])


def test_tile_grid_min_tissue_zero_keeps_every_grid_point_even_with_an_empty_mask():
    """Review 2026-12-04: an image that is all tissue (a crop, a TMA core) has an empty mask (no glass to tell it
    from), and with min_tissue=0 the centre still had to lie on the mask: no point at all."""
    mask = np.zeros((25, 14), bool)
    table, _ = tile_grid(
        _grid_sdata(mask), "S", spacing_um=20.0, size_um=10.0, min_tissue=0.0, um_per_px=1.0, inplace=False
    )
    assert table.n_obs == 6  # 3 columns × 2 rows
    np.testing.assert_array_equal(table.obs["tissue_fraction"], np.zeros(6))
    with pytest.raises(ValueError, match="No grid point"):
        tile_grid(_grid_sdata(mask), "S", spacing_um=20.0, size_um=10.0, min_tissue=0.01, um_per_px=1.0)


# ------------------------------------------------------------------------------------------------ coverage: paths
def _with_geos(sd, geos):
    import anndata as ad
    import pandas as pd

    t = ad.AnnData(np.zeros((1, 0), np.float32), obs=pd.DataFrame(index=["x"]))
    t.uns["scst"] = {"sections": geos}
    sd.tables["table"] = t
    return sd


def test_resolve_image_fallbacks():
    """Which image and pixel size tissue_mask takes when section / image_key are left out."""
    from spatialdata.transformations import Scale, set_transformation

    from scst.pp._tissue import _resolve_image

    # no table: section "S" means image "S_image"; a single image is the image
    sd = _synthetic_sdata()
    assert _resolve_image(sd, None, "S", "table", None) == ("S", "S_image", None)
    assert _resolve_image(sd, None, None, "table", 1.5) == (None, "S_image", 1.5)
    # one section of the table has an image: that one, with the table's µm/px (image untransformed in "S")
    geos = {"S": {"image_key": "S_image", "um_per_px": 2.0, "coordinate_system": "S"}, "T": {"image_key": None}}
    _with_geos(sd, geos)
    assert _resolve_image(sd, None, None, "table", None) == ("S", "S_image", 2.0)
    assert _resolve_image(sd, "S_image", None, "table", None) == ("S", "S_image", 2.0)  # image_key -> its section
    # an image downscaled 4x into the section: its pixels are 4x the section's (2 µm -> 8 µm)
    set_transformation(sd.images["S_image"], Scale([4.0, 4.0], axes=("y", "x")), to_coordinate_system="S")
    assert _resolve_image(sd, None, None, "table", None) == ("S", "S_image", 8.0)
    # the section's coordinate system unknown to the image: its pixels are the section's
    geos["S"]["coordinate_system"] = "elsewhere"
    assert _resolve_image(sd, None, None, "table", None) == ("S", "S_image", 2.0)
    with pytest.raises(ValueError, match=r"section: 'T' has no image"):
        _resolve_image(sd, None, "T", "table", None)


def test_tissue_mask_default_image_without_section_or_key():
    """No table, one image: tissue_mask(sdata) masks it under '<image>_tissue'; section='S' finds 'S_image'."""
    kw = {"um_per_px": 1.0, "scale": 0, "smooth_um": 2, "min_object_um2": 100}
    sd = _synthetic_sdata()
    tissue_mask(sd, **kw)
    tissue_mask(sd, section="S", **kw)
    for key in ("S_image_tissue", "S_tissue"):
        assert abs((sd.labels[key].values > 0).mean() - 64 / 240) < 0.02  # the 200 x 320 rectangle of 400 x 600
    sd.images["other"] = sd.images["S_image"]
    match = r"Pass section= \(one of \[\]\) or image_key= \(one of \['S_image', 'other'\]"
    with pytest.raises(ValueError, match=match):
        tissue_mask(sd, **kw)


def test_tissue_mask_dab_brown_marks_the_brown_rectangle():
    # glass with a DAB-brown block at rows 10:30, cols 20:50 and a hematoxylin-blue block at rows 35:45, cols 5:25
    img = np.full((3, 50, 60), 242, np.uint8)
    img[:, 10:30, 20:50] = np.moveaxis(_dab_tiles(n=1, size=30, seed=1)[0, :20], -1, 0)
    hema = np.zeros((1, 3))
    hema[0, 0] = 0.3
    img[:, 35:45, 5:25] = (hed2rgb(hema)[0] * 255).astype(np.uint8)[:, None, None]
    kw = {"um_per_px": 1.0, "scale": 0, "smooth_um": 0.1, "min_object_um2": 1, "min_hole_um2": 1, "inplace": False}
    lab = tissue_mask(_glass_sdata(img), "S_image", preset="dab_brown", **kw)
    truth = np.zeros((50, 60), bool)
    truth[10:30, 20:50] = True
    np.testing.assert_array_equal(lab.values > 0, truth)


def test_tissue_mask_float_image_in_0_255_is_scaled():
    img = np.full((3, 80, 120), 242, np.uint8)
    img[:, 20:60, 40:100] = np.array([150, 90, 170])[:, None, None]
    kw = {"um_per_px": 1.0, "scale": 0, "smooth_um": 0.1, "min_object_um2": 1, "min_hole_um2": 1, "inplace": False}
    ref = tissue_mask(_glass_sdata(img), "S_image", **kw).values
    assert ref.mean() == pytest.approx(0.25)
    np.testing.assert_array_equal(tissue_mask(_glass_sdata(img.astype(np.float32)), "S_image", **kw).values, ref)


def test_tissue_mask_refuses_a_grey_image():
    sd = _glass_sdata(np.full((1, 40, 40), 200, np.uint8))
    with pytest.raises(ValueError, match=r"image_key: 'S_image' needs 3 \(RGB\) channels, has 1"):
        tissue_mask(sd, "S_image", um_per_px=1.0, scale=0)


def _purple_tiles(n: int) -> np.ndarray:
    """n uint8 (3, 8, 8) tiles: tile i has i % 9 of its 8 columns purple tissue (fraction (i % 9) / 8 ≤ 1)."""
    t = np.full((n, 3, 8, 8), 242, np.uint8)
    for i in range(n):
        t[i, :, :, : min(i % 9, 8)] = np.array([150, 90, 170])[:, None, None]
    return t


def test_filter_tiles_on_tensors_single_tiles_and_iterables():
    import torch

    tiles = _purple_tiles(300)  # more than one batch of 256
    truth = np.minimum(np.arange(300) % 9, 8) / 8
    frac, keep = filter_tiles(tiles)
    np.testing.assert_allclose(frac, truth)
    np.testing.assert_array_equal(keep, truth >= 0.5)
    np.testing.assert_allclose(filter_tiles(torch.from_numpy(tiles))[0], truth)
    np.testing.assert_allclose(filter_tiles(tiles[5])[0], [5 / 8])  # one (3, h, w) tile
    np.testing.assert_allclose(filter_tiles(list(tiles))[0], truth)  # a list: batches of 256, then the rest
    np.testing.assert_allclose(filter_tiles(torch.from_numpy(t) for t in tiles[:10])[0], truth[:10])  # a generator
    np.testing.assert_allclose(filter_tiles(np.moveaxis(t, 0, -1) for t in tiles[:3])[0], truth[:3])  # channels last
    assert filter_tiles([])[0].shape == (0,)


@pytest.mark.parametrize(
    ("tiles", "kw", "err", "match"),
    [
        (np.zeros((2, 2, 3, 8, 8), np.uint8), {}, ValueError, r"tiles: expected \(n, 3, h, w\) or \(n, h, w, 3\)"),
        (5, {}, TypeError, r"tiles: expected an array, tensor, SpotPatchDataset or iterable.*<class 'int'>"),
        (np.zeros((1, 3, 8, 8), np.uint8), {"method": "otsu"}, ValueError, r"method: expected 'hsl'.*got 'otsu'"),
        (np.zeros((1, 3, 8, 8), np.uint8), {"preset": "ihc"}, ValueError, r"preset: expected one of \['he'"),
    ],
)
def test_filter_tiles_bad_input(tiles, kw, err, match):
    with pytest.raises(err, match=match):
        filter_tiles(tiles, **kw)


def test_tile_grid_on_a_multiscale_stored_mask_uses_its_finest_level():
    from spatialdata.models import Labels2DModel

    """The finest level's one-pixel gap counts (the 2x level samples odd pixels only and would not see it)."""
    mask = np.zeros((50, 70), bool)
    mask[10:20, 10:20] = mask[30:40, 50:60] = True  # under centres (15, 15) and (55, 35) of the 20 px lattice
    mask[30:40, 54] = False  # an even column: absent from the 2x level, 10 % of the second window
    kw = {"spacing_um": 20.0, "size_um": 10.0, "min_tissue": 0.85, "um_per_px": 1.0, "inplace": False}
    sd = _grid_sdata(mask)
    sd.labels["S_tissue"] = Labels2DModel.parse(
        mask.astype(np.uint8), dims=("y", "x"), scale_factors=[2], transformations={"S": Identity()}
    )
    assert sd.labels["S_tissue"]["scale1"]["image"].values[15:20, 25:30].all()  # the gap is not in level 1
    table, _ = tile_grid(sd, "S", **kw)
    np.testing.assert_array_equal(table.obsm["spatial"], [[15, 15], [55, 35]])
    np.testing.assert_allclose(table.obs["tissue_fraction"], [1.0, 0.9], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kw", "err", "match"),
    [
        ({"spacing_um": -20.0}, ValueError, r"spacing_um: expected a positive number, got -20.0"),
        ({"size_um": float("nan")}, ValueError, r"size_um: expected a positive number, got nan"),
        ({"image_key": "nope"}, KeyError, r"image_key: 'nope' not in sdata.images \(\['S_image'\]\)"),
        ({"mask_key": "nope"}, KeyError, r"mask_key: 'nope' not in sdata.labels \(\['S_tissue'\]\)"),
    ],
)
def test_tile_grid_bad_input(kw, err, match):
    with pytest.raises(err, match=match):
        tile_grid(_grid_sdata(np.ones((25, 35), bool)), "S", um_per_px=1.0, **kw)
