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


def _spot_sdata():
    """Two sections of random pixels: S1 (60 × 40 px, 1 µm/px, spots a, b) and S2 (50 × 50 px, 0.5 µm/px, spots
    c, d, e); counts in layers["raw"] (X holds other values), a boolean gene column and an obs column not copied."""
    from scipy import sparse

    rng = np.random.default_rng(0)
    shapes = {"S1": (40, 60), "S2": (50, 50)}
    ims = {f"{s}_image": Image2DModel.parse(rng.integers(0, 255, (3, *hw), dtype=np.uint8), dims=("c", "y", "x"),
                                            transformations={s: Identity()}) for s, hw in shapes.items()}  # fmt: skip
    raw = rng.poisson(4, (5, 4)).astype(np.float32)
    t = ad.AnnData(
        X=sparse.csr_matrix(raw[:, ::-1] + 1),
        obs=pd.DataFrame({"section": pd.Categorical(["S1", "S1", "S2", "S2", "S2"]), "label": list("xyxyx"),
                          "other": range(5)}, index=list("abcde")),
        var=pd.DataFrame({"hv": [True, False, True, False]}, index=["G0", "G1", "G2", "G3"]),
    )  # fmt: skip
    t.layers["raw"] = raw
    t.obsm["spatial"] = np.array([[10.0, 20.0], [30.0, 12.0], [20.0, 30.0], [35.0, 15.0], [12.0, 40.0]])
    upp = {"S1": 1.0, "S2": 0.5}
    geo = {s: {"image_key": f"{s}_image", "um_per_px": u, "coordinate_system": s} for s, u in upp.items()}
    t.uns["scst"] = {"sections": geo}
    return SpatialData(images=ims, tables={"table": t})


def test_bulk_to_mudata_suggests_stain_he_only_when_the_stain_is_dab_brown(monkeypatch):
    """The "passes no filter" error ended "On H&E use stain='he'" even when stain was already 'he'."""
    import scst.pp._tissue as tissue

    sdata, bulk = _slides()
    keep_none = lambda patches, preset, threshold=None: (np.zeros(len(patches)), np.zeros(len(patches), bool))  # noqa: E731
    monkeypatch.setattr(tissue, "filter_tiles", keep_none)
    for stain, hint in (("he", False), ("dab_brown", True)):
        with pytest.raises(ValueError, match=f"passes the {stain!r} filter") as err:
            scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=32, stain=stain, **TILE)
        assert ("use stain='he'" in str(err.value)) is hint


def test_to_mudata_on_one_section_with_a_gene_list_and_a_layer():
    """sections="S2" of two: its spots only, in both modalities; genes in the order given; counts from `layer`,
    normalised by their library over all genes; obs: the group keys and the section; each patch the 8 px window
    around its spot (x, y kept apart); the section's image key and µm/px."""
    from scipy import sparse

    sd = _spot_sdata()
    t = sd.tables["table"]
    mdata = scst.pp.to_mudata(sd, sections="S2", genes=["G2", "G0"], size_px=8, group_keys=("label",), layer="raw")
    rna, image = mdata["rna"], mdata["image"]
    assert list(rna.obs_names) == list(image.obs_names) == ["c", "d", "e"] == list(image.obs["rna_sample"])
    assert list(rna.var_names) == ["G2", "G0"] and list(rna.obs.columns) == ["section", "label"]
    raw = t.layers["raw"][2:]
    counts, logx = (sparse.csr_matrix(m).toarray() for m in (rna.layers["counts"], rna.X))
    np.testing.assert_array_equal(counts, raw[:, [2, 0]])
    np.testing.assert_allclose(logx, np.log1p(raw[:, [2, 0]] * 1e4 / raw.sum(1, keepdims=True)), rtol=1e-5)
    np.testing.assert_array_equal(rna.obsm["spatial"], t.obsm["spatial"][2:])
    np.testing.assert_array_equal(image.obs[["x", "y"]].to_numpy(), t.obsm["spatial"][2:])
    img = sd.images["S2_image"].values
    for i, (cx, cy) in enumerate(t.obsm["spatial"][2:].astype(int)):
        np.testing.assert_array_equal(image.obsm["patch"][i], img[:, cy - 4 : cy + 4, cx - 4 : cx + 4])
    assert list(image.obs["image_key"]) == ["S2_image"] * 3 and list(image.obs["size_px"]) == [8] * 3
    info = mdata.uns["scst_mudata"]
    assert info["patch_px"] == 8 and info["um_per_px"] == {"S2": 0.5} and info["group_keys"] == ["label"]
    # a boolean var column as the panel
    assert list(scst.pp.to_mudata(sd, genes="hv", size_px=8, layer="raw")["rna"].var_names) == ["G0", "G2"]


