"""pl.predicted_expression on her2st C2/C3: colours = shared scale of observed and predicted, bad input, save."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import Normalize

import scst
from scst._normalize import log_normalized

_spec = importlib.util.spec_from_file_location("_plconf", Path(__file__).with_name("conftest.py"))
_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conf)


def _facecolors_by_spot(ax, sd, section):
    """Facecolours of the spots of ``section`` keyed by spot id (the shapes' order is the drawing order)."""
    (coll,) = [c for c in ax.collections if len(c.get_facecolors()) > 1]
    ids = sd.shapes[f"{section}_spots"].index.astype(str)
    return dict(zip(ids, coll.get_facecolors()))


def test_observed_and_predicted_share_one_scale(her2st_two):
    sd = her2st_two
    t = sd.tables["table"]
    axes = scst.pl.predicted_expression(sd, ["ERBB2", "GNAS"], sections=["C2", "C3"], show=False)
    assert len(axes) == 8 and [a.get_title() for a in axes[:2]] == ["C2 · ERBB2 · observed", "C2 · ERBB2 · predicted"]
    assert axes[6].get_title() == "C3 · GNAS · observed"
    assert all(len(a.images) == 1 for a in axes)  # the H&E under every panel
    # One norm per gene over both sections and both columns.
    g = t.var_names.get_loc("ERBB2")
    obs, pred = log_normalized(t, [g])[:, 0], t.layers["predicted"][:, g]
    norm = Normalize(min(obs.min(), pred.min()), max(obs.max(), pred.max()))
    cmap = plt.get_cmap(plt.rcParams["image.cmap"])
    for ax, vals, sec in ((axes[0], obs, "C2"), (axes[1], pred, "C2"), (axes[5], pred, "C3")):
        m = (t.obs["section"] == sec).to_numpy()
        got = _facecolors_by_spot(ax, sd, sec)
        ids = t.obs["spot_id"].to_numpy()[m]
        want = cmap(norm(vals[m]))
        np.testing.assert_allclose(np.array([got[i][:3] for i in ids]), want[:, :3], atol=2 / 255)


def test_image_matches_baseline(her2st_two, tmp_path):
    fig = scst.pl.predicted_expression(her2st_two, "ERBB2", sections="C3", return_fig=True, figsize=(8, 4))
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 3  # two panels + one colour bar
    _conf.compare_to_baseline(fig, "predicted_expression", tmp_path, tol=3)


def test_save_ax_and_return(her2st_two, tmp_path):
    import scanpy as sc

    fig, ax = plt.subplots()
    old, sc.settings.figdir = sc.settings.figdir, tmp_path
    try:
        out = scst.pl.predicted_expression(her2st_two, "ERBB2", None, sections="C2", ax=ax, save="erbb2")
    finally:
        sc.settings.figdir = old
    assert out == [ax] and ax.get_title() == "C2 · ERBB2 · observed"
    assert (tmp_path / "erbb2.png").stat().st_size > 5_000  # relative save → scanpy.settings.figdir, .png added
    assert scst.pl.predicted_expression(her2st_two, "ERBB2", sections="C2", show=True) is None
    with pytest.raises(ValueError, match="ax: expected 2"):
        scst.pl.predicted_expression(her2st_two, "ERBB2", sections="C2", ax=ax)


def test_bad_input(her2st_two):
    sd = her2st_two
    with pytest.raises(KeyError, match=r"genes: 'ERBB' not found.*close matches.*ERBB2"):
        scst.pl.predicted_expression(sd, "ERBB", show=False)
    with pytest.raises(KeyError, match=r"layer: 'pred' not found.*close matches: \['predicted'\]"):
        scst.pl.predicted_expression(sd, "ERBB2", layer="pred", show=False)
    with pytest.raises(KeyError, match="sections: 'C9'"):
        scst.pl.predicted_expression(sd, "ERBB2", sections="C9", show=False)
    with pytest.raises(KeyError, match="Table 'nope'"):
        scst.pl.predicted_expression(sd, "ERBB2", table="nope", show=False)


def test_section_without_image_plots_spots_and_warns(her2st_two):
    from spatialdata import SpatialData

    sd = her2st_two
    no_c3 = SpatialData(images={"C2_image": sd.images["C2_image"]}, shapes=dict(sd.shapes), tables=dict(sd.tables))
    with pytest.warns(UserWarning, match="'C3' has no image"):
        axes = scst.pl.predicted_expression(no_c3, "ERBB2", show=False)
    assert [len(a.images) for a in axes] == [1, 1, 0, 0]
    assert len(axes[3].collections[0].get_facecolors()) == int((sd.tables["table"].obs["section"] == "C3").sum())
    # An AnnData alone: circles at obsm["spatial"], no image.
    with pytest.warns(UserWarning, match="no image"):
        axes = scst.pl.predicted_expression(sd.tables["table"], "ERBB2", sections="C2", show=False)
    assert len(axes[0].images) == 0 and len(axes[0].collections[0].get_facecolors()) == 187


def test_deprecated_alias_saves_to_the_given_path(her2st_two, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(FutureWarning, match="predicted_expression"):
        fig = scst.pl.spatial_expression(
            her2st_two, "ERBB2", sections=["C2"], layers=[None], save="o/e.png", return_fig=True
        )
    assert (tmp_path / "o" / "e.png").is_file() and fig.axes[0].get_title() == "C2 · ERBB2 · observed"


def test_deprecated_alias_draws_into_ax_and_refuses_unknown_keywords(tmp_path):
    """The alias passes ``ax`` on (it drew a new figure instead) and only ignores its old ``scale``/``shared_scale``."""
    import pandas as pd
    from anndata import AnnData

    n = 20
    obs = pd.DataFrame({"section": pd.Categorical(["A"] * n)}, index=[f"s{i}" for i in range(n)])
    a = AnnData(np.random.default_rng(0).poisson(5, (n, 2)).astype(np.float32), obs=obs)
    a.var_names = ["G1", "G2"]
    a.obsm["spatial"] = np.column_stack([np.arange(n) % 5 * 10.0, np.arange(n) // 5 * 10.0])
    fig, ax = plt.subplots()
    with pytest.warns(FutureWarning), pytest.warns(UserWarning, match="no image"):
        out = scst.pl.spatial_expression(a, "G1", layers=[None], ax=ax, scale=2, shared_scale=True, show=False)
    assert out == [ax] and ax.get_title() == "A · G1 · observed" and plt.get_fignums() == [fig.number]
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['gnee'\]"):
        scst.pl.spatial_expression(a, "G1", layers=[None], gnee="x", show=False)


def test_spots_without_shapes_are_circles_of_half_the_spot_diameter():
    """A table without spot shapes: circles at obsm['spatial'], radius = spot_diameter_px / 2 from the section's
    geometry, else half the median nearest-spot distance (grid 10 px apart → 5)."""
    import anndata as ad
    import pandas as pd

    from scst.pl._spatial import _Section

    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    adata = ad.AnnData(np.zeros((4, 1)), obs=pd.DataFrame({"section": ["S"] * 4}, index=list("abcd")))
    adata.obsm["spatial"] = xy
    adata.uns["scst"] = {"sections": {"S": {"spot_diameter_px": 6.0}}}
    with pytest.warns(UserWarning, match="no image"):
        sec = _Section(adata, adata, "S")
    np.testing.assert_array_equal(sec.shapes["radius"], 3.0)
    np.testing.assert_array_equal(np.c_[sec.shapes.geometry.x, sec.shapes.geometry.y], xy)
    del adata.uns["scst"]["sections"]["S"]["spot_diameter_px"]
    with pytest.warns(UserWarning, match="no image"):
        np.testing.assert_array_equal(_Section(adata, adata, "S").shapes["radius"], 5.0)


def _two_sections(n=12):
    """An AnnData of sections A and B (spots only, no image) with counts of G1, G2 and a ``predicted`` layer."""
    import pandas as pd
    from anndata import AnnData

    obs = pd.DataFrame({"section": pd.Categorical(["A"] * n + ["B"] * n)}, index=[f"s{i}" for i in range(2 * n)])
    rng = np.random.default_rng(0)
    a = AnnData(np.c_[rng.poisson(2, 2 * n), rng.poisson(50, 2 * n)].astype(np.float32), obs=obs)
    a.var_names = ["G1", "G2"]
    a.obsm["spatial"] = np.column_stack([np.arange(2 * n) % 4 * 10.0, np.arange(2 * n) // 4 * 10.0])
    a.layers["predicted"] = log_normalized(a).astype(np.float32)
    return a


def test_colour_bar_per_gene_layers_of_the_alias_and_warnings():
    """Each gene's colour bar shows its own shared scale (observed and predicted, all sections drawn); the alias
    draws only the layers it is given; a section without any finite prediction warns; empty requests are errors."""
    a = _two_sections()
    obs = log_normalized(a)
    with pytest.warns(UserWarning, match="no image"):
        fig = scst.pl.predicted_expression(a, ["G1", "G2"], layer=None, return_fig=True)
    bars = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(bars) == 4  # section × gene
    for cax, j in zip(bars, [0, 1, 0, 1]):
        norm = cax._colorbar.mappable.norm
        assert (norm.vmin, norm.vmax) == pytest.approx((obs[:, j].min(), obs[:, j].max()))
        assert cax.get_ylabel() == "log1p(normalize_total 1e4)"
    with pytest.warns(FutureWarning), pytest.warns(UserWarning, match="no image"):
        out = scst.pl.spatial_expression(a, "G1", layers=["predicted"], sections=["A"], show=False)
    assert [ax.get_title() for ax in out] == ["A · G1 · predicted"]
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="layers: expected None and/or one layer"):
        scst.pl.spatial_expression(a, "G1", layers=[None, "predicted", "other"], show=False)
    a.layers["predicted"][a.obs["section"].to_numpy() == "B"] = np.nan
    with pytest.warns(UserWarning, match="no finite 'predicted' value of 'G1' in section 'B'"):
        scst.pl.predicted_expression(a, "G1", show=False)
    with pytest.raises(ValueError, match="nothing to draw"):
        scst.pl.predicted_expression(a, "G1", None, observed=False, show=False)
    with pytest.raises(ValueError, match="genes: expected at least one gene"):
        scst.pl.predicted_expression(a, [], show=False)


def _nine_spots():
    """A 3 × 3 grid of spots (10 px apart, from 10) of section "A" with one gene, registered on shapes "A_spots"."""
    import pandas as pd
    from anndata import AnnData

    n = 9
    xy = np.column_stack([np.arange(n) % 3 * 10.0 + 10, np.arange(n) // 3 * 10.0 + 10])
    obs = pd.DataFrame(
        {"section": pd.Categorical(["A"] * n), "spot_id": np.arange(n), "region": pd.Categorical(["A_spots"] * n)},
        index=[f"s{i}" for i in range(n)],
    )
    t = AnnData(np.random.default_rng(0).poisson(5, (n, 1)).astype(np.float32), obs=obs)
    t.var_names = ["G1"]
    t.uns["scst"] = {"sections": {"A": {"shapes_key": "A_spots", "coordinate_system": "A"}}}
    return n, xy, t


def test_spots_stored_in_other_units_are_framed_in_the_coordinate_system_drawn():
    """Shapes stored at half scale with a Scale(2) to the section's coordinate system (e.g. spots in µm over a pixel
    image) are drawn by spatialdata-plot in that system: the panel frames them there, as the same spots stored in it
    (the frame was taken from the stored coordinates, showing a quarter of the tissue)."""
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    n, xy, t = _nine_spots()
    limits = []
    for f, ts in ((1.0, Identity()), (0.5, Scale([2.0, 2.0], axes=("x", "y")))):
        shapes = ShapesModel.parse(
            xy * f, geometry=0, radius=np.full(n, 4.0 * f), index=np.arange(n), transformations={"A": ts}
        )
        table = TableModel.parse(t.copy(), region="A_spots", region_key="region", instance_key="spot_id")
        sd = SpatialData(shapes={"A_spots": shapes}, tables={"table": table})
        with pytest.warns(UserWarning, match="no image"):
            (ax,) = scst.pl.predicted_expression(sd, "G1", None, show=False)
        limits.append((ax.get_xlim(), ax.get_ylim()))
        plt.close("all")
    assert limits[0] == ((2.0, 38.0), (38.0, 2.0))
    np.testing.assert_allclose(limits[1], limits[0])


def test_a_table_subset_to_some_spots_is_framed_on_those_spots():
    """A table subset to part of a section (e.g. a region of interest) draws only its spots; the panel frames them,
    as the same spots without shapes are framed (it kept the frame of every spot of the section's shapes)."""
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    n, xy, t = _nine_spots()
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(n, 4.0), index=np.arange(n), transformations={"A": Identity()}
    )
    left = t[xy[:, 0] <= 20].copy()
    sd = SpatialData(
        shapes={"A_spots": shapes},
        tables={"table": TableModel.parse(left, region="A_spots", region_key="region", instance_key="spot_id")},
    )
    with pytest.warns(UserWarning, match="no image"):
        (ax,) = scst.pl.predicted_expression(sd, "G1", None, show=False)
    assert len(ax.collections[0].get_facecolors()) == 6
    assert (ax.get_xlim(), ax.get_ylim()) == ((2.0, 28.0), (38.0, 2.0))
