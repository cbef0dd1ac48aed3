import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale, get_transformation

import scst

HIRES_SCALEF = 0.25


def _visium_like(fullres=True):
    """The layout spatialdata-io's ``visium`` writes: region-named circles in ``global`` (full-resolution px),
    ``downscaled_hires`` and ``downscaled_lowres`` (scaled by the scale factors), the hires image only in
    ``downscaled_hires``, and with ``fullres_image_file`` (``fullres=True``) the full image in ``global``.
    ``fullres=False`` is its default (no full-resolution image)."""
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
    images = {
        "V1_hires_image": Image2DModel.parse(
            hires, dims=("c", "y", "x"), transformations={"downscaled_hires": Identity()}
        )
    }
    if fullres:
        images["V1_full_image"] = Image2DModel.parse(full, dims=("c", "y", "x"), transformations={"global": Identity()})
    shapes_ts = {
        "global": Identity(),
        "downscaled_hires": Scale([HIRES_SCALEF, HIRES_SCALEF], axes=("y", "x")),
        "downscaled_lowres": Scale([0.05, 0.05], axes=("y", "x")),
    }
    return SpatialData(
        images=images,
        shapes={"V1": ShapesModel.parse(xy, geometry=0, radius=np.full(n, 20.0), transformations=shapes_ts)},
        tables={"table": table},
    )


def _as_region(sd, region, image_key, image=None, prefix=None):
    """A :func:`_visium_like` sample as section ``region``: its table and circles renamed, its full image (or
    ``image``) as ``image_key``, and with ``prefix`` its obs names prefixed (so two samples' barcodes differ)."""
    t = sd.tables["table"].copy()
    t.obs["region"] = pd.Categorical([region] * t.n_obs)
    t.uns["spatialdata_attrs"]["region"] = region
    if prefix is not None:
        t.obs_names = [f"{prefix}{x}" for x in t.obs_names]
    img = sd.images["V1_full_image"] if image is None else image
    return SpatialData(images={image_key: img}, shapes={region: sd.shapes["V1"]}, tables={"table": t})


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