def test_to_mudata_windows_in_um_per_section_and_checks_counts_and_genes():
    """size_um=8: 8 px windows on S1 (1 µm/px), 16 px on S2 (0.5 µm/px), both resized to out_px=8; negative values
    and unknown genes are named errors."""
    sd = _spot_sdata()
    mdata = scst.pp.to_mudata(sd, sections=["S1", "S2"], size_um=8.0, out_px=8, layer="raw", group_keys=("section",))
    image = mdata["image"]
    assert image.n_obs == 5 and image.obsm["patch"].shape == (5, 3, 8, 8)
    assert list(image.obs["size_px"]) == [8, 8, 16, 16, 16]
    assert list(image.obs["image_key"]) == ["S1_image"] * 2 + ["S2_image"] * 3
    assert mdata.uns["scst_mudata"]["um_per_px"] == {"S1": 1.0, "S2": 0.5}
    sd.tables["table"].layers["neg"] = -sd.tables["table"].layers["raw"]
    with pytest.raises(ValueError, match="expected raw counts"):
        scst.pp.to_mudata(sd, size_px=8, layer="neg")
    with pytest.raises(KeyError, match=r"genes: 1 genes are not in var_names, e.g. \['NOPE'\]"):
        scst.pp.to_mudata(sd, size_px=8, genes=["G0", "NOPE"], layer="raw")


def test_to_mudata_without_a_window_cuts_and_records_80_um():
    """size_px=None and size_um=None: 80 µm windows (80 px on S1 at 1 µm/px, 160 px on S2 at 0.5 µm/px), and
    uns records size_um=80 (it said None, i.e. "given in px")."""
    sd = _spot_sdata()
    for s in ("S1", "S2"):  # images large enough for the windows
        big = np.random.default_rng(1).integers(0, 255, (3, 200, 200), dtype=np.uint8)
        sd.images[f"{s}_image"] = Image2DModel.parse(big, dims=("c", "y", "x"), transformations={s: Identity()})
    mdata = scst.pp.to_mudata(sd, size_px=None, size_um=None, out_px=8, layer="raw")
    assert list(mdata["image"].obs["size_px"]) == [80, 80, 160, 160, 160]
    assert mdata.uns["scst_mudata"]["size_um"] == 80.0


def _rect_slide():
    """A DAB-brown rectangle at rows 64:128, cols 64:184 of white glass: in 32 px tiles, 2 × 3 full tiles and two
    (column 5) three-quarters brown."""
    rng = np.random.default_rng(0)
    a = np.full((3, 256, 256), 245, dtype=np.uint8)
    hed = np.zeros((64, 120, 3))
    hed[..., 2] = rng.uniform(0.15, 0.3, size=(64, 120))
    a[:, 64:128, 64:184] = np.moveaxis((hed2rgb(hed) * 255).round().astype(np.uint8), -1, 0)
    ims = {"R_image": Image2DModel.parse(a, dims=("c", "y", "x"), transformations={"R": Identity()}),
           "W_image": Image2DModel.parse(np.full((3, 24, 300), 245, np.uint8), dims=("c", "y", "x"),
                                         transformations={"W": Identity()})}  # fmt: skip
    return SpatialData(images=ims)


