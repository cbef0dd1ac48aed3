"""scst.pl._spatial: the sections drawn and a section's spots (circles, their frame), on tiny hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scst
from scst.pl._spatial import _Section, _sections


def _spots(xy, sections=None) -> AnnData:
    n = len(xy)
    obs = pd.DataFrame({"section": sections or ["S"] * n}, index=[f"s{i}" for i in range(n)])
    a = AnnData(np.ones((n, 1), np.float32), obs=obs)
    a.var_names = ["G"]
    a.obsm["spatial"] = np.asarray(xy, dtype=float)
    return a


def test_sections_need_the_section_column_and_at_least_one():
    a = _spots([[0, 0], [10, 0]])
    assert _sections(a, None) == ["S"] and _sections(a, ["S"]) == ["S"]
    with pytest.raises(ValueError, match="sections: expected at least one section"):
        _sections(a, [])
    a.obs = a.obs.drop(columns="section")
    with pytest.raises(KeyError, match=r"adata.obs has no 'section' column; read the data with scst.io.read_st"):
        scst.pl.predicted_expression(a, "G", layer=None, show=False)


def test_spots_stacked_at_one_position_get_radius_1_and_need_coordinates():
    with pytest.warns(UserWarning, match="no image"):
        sec = _Section(None, _spots([[5, 5], [5, 5]]), "S")
    np.testing.assert_array_equal(sec.shapes["radius"], [1.0, 1.0])
    assert sec.extent == (3.0, 7.0, 3.0, 7.0)  # the position ± twice the radius
    a = _spots([[5, 5]])
    del a.obsm["spatial"]
    with pytest.raises(KeyError, match=r"adata.obsm has no 'spatial' coordinates to place the spots of 'S'"):
        _Section(None, a, "S")


def test_shapes_without_a_transformation_to_the_sections_system_are_framed_as_they_are():
    """Spot shapes placed only in 'global' while the section's coordinate system is 'S': their own coordinates."""
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale

    xy = np.array([[10.0, 20.0], [30.0, 60.0]])
    a = _spots(xy)
    a.obs["spot_id"] = [0, 1]
    a.uns["scst"] = {"sections": {"S": {"shapes_key": "S_spots", "coordinate_system": "S"}}}
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.array([2.0, 2.0]), index=[0, 1],
                               transformations={"global": Scale([3.0, 3.0], axes=("x", "y"))})  # fmt: skip
    sd = SpatialData(shapes={"S_spots": shapes})
    with pytest.warns(UserWarning, match="Section 'S' has no image"):
        sec = _Section(sd, a, "S")
    assert sec.cs == "S" and sec.shapes is shapes
    assert sec.extent == (6.0, 34.0, 16.0, 64.0)  # not scaled by 3: ± 2 radii of 2 px
