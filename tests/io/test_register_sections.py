import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale

import scst


def _visium_like():
    """The layout spatialdata-io's ``visium`` writes: region-named circles, full-res and hires images, one table."""
    rng = np.random.default_rng(0)
    full = rng.integers(0, 255, size=(3, 400, 500), dtype=np.uint8)
    full[:, 100:300, 100:400] = 60
    hires = full[:, ::4, ::4].copy()
    rows, cols = np.mgrid[0:4, 0:6]
    xy = np.column_stack([120 + cols.ravel() * 50.0, 120 + rows.ravel() * 50.0])
    n = len(xy)
    obs = pd.DataFrame(
        {
            "in_tissue": 1,
            "array_row": rows.ravel(),
            "array_col": cols.ravel() * 2,
            "region": "V1",
            "spot_id": np.arange(n),
        },
        index=[f"spot{i}" for i in range(n)],
    )
    obs["region"] = obs["region"].astype("category")
    table = ad.AnnData(sparse.csr_matrix(rng.poisson(3, (n, 5)).astype(np.int32)), obs=obs)
    table.obsm["spatial"] = xy
    table = TableModel.parse(table, region="V1", region_key="region", instance_key="spot_id")
    return SpatialData(
        images={
            "V1_full_image": Image2DModel.parse(full, dims=("c", "y", "x"), transformations={"global": Identity()}),
            "V1_hires_image": Image2DModel.parse(
                hires, dims=("c", "y", "x"), transformations={"global": Scale([4.0, 4.0], axes=("y", "x"))}
            ),
        },
        shapes={
            "V1": ShapesModel.parse(xy, geometry=0, radius=np.full(n, 20.0), transformations={"global": Identity()})
        },
        tables={"table": table},
    )


def test_register_sections_visium_layout():
    sd = _visium_like()
    scst.io.register_sections(sd, spot_diameter_um=55.0)
    t = sd.tables["table"]
    geo = t.uns["scst"]["sections"]["V1"]
    assert geo["image_key"] == "V1_full_image"  # the largest image in the shapes' coordinate system
    assert geo["um_per_px"] == pytest.approx(55.0 / 40.0) and geo["coordinate_system"] == "global"
    assert list(t.obs["section"].unique()) == ["V1"]
    np.testing.assert_array_equal(t.obsm["spatial_array"][:, 1], t.obs["array_row"])
    # scst's patch reader now works on it: a 40 µm window = 29 px around spot 0, cut from the full-res image.
    ds = scst.pp.SpotPatchDataset(sd, size_um=40.0, normalize=None)
    item = ds[0]
    assert item["patch"].shape[-1] == round(40.0 / geo["um_per_px"])
    assert float(item["patch"].mean()) == pytest.approx(60 / 255, abs=1e-6)  # spot 0 sits on the planted block
    with pytest.raises(KeyError, match="nope"):
        scst.io.register_sections(sd, image_keys={"V1": "nope"})