def test_bulk_to_mudata_keeps_the_best_patches_with_their_own_scores_and_sample_labels():
    """Patches of a rectangle (not a square: x and y, columns and rows kept apart) linked to the second sample: its
    lineage (categorical) on every patch, each patch's own stain score; max_patches keeps the best-scoring, a
    threshold drops the three-quarter tiles; too narrow an image and unknown group keys are named errors."""
    from scst.pp import filter_tiles

    _, bulk = _slides()
    sd = _rect_slide()
    mdata = scst.pp.bulk_to_mudata(bulk, sd, {"R_image": "s2"}, um_per_px={"R_image": 1.0}, patch_px=32,
                                   group_keys=["lineage"], **TILE)  # fmt: skip
    image = mdata["image"]
    assert set(image.obs_names) == {f"R_image_{c}x{r}" for c in (2, 3, 4, 5) for r in (2, 3)}
    for name, x, y in zip(image.obs_names, image.obs["x"], image.obs["y"]):
        c, r = (int(v) for v in name.split("_")[-1].split("x"))
        assert (x, y) == (16 + 32 * c, 16 + 32 * r)
    assert (image.obs["lineage"] == "L2").all() and image.obs["lineage"].dtype == "category"
    assert image.obs["image_key"].dtype == "category" and list(mdata["rna"].obs["lineage"]) == ["L1", "L2"]
    np.testing.assert_allclose(image.obs["dab_fraction"], filter_tiles(image.obsm["patch"], preset="dab_brown")[0])
    np.testing.assert_allclose(image.obs["tissue_fraction"], filter_tiles(image.obsm["patch"], preset="he")[0])
    assert sorted(image.obs["dab_fraction"].round(2)) == [0.75, 0.75] + [1.0] * 6
    best = scst.pp.bulk_to_mudata(bulk, sd, {"R_image": "s2"}, um_per_px=1.0, patch_px=32, max_patches=6, **TILE)
    assert set(best["image"].obs["x"]) == {80.0, 112.0, 144.0}
    strict = scst.pp.bulk_to_mudata(bulk, sd, {"R_image": "s2"}, um_per_px=1.0, patch_px=32, threshold=0.8, **TILE)
    assert strict["image"].n_obs == 6 and (strict["image"].obs["dab_fraction"] > 0.9).all()
    with pytest.raises(ValueError, match=r"'W_image'\]: 24 × 300 px is smaller than one patch \(32 px\)"):
        scst.pp.bulk_to_mudata(bulk, sd, {"W_image": "s1"}, um_per_px=1.0, patch_px=32, **TILE)
    with pytest.raises(KeyError, match="group_keys"):
        scst.pp.bulk_to_mudata(bulk, sd, {"R_image": "s2"}, um_per_px=1.0, group_keys=["patient"], **TILE)


@pytest.mark.parametrize("max_patches", [None, 6, 2])
def test_bulk_to_mudata_scores_in_chunks_with_the_result_of_one_pass(monkeypatch, max_patches):
    """The tissue windows are read and scored a chunk at a time (only the best passing ones kept): any chunk size
    gives the same patches, in the same order (best first, ties by position), as all windows at once."""
    import scst.pp._mudata as mm

    _, bulk = _slides()
    sd = _rect_slide()

    def build(chunk):
        monkeypatch.setattr(mm, "_SCORE_CHUNK", chunk)
        return scst.pp.bulk_to_mudata(
            bulk, sd, {"R_image": "s2"}, um_per_px=1.0, patch_px=32, max_patches=max_patches, **TILE
        )["image"]

    whole, small = build(10_000), build(1)
    assert list(small.obs_names) == list(whole.obs_names) and len(whole) == (max_patches or 8)
    np.testing.assert_array_equal(small.obsm["patch"], whole.obsm["patch"])
    pd.testing.assert_frame_equal(small.obs, whole.obs)
    assert list(build(3).obs_names) == list(whole.obs_names)
    scores = whole.obs["dab_fraction"].to_numpy()
    assert (np.diff(scores) <= 0).all()  # best first


