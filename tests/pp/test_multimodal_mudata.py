from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from skimage.color import hed2rgb
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity

import scst


def test_to_mudata_pairs_each_spot_with_its_window(her2st_sdata):
    mdata = scst.pp.to_mudata(her2st_sdata, sections="C2", size_px=16, genes=["ERBB2", "GAPDH"])
    rna, image = mdata["rna"], mdata["image"]
    table = her2st_sdata.tables["table"]
    c2 = table[table.obs["section"] == "C2"]
    assert rna.n_obs == image.n_obs == c2.n_obs and list(rna.var_names) == ["ERBB2", "GAPDH"]
    assert (image.obs["rna_sample"] == rna.obs_names).all() and (image.obs_names == rna.obs_names).all()
    # expression: log1p(normalize_total(1e4)) with library sizes over all genes
    counts = c2.X.toarray().astype(float)
    lib = counts.sum(1)
    g = c2.var_names.get_loc("ERBB2")
    np.testing.assert_allclose(rna.X[:, 0], np.log1p(counts[:, g] * 1e4 / lib), rtol=1e-5)
    # patch i = the 16 px window nearest to the spot centre in the full-resolution image
    img = her2st_sdata.images["C2_image"]["scale0"]["image"]
    for i in (0, 57):
        cx, cy = c2.obsm["spatial"][i]
        x0, y0 = int(np.floor(cx - 8 + 0.5)), int(np.floor(cy - 8 + 0.5))
        np.testing.assert_array_equal(image.obsm["patch"][i], img[:, y0 : y0 + 16, x0 : x0 + 16].values)
    assert image.obs["dab_fraction"].max() < 0.01 < image.obs["tissue_fraction"].median()  # H&E: no DAB
    assert mdata.uns["scst_mudata"]["group_keys"] == ["section", "label"]
    with pytest.raises(ValueError, match="sections"):
        scst.pp.to_mudata(her2st_sdata, sections="Z9")


def _slides():
    """Slide A: white glass with a DAB-brown square at rows/cols 64:192; slide B: the same square in H&E purple."""
    rng = np.random.default_rng(0)
    a = np.full((3, 256, 256), 245, dtype=np.uint8)
    hed = np.zeros((128, 128, 3))
    hed[..., 2] = rng.uniform(0.15, 0.3, size=(128, 128))
    a[:, 64:192, 64:192] = np.moveaxis((hed2rgb(hed) * 255).round().astype(np.uint8), -1, 0)
    b = np.full((3, 256, 256), 245, dtype=np.uint8)
    b[:, 64:192, 64:192] = (np.array([150, 90, 170])[:, None, None] + rng.integers(-20, 20, (3, 128, 128))).clip(0, 255)
    ims = {k: Image2DModel.parse(v, dims=("c", "y", "x"), transformations={k[0]: Identity()}) for k, v in
           (("A_image", a), ("B_image", b))}  # fmt: skip
    bulk = ad.AnnData(
        X=np.array([[5, 0, 3], [1, 8, 2]], dtype=np.float32),
        obs=pd.DataFrame({"lineage": ["L1", "L2"]}, index=["s1", "s2"]),
        var=pd.DataFrame(index=["g1", "g2", "g3"]),
    )
    return SpatialData(images=ims), bulk


TILE = {"scale": 0, "smooth_um": 2, "min_object_um2": 100}


def test_bulk_to_mudata_tiles_and_filters_by_stain():
    sdata, bulk = _slides()
    mdata = scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=32,
                                   group_keys=["lineage"], **TILE)  # fmt: skip
    image = mdata["image"]
    # the 128 px brown square holds exactly 4 x 4 non-overlapping 32 px tiles of the 8 x 8 grid
    assert image.n_obs == 16
    assert set(image.obs["x"]) == {80.0, 112.0, 144.0, 176.0} == set(image.obs["y"])
    assert (image.obs["rna_sample"] == "s1").all() and (image.obs["lineage"] == "L1").all()
    assert image.obsm["patch"].shape == (16, 3, 32, 32) and (image.obs["dab_fraction"] > 0.9).all()
    with pytest.raises(ValueError, match=r"No patch of image 'B_image' passes the 'dab_brown'.*max 0\.0"):
        scst.pp.bulk_to_mudata(bulk, sdata, {"B_image": "s2"}, um_per_px=1.0, patch_px=32, **TILE)
    he = scst.pp.bulk_to_mudata(bulk, sdata, {"B_image": "s2"}, um_per_px=1.0, patch_px=32, stain="he",
                                out_px=16, max_patches=5, **TILE)  # fmt: skip
    assert he["image"].obsm["patch"].shape == (5, 3, 16, 16)
    with pytest.raises(ValueError, match="1 of 2 images link to no sample"):
        scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1", "B_image": "s9"}, um_per_px=1.0, **TILE)
    with pytest.raises(ValueError, match="smaller than one patch"):
        scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=512, **TILE)
