"""Tests for scst.pp tissue_mask / filter_tiles / tile_grid on her2st C2 and synthetic images."""

from __future__ import annotations

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


def _synthetic_sdata(h=400, w=600):
    """White glass with one purple (H&E-like) rectangle of tissue at rows 100:300, cols 140:460."""
    rng = np.random.default_rng(0)
    img = np.full((3, h, w), 242, dtype=np.uint8)
    tissue = np.array([150, 90, 170])[:, None, None] + rng.integers(-20, 20, size=(3, 200, 320))
    img[:, 100:300, 140:460] = tissue.clip(0, 255)
    el = Image2DModel.parse(img, dims=("c", "y", "x"), scale_factors=[2, 2], transformations={"S": Identity()})
    return SpatialData(images={"S_image": el})


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


@pytest.mark.parametrize("bad", [0, 0.0, -2.0, float("nan"), float("inf")])
def test_tile_grid_refuses_a_non_positive_um_per_px(bad):
    # Before: 0 fell back to the table's value silently; -2 failed with a misleading message.
    sd = _synthetic_with_geometry()
    with pytest.raises(ValueError, match=r"^um_per_px: expected a finite positive pixel size in µm, got"):
        tile_grid(sd, "S", spacing_um=20.0, size_um=10.0, um_per_px=bad, inplace=False, scale=0)