def test_group_keys_may_be_one_column_name():
    """group_keys="label" is the column "label" (not the columns "l", "a", "b", ...), in both builders."""
    mdata = scst.pp.to_mudata(_spot_sdata(), size_px=8, layer="raw", group_keys="label")
    assert list(mdata["rna"].obs.columns) == ["section", "label"] and mdata.uns["scst_mudata"]["group_keys"] == [
        "label"
    ]
    assert list(mdata["image"].obs["label"]) == list("xyxyx")
    sdata, bulk = _slides()
    mdata = scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=32, group_keys="lineage",
                                   **TILE)  # fmt: skip
    assert (mdata["image"].obs["lineage"] == "L1").all() and mdata.uns["scst_mudata"]["group_keys"] == ["lineage"]


def test_bulk_to_mudata_rejects_max_patches_that_is_no_positive_count():
    """max_patches=0 used to keep every patch (sliced as [:None]); 0, -1, 2.5 and True are errors."""
    sdata, bulk = _slides()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_patches: expected None"):
            scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=32, max_patches=bad, **TILE)


def test_bulk_to_mudata_images_sharing_a_coordinate_system_use_their_own_tissue_masks():
    """Two slides in the one coordinate system "global" (tissue in opposite corners) and a stored mask
    labels["global_tissue"] of slide A: slide B is tiled over its own tissue, not over A's mask (B's windows were
    A's tissue positions, all glass on B)."""
    rng = np.random.default_rng(0)

    def slide(r0):
        a = np.full((3, 256, 256), 245, dtype=np.uint8)
        a[:, r0 : r0 + 128, r0 : r0 + 128] = (
            np.array([150, 90, 170])[:, None, None] + rng.integers(-20, 20, (3, 128, 128))
        ).clip(0, 255)
        return Image2DModel.parse(a, dims=("c", "y", "x"))  # coordinate system "global"

    sd = SpatialData(images={"A_image": slide(0), "B_image": slide(128)})
    _, bulk = _slides()
    kw = {"um_per_px": 1.0, "patch_px": 32, "stain": "he", **TILE}
    scst.pp.tissue_mask(sd, "A_image", um_per_px=1.0, key_added="global_tissue", **TILE)
    obs = scst.pp.bulk_to_mudata(bulk, sd, {"A_image": "s1", "B_image": "s2"}, **kw)["image"].obs
    for key, lo in (("A_image", 16.0), ("B_image", 144.0)):  # tile centres over each slide's own 128 px square
        xy = obs.loc[obs["image_key"] == key, ["x", "y"]].to_numpy()
        assert len(xy) == 16 and xy.min() == lo and xy.max() == lo + 96


def test_bulk_to_mudata_names_a_bad_patch_px_and_a_missing_pixel_size():
    """patch_px=32.5 / True were reported as "size_px" (True after tiling the slide into 1 px windows); a per-image
    um_per_px without the image was a bare KeyError of the image key."""
    sdata, bulk = _slides()
    for bad in (32.5, True, np.nan, 0):
        with pytest.raises(ValueError, match="patch_px: expected a positive integer"):
            scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=bad, **TILE)
    with pytest.raises(KeyError, match=r"um_per_px: no pixel size for image\(s\) \['A_image'\]"):
        scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px={"B_image": 1.0}, patch_px=32, **TILE)
    ok = scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=np.int64(32), **TILE)
    assert ok["image"].obsm["patch"].shape == (16, 3, 32, 32) and type(ok.uns["scst_mudata"]["size_px"]) is int


