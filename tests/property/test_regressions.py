"""Regression tests for the bugs the property tests found (one plain test per bug, with a known answer)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity

import scst
from scst.io import read_st, register_sections

SPOTS = pd.DataFrame(
    {"x": [1, 2, 1, 2], "y": [1, 1, 2, 2], "pixel_x": [10.0, 30, 10, 30], "pixel_y": [15.0, 15, 35, 35]}
)
COUNTS = pd.DataFrame([[0, 3], [1, 0], [5, 2], [0, 0]], index=["1x1", "2x1", "1x2", "2x2"], columns=["A", "B"])


# ------------------------------------------------------------------------------------------------ io
@pytest.mark.parametrize(
    ("value", "match"), [(np.inf, "counts: infinite"), (2.0**40, "counts: values up to .* exceed the int32 range")]
)
def test_read_st_refuses_counts_that_int32_cannot_hold(value, match):
    # Before: inf was cast to INT_MIN and 2**40 wrapped around to 0, silently.
    counts = COUNTS.astype(float)
    counts.iloc[1, 0] = value
    with pytest.raises(ValueError, match=match):
        read_st(counts, SPOTS, None, sample="S")


def test_read_st_refuses_nan_spot_centres():
    # Before: a NaN centre was read as a spot at NaN (NaN is never "outside the image").
    spots = SPOTS.copy()
    spots.loc[2, "pixel_x"] = np.nan
    with pytest.raises(ValueError, match=r"spots: pixel columns \['pixel_x', 'pixel_y'\] must hold finite numbers"):
        read_st(COUNTS, spots, None, sample="S", um_per_px=1.0)


def test_read_st_refuses_an_image_smaller_than_the_pyramid(tmp_path):
    # Before: spatialdata's "Scale factor 2 is incompatible with image shape (3, 40, 8)" from deep in the conversion.
    Image.fromarray(np.zeros((40, 8, 3), np.uint8)).save(tmp_path / "he.png")
    with pytest.raises(ValueError, match=r"image: .* is 8 × 40 px; .* needs at least 16 px per side"):
        read_st(COUNTS, SPOTS, tmp_path / "he.png", sample="S", cache_dir=tmp_path / "c")
    assert not any((tmp_path / "c").glob("*.zarr"))  # nothing half-written


def test_read_st_one_spot_needs_um_per_px_without_numpy_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # before: numpy's "Mean of empty slice" first
        with pytest.raises(ValueError, match="um_per_px: cannot derive the pixel size"):
            read_st(COUNTS.iloc[:1], SPOTS.iloc[:1], None, sample="S")
        sd = read_st(COUNTS.iloc[:1], SPOTS.iloc[:1], None, sample="S", um_per_px=2.0)
    assert sd.tables["table"].uns["scst"]["sections"]["S"]["spot_diameter_px"] == pytest.approx(50.0)


def _circles(radius, spatial=True):
    xy = np.array([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0]])
    obs = pd.DataFrame({"region": pd.Categorical(["V1"] * 3), "spot_id": np.arange(3)}, index=["a", "b", "c"])
    t = ad.AnnData(sparse.csr_matrix(np.ones((3, 2), np.int32)), obs=obs)
    if spatial:
        t.obsm["spatial"] = xy
    t = TableModel.parse(t, region="V1", region_key="region", instance_key="spot_id")
    sd = SpatialData(
        shapes={"V1": ShapesModel.parse(xy, geometry=0, radius=np.ones(3), transformations={"global": Identity()})},
        tables={"table": t},
    )
    sd.shapes["V1"]["radius"] = radius
    return sd


@pytest.mark.parametrize("radius", [0.0, -2.0, np.nan, np.inf])
def test_register_sections_refuses_bad_radii(radius):
    # Before: radius 0 → ZeroDivisionError; NaN/inf → µm/px NaN or 0, silently.
    with pytest.raises(ValueError, match="'radius' column must hold positive finite spot radii"):
        register_sections(_circles(radius))
    sd = _circles(20.0)
    register_sections(sd, spot_diameter_um=55.0)
    assert sd.tables["table"].uns["scst"]["sections"]["V1"]["um_per_px"] == pytest.approx(55.0 / 40.0)


def test_register_sections_without_centres_leaves_the_table_untouched():
    sd = _circles(20.0, spatial=False)
    with pytest.raises(KeyError, match="obsm\\['spatial'\\]"):
        register_sections(sd)
    t = sd.tables["table"]
    assert "section" not in t.obs and "scst" not in t.uns  # before: obs["section"] was written, then the error


# ------------------------------------------------------------------------------------------------ pp
def _table(X, sections=None, xy=None):
    n = len(X)
    obs = pd.DataFrame({"section": pd.Categorical(sections or ["S"] * n)}, index=[f"s{i}" for i in range(n)])
    a = ad.AnnData(np.asarray(X, np.float32), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(len(X[0]))]))
    a.obsm["spatial"] = np.asarray(xy if xy is not None else np.arange(2 * n).reshape(n, 2), float)
    return a


def test_select_genes_zero_spots_and_non_finite_counts():
    with pytest.raises(ValueError, match=r"adata: no spots"):  # before: numpy's "zero-size array to reduction"
        scst.pp.select_genes(_table([[1.0, 2.0]])[:0].copy())
    for bad in (np.nan, np.inf):  # before: scanpy's "Input contains NaN" / "Bin edges must be unique"
        with pytest.raises(ValueError, match="NaN or infinite"):
            scst.pp.select_genes(_table([[1.0, bad], [2.0, 3.0]]))


def test_select_genes_sections_without_a_variable_gene():
    # Section A: one spot; section B: gene G0 varies (0, 10, 0, 10 of 10 counts), G1 and G2 constant shares.
    # Before: scanpy's IndexError ("index -1 is out of bounds") for A. Now A contributes nothing, with a warning.
    X = [[5, 5, 5], [0, 5, 5], [10, 5, 5], [0, 5, 5], [10, 5, 5]]
    a = _table(X, sections=["A", "B", "B", "B", "B"])
    with pytest.warns(UserWarning, match=r"section\(s\) \['A'\]"):
        scst.pp.select_genes(a, n_top=1, min_fraction=0.0)
    assert a.var["scst_hvg_sections"].tolist() == [1, 0, 0]
    assert a.var["highly_variable_scst"].tolist() == [True, False, False]
    one_gene = _table([[1.0], [2.0], [3.0]])  # after normalisation every spot holds the same single gene
    with pytest.warns(UserWarning, match="no gene has a defined normalised dispersion"):
        scst.pp.select_genes(one_gene, min_fraction=0.0)
    assert not one_gene.var["highly_variable_scst"].any()


def test_hypergraph_and_cell_graph_refuse_nan_coordinates_and_empty_tables():
    xy = [[0.0, 0.0], [1.0, np.nan], [2.0, 0.0]]
    a = _table([[1.0], [2.0], [3.0]], xy=xy)
    a.obsm["X_pca"] = np.eye(3)
    # Before: "`positions` contains NaN" (not naming the key) / scikit-learn's "Input X contains NaN".
    with pytest.raises(ValueError, match=r"adata.obsm\['spatial'\] \(argument `spatial_key`\)"):
        scst.pp.hypergraph(a, k=2)
    with pytest.raises(ValueError, match=r"adata.obsm\['spatial'\] \(argument `spatial_key`\): 1 cell"):
        scst.pp.cell_graph(a, radius=5.0)
    empty = a[:0].copy()
    with pytest.raises(ValueError, match="adata: no spots"):  # before: "need at least one array to concatenate"
        scst.pp.hypergraph(empty, k=1)
    with pytest.raises(ValueError, match="adata: no cells"):
        scst.pp.cell_graph(empty, radius=5.0)


def test_graph_matrix_refuses_nan_adjacency():
    a = _table([[1.0], [2.0]])
    a.obsp["spatial_connectivities"] = sparse.csr_matrix(np.array([[0.0, np.nan], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="NaN or infinite entries"):  # before: NaN read as an edge
        scst.pp.graph_matrix(a, "laplacian")


def test_filter_tiles_refuses_nan_tiles():
    tiles = np.full((2, 3, 4, 4), 0.5)
    tiles[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="tiles: float tiles hold NaN"):  # before: NaN pixels scored as background
        scst.pp.filter_tiles(tiles)


def test_tissue_mask_on_an_image_smaller_than_the_coarsening():
    # 5 × 6 px at 1 µm/px: "auto" coarsens by 8 to reach 8 µm/px; before: a 0 × 0 level and ZeroDivisionError.
    img = np.full((3, 5, 6), 240, np.uint8)
    img[:, 1:4, 1:5] = [[[150]], [[80]], [[170]]]
    sd = SpatialData(images={"I": Image2DModel.parse(img, dims=("c", "y", "x"), transformations={"S": Identity()})})
    mask = scst.pp.tissue_mask(sd, "I", um_per_px=1.0, inplace=False)
    assert mask.shape == (1, 1)  # coarsened by 5 (the shorter side), not to nothing


def test_gene_groups_one_group_holds_every_gene():
    a = _table(np.random.default_rng(0).poisson(3, (6, 4)).tolist())
    # G3 is not in the network: before, n_groups=1 gave 2 groups (the network's and the unlinked genes').
    scst.pp.gene_groups(a, [("G0", "G1"), ("G1", "G2")], n_groups=1)
    assert a.var["gene_group"].tolist() == [0, 0, 0, 0] and a.uns["gene_group"]["sizes"] == [4]
    with pytest.raises(ValueError, match="adata: the kNN co-expression fallback .* got 1 spot"):
        scst.pp.gene_groups(a[:1].copy(), None, n_groups=2)  # before: groups from an all-zero correlation


def test_patch_centre_on_the_far_image_edge_is_outside():
    # Before: x = w was accepted; an odd window there lies wholly outside and reflect padding failed in numpy
    # ("can't extend empty axis").
    img = np.arange(75, dtype=np.uint8).reshape(3, 5, 5)
    kw = {"size_px": 1, "padding": "reflect", "normalize": None}
    with pytest.raises(ValueError, match="centers: 1 spot"):
        scst.pp.SpotPatchDataset.from_arrays({"S": img}, [[5.0, 2.0]], [0], None, **kw)
    ds = scst.pp.SpotPatchDataset.from_arrays({"S": img}, [[4.99, 2.0]], [0], None, **kw)
    np.testing.assert_array_equal(ds.window(0)[:, 0, 0], img[:, 2, 4])  # the last pixel of row 2


def test_cell_graph_with_an_empty_section():
    # Section "B" is a category without cells; before: scikit-learn's "Found array with 0 sample(s)" from squidpy.
    a = _table([[1.0], [2.0], [3.0]], xy=[[0.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    a.obs["section"] = pd.Categorical(["A", "A", "A"], categories=["A", "B"])
    scst.pp.cell_graph(a, radius=5.0)
    assert a.obsp["spatial_connectivities"].toarray().astype(bool).tolist() == [
        [False, True, False],
        [True, False, False],
        [False, False, False],
    ]


def test_gene_groups_fallback_refuses_infinite_counts():
    a = _table([[1.0, 2.0, 3.0], [2.0, np.inf, 1.0], [0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="adata: NaN or infinite"):  # before: inf × 0 = NaN correlations
        scst.pp.gene_groups(a, None, n_groups=2)


def test_patch_subsets_by_name_and_to_mudata_need_unique_obs_names():
    img = Image2DModel.parse(np.zeros((3, 20, 20), np.uint8), dims=("c", "y", "x"), transformations={"S": Identity()})
    t = ad.AnnData(
        np.ones((3, 2), np.float32), obs=pd.DataFrame({"section": pd.Categorical(["S"] * 3)}, index=list("aab"))
    )
    t.obsm["spatial"] = np.array([[5.0, 5], [10, 10], [15, 15]])
    t.uns["scst"] = {"sections": {"S": {"image_key": "S_image", "um_per_px": 1.0, "coordinate_system": "S"}}}
    sd = SpatialData(images={"S_image": img}, tables={"table": t})
    # Before: pandas' InvalidIndexError ("Reindexing only valid with uniquely valued Index objects").
    with pytest.raises(ValueError, match="obs_subset: obs names are not unique"):
        scst.pp.SpotPatchDataset(sd, obs_subset=["b"], size_px=4)
    assert len(scst.pp.SpotPatchDataset(sd, obs_subset=[2], size_px=4)) == 1  # positions stay fine
    with pytest.raises(ValueError, match=r"duplicate obs names, e.g. \['a'\]"):  # before: an ambiguous link
        scst.pp.to_mudata(sd, size_px=4, group_keys=("section",))


def test_concatenate_sections_without_a_common_gene_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read_st(COUNTS[["A"]], SPOTS, None, sample="S1", um_per_px=1.0)
        b = read_st(COUNTS[["B"]], SPOTS, None, sample="S2", um_per_px=1.0)
    with pytest.warns(UserWarning, match="no gene is measured in every section"):  # before: 0 genes, silently
        t = scst.io.concatenate_sections([a, b]).tables["table"]
    assert t.shape == (8, 0)
    outer = scst.io.concatenate_sections([a, b], join="outer").tables["table"]
    assert sorted(outer.var_names) == ["A", "B"] and outer[:4, "A"].X.toarray().ravel().tolist() == [0, 1, 5, 0]