def test_register_sections_spatialdata_io_default_layout_without_fullres_image():
    # Before: no image was found (the hires image lives only in 'downscaled_hires', the first coordinate system of
    # the shapes is 'global'): image_key=None with only a log line, and SpotPatchDataset refused the section.
    sd = _visium_like(fullres=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an image is found: no warning
        scst.io.register_sections(sd, spot_diameter_um=55.0)
    geo = sd.tables["table"].uns["scst"]["sections"]["V1"]
    assert geo["image_key"] == "V1_hires_image" and geo["coordinate_system"] == "global"
    assert geo["um_per_px"] == pytest.approx(55.0 / 40.0) and geo["image_shape"] == [100, 125]
    # The hires image is placed in 'global' through 'downscaled_hires': full-res px × 0.25 = hires px.
    m = get_transformation(sd.images["V1_hires_image"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(np.asarray(m), [[4, 0, 0], [0, 4, 0], [0, 0, 1]])
    # Patches: 40 µm = 40 / (1.375 / 0.25) = 7.3 → 7 hires px, centred on the spot (120 full-res px → 30 hires px).
    ds = scst.pp.SpotPatchDataset(sd, size_um=40.0, normalize=None)
    assert ds.size_px == {"V1": 7}
    np.testing.assert_allclose(ds.centers[0], [30.0, 30.0])
    hires = np.asarray(sd.images["V1_hires_image"].values)
    for i in range(len(ds)):
        cx, cy = ds.centers[i]
        x0, y0 = int(np.floor(cx - 3.5 + 0.5)), int(np.floor(cy - 3.5 + 0.5))
        np.testing.assert_array_equal(ds.window(i), hires[:, y0 : y0 + 7, x0 : x0 + 7])
        assert (ds.window(i) == 60).all()  # every spot sits on the planted block


def test_register_sections_warns_without_an_image_and_checks_image_keys():
    sd = _visium_like(fullres=False)
    no_image = SpatialData(shapes=dict(sd.shapes), tables=dict(sd.tables))
    with pytest.warns(UserWarning, match=r"no image of sdata.images .* section 'V1' gets image_key=None"):
        scst.io.register_sections(no_image)
    assert no_image.tables["table"].uns["scst"]["sections"]["V1"]["image_key"] is None
    # An image in a coordinate system the shapes do not have cannot be matched to the spots.
    img = Image2DModel.parse(
        np.zeros((3, 40, 40), np.uint8), dims=("c", "y", "x"), transformations={"other": Identity()}
    )
    sd.images["elsewhere"] = img
    with pytest.raises(
        ValueError, match=r"image_keys\['V1'\]: image 'elsewhere' has no transformation to the coordinate"
    ):
        scst.io.register_sections(sd, image_keys={"V1": "elsewhere"})
    # An explicit image reachable through a shared coordinate system is accepted.
    scst.io.register_sections(sd, image_keys={"V1": "V1_hires_image"})
    assert sd.tables["table"].uns["scst"]["sections"]["V1"]["image_key"] == "V1_hires_image"


def test_tile_grid_refuses_an_image_scaled_into_the_sections_coordinate_system():
    """The hires image register_sections places into 'global' by a 4× scale: tile_grid would lay its grid out in
    hires pixels and store it as full-resolution coordinates (every pseudo-spot 4× too close to the origin, windows
    4× too small). A clear error instead (images untransformed in their coordinate system: tests/pp/test_tissue.py)."""
    sd = _visium_like(fullres=False)
    scst.io.register_sections(sd, spot_diameter_um=55.0)
    with pytest.raises(ValueError, match=r"image_key: image 'V1_hires_image' is scaled by 4 into coordinate system"):
        scst.pp.tile_grid(sd, "V1", spacing_um=100.0, size_um=55.0, min_tissue=0.0, inplace=False)


@pytest.mark.parametrize("fullres", [True, False])
def test_tissue_mask_reads_the_pixel_size_of_the_image_it_masks(monkeypatch, fullres):
    """The geometry's µm/px is that of full-resolution pixels; the hires image register_sections finds (placed in
    'global' by a 4× scale) has 4× larger pixels, which tissue_mask's µm-based smoothing and cleanup must use."""
    import scst.pp._tissue as tissue

    sd = _visium_like(fullres=fullres)
    scst.io.register_sections(sd, spot_diameter_um=55.0)
    geo = sd.tables["table"].uns["scst"]["sections"]["V1"]
    seen = []
    real = tissue._mask_from_rgb
    monkeypatch.setattr(tissue, "_mask_from_rgb", lambda rgb, **kw: seen.append(kw["level_um"]) or real(rgb, **kw))
    tissue.tissue_mask(sd, section="V1", scale=0, inplace=False)
    assert seen == [pytest.approx(geo["um_per_px"] * (1 if fullres else 4))]
    tissue.tissue_mask(sd, section="V1", scale=0, um_per_px=2.0, inplace=False)  # what the user passes is used
    assert seen[-1] == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------ mutation sweep
def test_register_sections_defaults_median_radius_and_what_it_keeps():
    """Visium defaults (55 µm spots, 100 µm grid) are recorded; µm/px uses the median radius (a few odd circles do not
    move it); "global" is chosen among untransformed coordinate systems wherever it is listed; other uns["scst"]
    entries and an existing obs["section"] are kept; spatial_array is (array_col, array_row)."""
    from spatialdata.transformations import set_transformation

    sd = _visium_like()
    shapes = sd.shapes["V1"]
    radius = np.full(len(shapes), 20.0)
    radius[:3] = 200.0  # 3 of 24 odd circles
    shapes["radius"] = radius
    set_transformation(shapes, {"aligned": Identity(), **get_transformation(shapes, get_all=True)}, set_all=True)
    t = sd.tables["table"]
    t.uns["scst"] = {"gene_alignment": "kept"}
    t.obs["section"] = pd.Categorical(["mine"] * t.n_obs)
    # kept, with a warning: the geometry is keyed by region, so section 'mine' would find none downstream
    with pytest.warns(UserWarning, match=r"obs\['section'\] is kept but does not name .*'mine' for region 'V1'"):
        scst.io.register_sections(sd)
    geo = t.uns["scst"]["sections"]["V1"]
    assert geo == {
        "image_key": "V1_full_image", "shapes_key": "V1", "coordinate_system": "global", "um_per_px": 55.0 / 40.0,
        "spot_diameter_um": 55.0, "spot_diameter_px": 40.0, "grid_step_um": 100.0, "image_shape": [400, 500],
        "source": "register_sections",
    }  # fmt: skip
    assert t.uns["scst"]["gene_alignment"] == "kept" and set(t.obs["section"]) == {"mine"}
    np.testing.assert_array_equal(t.obsm["spatial_array"], t.obs[["array_col", "array_row"]].to_numpy())
    with pytest.warns(UserWarning, match="is kept but does not name"):
        scst.io.register_sections(sd, spot_diameter_um=100.0, grid_step_um=200.0)  # ST geometry
    geo = t.uns["scst"]["sections"]["V1"]
    assert geo["um_per_px"] == 100.0 / 40.0 and geo["spot_diameter_um"] == 100.0 and geo["grid_step_um"] == 200.0


@pytest.mark.parametrize("radius", [0.0, -20.0, np.nan, np.inf])
def test_register_sections_refuses_bad_radii_and_tables_without_centres(radius):
    sd = _visium_like()
    sd.shapes["V1"]["radius"] = np.r_[radius, np.full(len(sd.shapes["V1"]) - 1, 20.0)]
    with pytest.raises(ValueError, match="'radius' column must hold positive finite spot radii"):
        scst.io.register_sections(sd)
    assert "scst" not in sd.tables["table"].uns and "section" not in sd.tables["table"].obs
    sd = _visium_like()
    del sd.tables["table"].obsm["spatial"]
    with pytest.raises(KeyError, match=r"obsm\['spatial'\] \(spot centres in px\) is required"):
        scst.io.register_sections(sd)
    assert "scst" not in sd.tables["table"].uns and "section" not in sd.tables["table"].obs


def test_register_sections_picks_the_largest_image_and_names_a_wrong_image_key():
    """Two images untransformed in the shapes' coordinate system: the one with the most pixels (full resolution),
    whichever comes first; an image_keys entry that is no image is a KeyError naming the section and the images."""
    sd = _visium_like()
    thumb = Image2DModel.parse(
        np.zeros((3, 40, 50), np.uint8), dims=("c", "y", "x"), transformations={"global": Identity()}
    )
    sd = SpatialData(images={"V1_thumb": thumb, **sd.images}, shapes=dict(sd.shapes), tables=dict(sd.tables))
    scst.io.register_sections(sd)
    assert sd.tables["table"].uns["scst"]["sections"]["V1"]["image_key"] == "V1_full_image"
    with pytest.raises(KeyError, match=r"image_keys\['V1'\]: 'nope' not in sdata.images \(\['V1_thumb', "):
        scst.io.register_sections(sd, image_keys={"V1": "nope"})


def test_register_sections_uses_the_system_where_the_shapes_are_untransformed():
    """Shapes scaled in "global" but untransformed in "px": the spot radius and centres are "px" pixels, so that is
    the sections' coordinate system (not "global" for its name), and the full image there is used as it is."""
    from spatialdata.transformations import set_transformation

    sd = _visium_like()
    set_transformation(sd.shapes["V1"], {"global": Scale([2.0, 2.0], axes=("y", "x")), "px": Identity()}, set_all=True)
    set_transformation(sd.images["V1_full_image"], {"px": Identity()}, set_all=True)
    scst.io.register_sections(sd)
    geo = sd.tables["table"].uns["scst"]["sections"]["V1"]
    assert geo["coordinate_system"] == "px" and geo["image_key"] == "V1_full_image"
    assert list(get_transformation(sd.images["V1_full_image"], get_all=True)) == ["px"]  # nothing added


def test_register_sections_gives_concatenated_samples_their_own_images():
    """Two Visium samples concatenated into one "global" system (spatialdata-io names: shapes "V1"/"V2", images
    "V1_full_image"/"V2_full_image"): each section gets its own image, not the largest of both (V2's) for both;
    images not named after the sections that end up shared by default are a warning."""
    import spatialdata

    a = _visium_like()
    big = np.zeros((3, 600, 700), np.uint8)
    big = Image2DModel.parse(big, dims=("c", "y", "x"), transformations={"global": Identity()})
    b = _as_region(_visium_like(), "V2", "V2_full_image", image=big, prefix="b")
    sd = spatialdata.concatenate([a, b], concatenate_tables=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scst.io.register_sections(sd)
        scst.io.register_sections(sd)  # again: obs["section"] is now the regions, which is no cause for a warning
    geo = sd.tables["table"].uns["scst"]["sections"]
    assert (geo["V1"]["image_key"], geo["V2"]["image_key"]) == ("V1_full_image", "V2_full_image")
    assert geo["V1"]["image_shape"] == [400, 500]
    sd = SpatialData(images={"he_a": sd.images["V1_full_image"], "he_b": big}, shapes=dict(sd.shapes),
                     tables={"table": sd.tables["table"]})  # fmt: skip
    with pytest.warns(UserWarning, match=r"sections \['V1', 'V2'\] all use image 'he_b'.*pass image_keys"):
        scst.io.register_sections(sd)


def test_register_sections_image_of_a_section_whose_name_begins_another_ones():
    """Renaming the sections V1, V2 to S1, S1_rep2 gave S1 the image "S1_rep2_full_image" (it begins with "S1_"
    and is larger), so patches of S1 came from the other slide; each section now gets its own image, as with V1/V2."""
    import spatialdata

    a = _as_region(_visium_like(), "S1", "S1_full_image")
    big = Image2DModel.parse(
        np.zeros((3, 600, 700), np.uint8), dims=("c", "y", "x"), transformations={"global": Identity()}
    )
    b = _as_region(_visium_like(), "S1_rep2", "S1_rep2_full_image", image=big, prefix="b")
    sd = spatialdata.concatenate([a, b], concatenate_tables=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        scst.io.register_sections(sd)
    geo = sd.tables["table"].uns["scst"]["sections"]
    assert (geo["S1"]["image_key"], geo["S1_rep2"]["image_key"]) == ("S1_full_image", "S1_rep2_full_image")
    assert geo["S1"]["image_shape"] == [400, 500]


def test_concatenate_sections_of_registered_samples_makes_shared_obs_names_unique():
    """Two Visium samples registered one by one share their barcodes: concatenate_sections gave a table with
    duplicate obs names (anndata's generic warning only; obs-name lookups then hit both samples). Now every obs name
    is prefixed with its section, as read_st names spots, with a warning; values and sections are unchanged."""
    a, b = _visium_like(), _as_region(_visium_like(), "V2", "V2_full_image")
    for sd in (a, b):
        scst.io.register_sections(sd)
    with pytest.warns(UserWarning, match=r"sections share obs names \(e.g. \['spot0'"):
        t = scst.io.concatenate_sections([b, a]).tables["table"]
    assert t.obs_names.is_unique and t.obs_names[:2].tolist() == ["V2_spot0", "V2_spot1"]
    assert t.obs_names[-1] == f"V1_spot{a.tables['table'].n_obs - 1}"
    np.testing.assert_array_equal(
        t.X.toarray(), np.vstack([b.tables["table"].X.toarray(), a.tables["table"].X.toarray()])
    )


def test_concatenate_sections_refuses_two_objects_with_an_image_of_the_same_name():
    """Two samples whose images are both named "he": the combined object kept the second one only, and both
    sections' image_key "he" pointed at it (patches of the first section cut from the second slide, silently)."""
    a = _as_region(_visium_like(), "V1", "he")
    other = Image2DModel.parse(np.full((3, 400, 500), 7, np.uint8), dims=("c", "y", "x"),
                               transformations={"global": Identity()})  # fmt: skip
    b = _as_region(_visium_like(), "V2", "he", image=other, prefix="b")
    for sd in (a, b):
        scst.io.register_sections(sd)
    with pytest.raises(ValueError, match=r"sdatas: image element 'he' is in more than one object \(sections \['V2'\]"):
        scst.io.concatenate_sections([a, b])
    b.images["V2_he"] = b.images.pop("he")
    scst.io.register_sections(b, image_keys={"V2": "V2_he"})
    sd = scst.io.concatenate_sections([a, b])
    assert {k: g["image_key"] for k, g in sd.tables["table"].uns["scst"]["sections"].items()} == {
        "V1": "he",
        "V2": "V2_he",
    }


def test_register_sections_with_a_multiscale_image():
    """spatialdata-io's default layout with the hires image as a pyramid: its full-resolution level gives the image
    shape, the image is placed in 'global' through the shapes', and patches read from it hit the planted block."""
    sd = _visium_like(fullres=False)
    hires = np.asarray(sd.images["V1_hires_image"].values)
    sd.images["V1_hires_image"] = Image2DModel.parse(
        hires, dims=("c", "y", "x"), scale_factors=[2], transformations={"downscaled_hires": Identity()}
    )
    scst.io.register_sections(sd, spot_diameter_um=55.0)
    geo = sd.tables["table"].uns["scst"]["sections"]["V1"]
    assert geo["image_key"] == "V1_hires_image" and geo["image_shape"] == [100, 125]
    item = scst.pp.SpotPatchDataset(sd, size_um=40.0, normalize=None)[0]
    assert float(item["patch"].mean()) == pytest.approx(60 / 255, abs=1e-6)  # spot 0 on the planted block


def test_register_sections_refuses_shapes_without_radius():
    """Polygons (e.g. cell outlines) instead of spot circles: no spot size to derive µm/px from."""
    import geopandas as gpd
    from shapely.geometry import box

    sd = _visium_like()
    xy = sd.tables["table"].obsm["spatial"]
    polys = gpd.GeoDataFrame(geometry=[box(x - 20, y - 20, x + 20, y + 20) for x, y in xy])
    sd.shapes["V1"] = ShapesModel.parse(polys, transformations={"global": Identity()})
    with pytest.raises(ValueError, match=r"Shapes 'V1': expected circles with a 'radius' column"):
        scst.io.register_sections(sd)