def test_review_rgba_slides_give_rgb_patches_and_bad_bulk_arguments_are_named():
    """Review 2026-12-04: an RGBA slide (openslide's read_region) gave 4-channel patches that MultimodalST refuses;
    an empty image map, a zero or NaN pixel size and a blank slide gave errors about other things."""
    sdata, bulk = _slides()
    a = np.asarray(sdata.images["A_image"].data)
    rgba = np.concatenate([a, np.full((1, *a.shape[1:]), 255, np.uint8)])
    sdata.images["A_image"] = Image2DModel.parse(rgba, dims=("c", "y", "x"), transformations={"A": Identity()})
    mdata = scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=1.0, patch_px=32, **TILE)
    assert mdata["image"].obsm["patch"].shape == (16, 3, 32, 32)
    np.testing.assert_array_equal(mdata["image"].obsm["patch"][0], a[:, 64:96, 64:96])
    with pytest.raises(ValueError, match="image_to_sample: expected at least one image"):
        scst.pp.bulk_to_mudata(bulk, sdata, {}, um_per_px=1.0, **TILE)
    for bad in (0, float("nan"), -1.0, True, "a"):
        with pytest.raises(ValueError, match="um_per_px: expected a finite positive pixel size in µm"):
            scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=bad, **TILE)
    with pytest.raises(ValueError, match=r"um_per_px\['A_image'\]: expected a finite positive pixel size"):
        scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px={"A_image": 0.0}, **TILE)
    # a numpy float (e.g. read from an array) is a pixel size like a Python float: float32 was refused as "not positive"
    m32 = scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1"}, um_per_px=np.float32(1.0), patch_px=32, **TILE)
    np.testing.assert_array_equal(m32["image"].obsm["patch"], mdata["image"].obsm["patch"])
    blank = np.full((3, 256, 256), 245, np.uint8)
    sdata.images["W"] = Image2DModel.parse(blank, dims=("c", "y", "x"), transformations={"W_cs": Identity()})
    with pytest.raises(ValueError, match="bulk_to_mudata: image 'W': No grid point"):
        scst.pp.bulk_to_mudata(bulk, sdata, {"W": "s1"}, um_per_px=1.0, patch_px=32, **TILE)


def test_review_gene_groups_fallback_needs_two_genes():
    x = np.random.default_rng(0).poisson(3, (10, 1)).astype(np.float32)
    adata = ad.AnnData(X=x, var=pd.DataFrame(index=["G0"]))
    with pytest.raises(ValueError, match="genes: the kNN co-expression fallback .* needs at least 2; got 1"):
        scst.pp.gene_groups(adata, n_groups=1)


def _xy_slide(transformation, cs="global"):
    """A 96 × 160 px slide whose pixels encode their position (R = row, G = column, B = 7), the only image of
    coordinate system ``cs``; in 32 px tiles: 3 rows × 5 columns."""
    from spatialdata.transformations import Identity

    y, x = np.mgrid[0:96, 0:160]
    img = np.stack([y, x, np.full_like(y, 7)]).astype(np.uint8)
    el = Image2DModel.parse(img, dims=("c", "y", "x"), transformations={cs: transformation or Identity()})
    return img, SpatialData(images={"A": el})


def _transforms():
    from spatialdata.transformations import Scale, Sequence, Translation

    shift = Translation([100.0, 50.0], axes=("x", "y"))
    return {
        "translation": (shift, "global"),
        "um_scale": (Scale([0.5, 0.5], axes=("y", "x")), "global"),
        "scale_then_shift": (Sequence([Scale([2.0, 2.0], axes=("y", "x")), shift]), "global"),
        "cs_named_like_the_image": (shift, "A"),
    }


@pytest.mark.parametrize("case", list(_transforms()))
def test_bulk_to_mudata_tiles_an_image_in_its_own_pixels_wherever_it_is_placed(case):
    """An image alone in its coordinate system with a translation or a µm scale there was refused (tile_grid laid its
    grid out in the coordinate system; it worked only when another image shared it): now every image is tiled in its
    own pixels, so the patches hold the same pixels, with the same scores and centres, as the untransformed image."""
    _, bulk = _slides()
    kw = {"um_per_px": 0.5, "patch_px": 32, "stain": "he", "threshold": 0.0, "min_tissue": 0.0, **TILE}
    img, sd = _xy_slide(None)
    ref = scst.pp.bulk_to_mudata(bulk, sd, {"A": "s1"}, **kw)["image"]
    _, sd = _xy_slide(*_transforms()[case])
    image = scst.pp.bulk_to_mudata(bulk, sd, {"A": "s1"}, **kw)["image"]
    assert set(image.obs_names) == {f"A_{c}x{r}" for c in range(5) for r in range(3)}
    for name, x, y, patch in zip(image.obs_names, image.obs["x"], image.obs["y"], image.obsm["patch"]):
        c, r = (int(v) for v in name.split("_")[-1].split("x"))
        assert (x, y) == (16 + 32 * c, 16 + 32 * r)  # the image's pixels, not the coordinate system's
        np.testing.assert_array_equal(patch, img[:, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32])
    ref = ref[image.obs_names].copy()
    np.testing.assert_array_equal(image.obsm["patch"], ref.obsm["patch"])
    pd.testing.assert_frame_equal(image.obs, ref.obs)


def test_bulk_to_mudata_reads_the_stored_mask_of_a_translated_image():
    """A translated image alone in "global" is screened by labels["global_tissue"] (here: tissue on columns 64:160
    and rows 0:64 only, so 3 × 2 tiles); without it, by its own labels["A_tissue"] (columns 0:32: one column)."""
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import get_transformation

    _, bulk = _slides()
    t, cs = _transforms()["translation"]
    _, sd = _xy_slide(t, cs)
    kw = {"um_per_px": 1.0, "patch_px": 32, "stain": "he", "threshold": 0.0, "min_tissue": 0.5}

    def mask(rows, cols):  # at a quarter of the image's resolution, placed as the image is
        m = np.zeros((24, 40), np.uint8)
        m[rows, cols] = 1
        return Labels2DModel.parse(m, dims=("y", "x"), transformations={cs: get_transformation(sd.images["A"], cs)})

    sd.labels["global_tissue"] = mask(slice(0, 16), slice(16, 40))
    sd.labels["A_tissue"] = mask(slice(0, 24), slice(0, 8))
    obs = scst.pp.bulk_to_mudata(bulk, sd, {"A": "s1"}, **kw)["image"].obs
    assert set(obs.index) == {f"A_{c}x{r}" for c in (2, 3, 4) for r in (0, 1)}
    del sd.labels["global_tissue"]
    obs = scst.pp.bulk_to_mudata(bulk, sd, {"A": "s1"}, **kw)["image"].obs
    assert set(obs.index) == {f"A_0x{r}" for r in range(3)}


def test_to_mudata_refuses_grey_sections_and_bulk_an_unknown_image():
    sd = _spot_sdata()
    grey = np.zeros((1, 40, 60), np.uint8)
    sd.images["S1_image"] = Image2DModel.parse(grey, dims=("c", "y", "x"), transformations={"S1": Identity()})
    with pytest.raises(ValueError, match=r"sdata: expected an RGB image \(3 channels, or RGBA\), got 1 channel\(s\)"):
        scst.pp.to_mudata(sd, sections="S1", size_px=8)
    sdata, bulk = _slides()
    with pytest.raises(KeyError, match=r"image_to_sample: 1 image keys not in sdata.images, e.g. \['C_image'\]"):
        scst.pp.bulk_to_mudata(bulk, sdata, {"A_image": "s1", "C_image": "s2"}, um_per_px=1.0, **TILE)
