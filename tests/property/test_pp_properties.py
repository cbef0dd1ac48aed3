"""Property-based tests of ``scst.pp``: random shapes (0, 1 spot; 1 gene), NaN/inf, negative counts, duplicate
obs names, empty sections, sparse vs dense ``X``, tiny images and coordinates outside them.

Each call ends in a result whose invariants are checked (shapes, finiteness, planted answers) or in a clear error
naming the argument (``conftest.py``).
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity

import scst

FAST = settings(max_examples=100, deadline=None, derandomize=True)
SLOW = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
X_DAMAGE = (None, None, "nan", "inf", "negative", "fraction")
N_SPOTS = st.sampled_from([0, 1, 1, 2, 3, 5])  # 0 and 1 spot often, not always
SIDES = st.sampled_from([1, 2, 3, 5, 8, 13, 16, 24])  # image / window sides in px, tiny ones included


@st.composite
def tables(draw, max_obs=12, max_vars=6, damage=X_DAMAGE):
    """A random AnnData of raw counts with sections, coordinates, maybe one kind of damage in X."""
    n = draw(st.one_of(N_SPOTS, st.integers(4, max_obs)))
    g = draw(st.sampled_from([1, 1, *range(2, max_vars + 1)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.poisson(draw(st.sampled_from([0.3, 3.0])), size=(n, g)).astype(np.float32)
    kind = draw(st.sampled_from(damage))
    if n and kind is not None:
        X[rng.integers(n), rng.integers(g)] = {"nan": np.nan, "inf": np.inf, "negative": -2.0, "fraction": 0.5}[kind]
    n_sec = draw(st.integers(1, 3))
    sec = rng.integers(0, n_sec, n).astype(str)
    names = [f"s{i}" for i in range(n)]
    if n > 1 and draw(st.booleans()):
        names[-1] = names[0]
        kind = kind or "duplicate_obs"
    cats = sorted(set(sec)) + (["empty"] if draw(st.booleans()) else [])  # maybe a section without spots
    obs = pd.DataFrame({"section": pd.Categorical(sec, categories=cats)}, index=names)
    a = ad.AnnData(sparse.csr_matrix(X) if draw(st.booleans()) else X, obs=obs,
                   var=pd.DataFrame(index=[f"G{j}" for j in range(g)]))  # fmt: skip
    a.obsm["spatial"] = rng.uniform(0, 100, size=(n, 2))
    a.obsm["X_pca"] = rng.normal(size=(n, 3))
    return a, kind


def _bad_values(kind) -> bool:
    return kind in ("nan", "inf", "negative", "fraction")


# ------------------------------------------------------------------------------------------------ select_genes
@FAST
@given(case=tables(), n_top=st.integers(1, 8), min_fraction=st.floats(0.0, 1.0), by_section=st.booleans(),
       all_sections=st.booleans())  # fmt: skip
def test_select_genes(case, n_top, min_fraction, by_section, all_sections, contract):
    a, kind = case
    # sections=: every category, including an empty one when there is one (nothing to choose the panel from)
    chosen = list(a.obs["section"].cat.categories) if by_section and all_sections else None
    empty_chosen = chosen is not None and "empty" in chosen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sections without a variable gene: tested in test_regressions
        res = contract(
            f"select_genes: {kind or 'valid'}{' (0 spots)' if a.n_obs == 0 else ''}",
            lambda: scst.pp.select_genes(a, n_top, min_fraction, library_key="section" if by_section else None,
                                         sections=chosen, copy=True),  # fmt: skip
            "counts", "adata", "n_top", "min_fraction", "sections",
            expect_error=kind in ("nan", "inf", "negative", "fraction") or a.n_obs == 0 or empty_chosen,
        )  # fmt: skip
    if res is None:
        return
    X = a.X.toarray() if sparse.issparse(a.X) else a.X
    detected = (X > 0).mean(0)
    np.testing.assert_allclose(res.var["scst_detected_fraction"], detected)  # hand-computable
    keep = res.var["highly_variable_scst"].to_numpy()
    assert keep.dtype == bool and keep.shape == (a.n_vars,)
    assert (detected[keep] >= min_fraction).all()
    n_sections = a.obs["section"].nunique() if by_section else 1
    assert res.var["scst_hvg_sections"].between(0, n_sections).all()


# ------------------------------------------------------------------------------------------------ hypergraph
@FAST
@given(case=tables(damage=(None,)), k=st.integers(0, 4), coord_damage=st.sampled_from([None, None, None, "nan", "inf"]),
       by_section=st.booleans(), exact=st.sampled_from([None, True, False]))  # fmt: skip
def test_hypergraph(case, k, coord_damage, by_section, exact, contract):
    a, _ = case
    if a.n_obs and coord_damage:
        a.obsm["spatial"][0, 1] = np.nan if coord_damage == "nan" else np.inf
    sections = a.obs["section"].value_counts()
    smallest = int(sections[sections > 0].min()) if by_section and a.n_obs else a.n_obs
    res = contract(
        f"hypergraph: {coord_damage or 'valid'}{' (0 spots)' if a.n_obs == 0 else ''}",
        lambda: scst.pp.hypergraph(a, k=k, library_key="section" if by_section else None, exact=exact,
                                   n_candidates=4, copy=True),  # fmt: skip
        "k", "spatial", "use_rep", "adata",
        expect_error=bool(coord_damage and a.n_obs) or k < 1 or k > smallest,
    )  # fmt: skip
    if res is None:
        return
    H = res.obsp["hypergraph_incidence"].toarray()
    assert H.shape == (a.n_obs, a.n_obs) and set(np.unique(H)) <= {0.0, 1.0}
    np.testing.assert_array_equal(H.sum(0), k)  # every hyperedge holds k spots …
    np.testing.assert_array_equal(np.diag(H), 1)  # … its centre included
    if by_section:  # … of the centre's section only
        sec = a.obs["section"].to_numpy()
        i, e = np.nonzero(H)
        assert (sec[i] == sec[e]).all()


# ------------------------------------------------------------------------------------------------ graph matrices
@st.composite
def adjacencies(draw):
    n = draw(st.integers(0, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = (rng.random((n, n)) < draw(st.floats(0.0, 1.0))).astype(float)
    a = np.maximum(a, a.T)
    kind = draw(st.sampled_from([None, None, "weights", "nan", "negative", "asymmetric"]))
    if n and kind == "weights":
        a *= rng.uniform(0.1, 5, a.shape)
        a = np.maximum(a, a.T)
    elif n and kind == "nan":
        a[0, -1] = a[-1, 0] = np.nan
    elif n and kind == "negative":
        a[0, -1] = a[-1, 0] = -1.0
    elif n > 1 and kind == "asymmetric":
        a[0, 1], a[1, 0] = 1.0, 0.0
    return (sparse.csr_matrix(a) if draw(st.booleans()) else a), kind


@FAST
@given(case=adjacencies(), kind=st.sampled_from(list(scst.pp._graph_matrix.GRAPH_KINDS)))
def test_graph_matrix(case, kind, contract):
    adj, damage = case
    n = adj.shape[0]
    a = ad.AnnData(np.zeros((n, 1), np.float32))
    a.obsp["spatial_connectivities"] = sparse.csr_matrix(adj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # isolated cells / no edges / not symmetric: tested in tests/pp
        res = contract(
            f"graph_matrix: {damage or 'valid'}",
            lambda: scst.pp.graph_matrix(a, kind, copy=True),
            "adjacency", "spatial_connectivities",
            expect_error=damage in ("nan", "negative") and kind != "diagonal" and n > 0,
        )  # fmt: skip
    if res is None:
        return
    m = res.obsp[f"gcng_{scst.pp._graph_matrix.GRAPH_KINDS[kind]}"].toarray().astype(np.float64)
    assert m.shape == (n, n) and np.isfinite(m).all()
    if damage == "asymmetric" or n == 0:
        return
    b = (np.nan_to_num(np.asarray(sparse.csr_matrix(adj).toarray()), nan=1.0) != 0).astype(float)
    np.fill_diagonal(b, 0)
    np.testing.assert_allclose(m, m.T, atol=1e-6)
    ev = np.linalg.eigvalsh(m)
    if kind == "diagonal":
        np.testing.assert_array_equal(m, np.eye(n))
    elif kind == "laplacian":  # normalised Laplacian: spectrum in [0, 2]; known answer from the definition
        assert ev.min() > -1e-5 and ev.max() < 2 + 1e-5
        deg = b.sum(1)
        d = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
        np.testing.assert_allclose(m, np.eye(n) - d[:, None] * b * d[None], atol=1e-6)
    elif kind == "autocrine+":  # normalised adjacency with self-loops: spectrum in (-1, 1]
        assert ev.min() > -1 - 1e-5 and ev.max() < 1 + 1e-5


@settings(SLOW, max_examples=40)
@given(case=tables(damage=(None,)), radius=st.sampled_from([None, 0.0, -1.0, np.nan, 5.0, 40.0, 1e6]),
       coord_damage=st.sampled_from([None, None, "nan", "inf"]))  # fmt: skip
def test_cell_graph(case, radius, coord_damage, contract):
    a, kind = case
    if a.n_obs and coord_damage:
        a.obsm["spatial"][0, 0] = np.nan if coord_damage == "nan" else np.inf
    bad_radius = radius is None or not radius > 0
    res = contract(
        f"cell_graph: {coord_damage or ('bad radius' if bad_radius else 'valid')}",
        lambda: scst.pp.cell_graph(a, radius, copy=True),
        "radius", "spatial", "adata",
        expect_error=bad_radius or bool(coord_damage and a.n_obs) or a.n_obs == 0,
    )  # fmt: skip
    if res is None:
        return
    conn = res.obsp["spatial_connectivities"].toarray()
    xy, sec = a.obsm["spatial"], a.obs["section"].to_numpy()
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    want = (dist <= radius) & (sec[:, None] == sec[None]) & ~np.eye(a.n_obs, dtype=bool)
    np.testing.assert_array_equal(conn != 0, want)  # known answer: the radius graph within each section


# ------------------------------------------------------------------------------------------------ patches
@st.composite
def patch_inputs(draw):
    h, w = draw(SIDES), draw(SIDES)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    img = rng.integers(0, 200, size=(draw(st.sampled_from([1, 3])), h, w), dtype=np.uint8)
    n = draw(N_SPOTS)
    where = draw(st.sampled_from(["inside", "inside", "border", "far_edge", "outside", "nan"]))
    xy = rng.uniform(0, 1, (n, 2)) * [w, h]
    if n and where == "border":
        xy[0] = [[0, 0], [w - 1e-9, h - 1e-9], [w - 0.5, 0]][rng.integers(3)]
    elif n and where == "far_edge":  # x = w: past the last pixel, which covers [w - 1, w)
        xy[0] = [w, rng.uniform(0, h)]
    elif n and where == "outside":
        xy[0] = [w + 3, -2]
    elif n and where == "nan":
        xy[0, 0] = np.nan
    size_px = draw(SIDES)
    out_px = draw(st.sampled_from([None, 1, 5, 8]))
    padding = draw(st.sampled_from(["constant", "reflect"]))
    return img, xy, where, size_px, out_px, padding


@settings(FAST, max_examples=200)
@given(case=patch_inputs())
def test_spot_patches_from_arrays(case, contract):
    img, xy, where, size_px, out_px, padding = case
    _, h, w = img.shape
    ds = contract(
        f"SpotPatchDataset: centres {where}{' (0 spots)' if len(xy) == 0 else ''}",
        lambda: scst.pp.SpotPatchDataset.from_arrays(
            {"S": img}, xy, np.zeros(len(xy), int), None, size_px=size_px, out_px=out_px, padding=padding,
            normalize=None, counts=np.ones((len(xy), 2)),
        ),
        "centers", "size_px", "spots", "image",
        expect_error=len(xy) == 0 or where in ("far_edge", "outside", "nan") or size_px > min(h, w),
    )  # fmt: skip
    if ds is None:
        return
    p = out_px or size_px
    for i in range(len(ds)):
        item = ds[i]
        assert item["patch"].shape == (img.shape[0], p, p)
        assert np.isfinite(item["patch"].numpy()).all() and 0 <= item["patch"].min() and item["patch"].max() <= 1
        win = ds.window(i)
        assert win.shape == (img.shape[0], size_px, size_px)
        x0 = int(np.floor(xy[i, 0] - size_px / 2 + 0.5))
        y0 = int(np.floor(xy[i, 1] - size_px / 2 + 0.5))
        ya, yb, xa, xb = max(y0, 0), min(y0 + size_px, h), max(x0, 0), min(x0 + size_px, w)
        if ya < yb and xa < xb:  # known answer: the in-image part of the window is the image itself
            np.testing.assert_array_equal(win[:, ya - y0 : yb - y0, xa - x0 : xb - x0], img[:, ya:yb, xa:xb])
        if padding == "constant" and (ya > y0 or xa > x0 or yb < y0 + size_px or xb < x0 + size_px):
            assert win.max() == 255  # white padding (the image never reaches 255)


def _section(h, w, xy, upp=1.0, n_genes=2, duplicate=False):
    rng = np.random.default_rng(0)
    img = Image2DModel.parse(rng.integers(0, 200, (3, h, w), dtype=np.uint8), dims=("c", "y", "x"),
                             transformations={"S": Identity()})  # fmt: skip
    n = len(xy)
    t = ad.AnnData(sparse.csr_matrix(rng.poisson(3, (n, n_genes)).astype(np.int32)),
                   obs=pd.DataFrame({"section": pd.Categorical(["S"] * n)},
                                    index=[f"S_{min(i, 1) if duplicate else i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))  # fmt: skip
    t.obsm["spatial"] = np.asarray(xy, float)
    t.uns["scst"] = {"sections": {"S": {"image_key": "S_image", "um_per_px": upp, "coordinate_system": "S"}}}
    return SpatialData(images={"S_image": img}, tables={"table": t})


@settings(SLOW, max_examples=60)
@given(h=SIDES, w=SIDES, n=N_SPOTS, size_um=st.sampled_from([1.0, 4.0, 30.0]),
       seed=st.integers(0, 100), n_genes=st.integers(0, 2), duplicate=st.booleans(), by_name=st.booleans())  # fmt: skip
def test_extract_patches_and_to_mudata(h, w, n, size_um, seed, n_genes, duplicate, by_name, contract):
    xy = np.random.default_rng(seed).uniform(0, 1, (n, 2)) * [w, h]
    sd = _section(h, w, xy, n_genes=n_genes, duplicate=duplicate)
    dup = duplicate and n > 2
    names = list(sd.tables["table"].obs_names) if by_name else None
    too_big = round(size_um) > min(h, w)
    what = (
        "0 spots" if n == 0 else "patch larger than the image" if too_big else "duplicate obs names" if dup else "valid"
    )
    res = contract(
        f"extract_patches: {what}",
        lambda: scst.pp.extract_patches(sd, size_um=size_um, obs_subset=names),
        "spots", "size_um", "patch", "obs_subset",
        expect_error=n == 0 or too_big or (dup and by_name),
    )  # fmt: skip
    if res is not None:
        s = int(round(size_um))
        assert res["patches"].shape == (n, 3, s, s) and res["patches"].dtype == np.uint8
        assert res["counts"].shape == (n, n_genes) if n_genes else "counts" not in res
    md = contract(
        f"to_mudata: {what}",
        lambda: scst.pp.to_mudata(sd, size_um=size_um, group_keys=("section",)),
        "spots", "size_um", "patch", "obs_subset", "genes", "obs names",
        expect_error=n == 0 or too_big or n_genes == 0 or dup,
    )  # fmt: skip
    if md is not None:
        assert md["rna"].n_obs == md["image"].n_obs == n
        assert np.isfinite(md["rna"].X).all()
        assert (md["image"].obs["rna_sample"].to_numpy() == md["rna"].obs_names.to_numpy()).all()


# ------------------------------------------------------------------------------------------------ tiles, features
@st.composite
def tile_stacks(draw):
    n = draw(N_SPOTS)
    hw = (draw(SIDES), draw(SIDES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(["uint8", "float"]))
    x = rng.integers(0, 256, (n, 3, *hw)).astype(np.uint8) if dtype == "uint8" else rng.random((n, 3, *hw))
    kind = draw(st.sampled_from([None, None, "channels_last", "nan", "inf", "out_of_range", "two_channels"]))
    if kind == "channels_last":
        x = np.moveaxis(x, 1, -1)
    elif kind == "two_channels":
        x = x[:, :2]
    elif n and dtype == "float" and kind in ("nan", "inf", "out_of_range"):
        x[0, 0, 0, 0] = {"nan": np.nan, "inf": np.inf, "out_of_range": 3.0}[kind]
    else:
        kind = None if kind in ("nan", "inf", "out_of_range") else kind
    return x, kind


@FAST
@given(case=tile_stacks(), preset=st.sampled_from(["he", "dab_brown"]))
def test_filter_tiles(case, preset, contract):
    x, kind = case
    no_rgb = kind == "two_channels" and x.shape[-1] != 3  # (n, 2, h, 3) reads as channels last: valid
    res = contract(
        f"filter_tiles: {kind or 'valid'}",
        lambda: scst.pp.filter_tiles(x, preset=preset),
        "tiles",
        expect_error=len(x) > 0 and (kind in ("nan", "inf", "out_of_range") or no_rgb),
    )  # fmt: skip
    if res is None:
        return
    frac, keep = res
    assert frac.shape == keep.shape == (len(x),) and np.isfinite(frac).all() and ((0 <= frac) & (frac <= 1)).all()
    if len(x) and preset == "he":  # known answer: white tiles hold no tissue, dark purple ones are all tissue
        white = np.full((1, 3, 4, 4), 255, np.uint8)
        purple = np.broadcast_to(np.array([120, 60, 140], np.uint8)[None, :, None, None], (1, 3, 4, 4))
        assert scst.pp.filter_tiles(np.concatenate([white, purple]))[0].tolist() == [0.0, 1.0]


@settings(SLOW, max_examples=60)
@given(case=tile_stacks())
def test_handcrafted_features(case, contract):
    x, kind = case
    wrong_layout = x.shape[1] != 3  # channels last (unless the tile is 3 px high) or 2 channels
    res = contract(
        f"handcrafted_features: {kind or 'valid'}",
        lambda: scst.pp.handcrafted_features(x),
        "patches",
        expect_error=(kind in ("nan", "inf", "out_of_range") and len(x) > 0) or wrong_layout or min(x.shape[2:]) < 3,
    )  # fmt: skip
    if res is None:
        return
    assert res.shape == (len(x), len(scst.pp.handcrafted_feature_names())) and np.isfinite(res).all()


@SLOW
@given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 100), fill=st.sampled_from(["noise", "flat"]),
       spacing_um=st.sampled_from([1.0, 8.0, 100.0]), min_tissue=st.sampled_from([0.0, 0.5]))  # fmt: skip
def test_tissue_mask_and_tile_grid_on_small_images(h, w, seed, fill, spacing_um, min_tissue, contract):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8) if fill == "noise" else np.full((3, h, w), 200, np.uint8)
    sd = SpatialData(
        images={"S_image": Image2DModel.parse(img, dims=("c", "y", "x"), transformations={"S": Identity()})}
    )
    mask = contract(
        f"tissue_mask: {fill} {'≤ 2 px' if min(h, w) <= 2 else 'image'}",
        lambda: scst.pp.tissue_mask(sd, "S_image", um_per_px=1.0, inplace=False),
        "image",
    )  # fmt: skip
    if mask is not None:
        assert mask.ndim == 2 and mask.shape[0] <= h and mask.shape[1] <= w  # a pyramid level of the image
        assert set(np.unique(mask.values)) <= {0, 1}
        sd.labels["S_tissue"] = mask
        res = contract(
            "tile_grid: small image",
            lambda: scst.pp.tile_grid(sd, "S", spacing_um=spacing_um, size_um=4.0, min_tissue=min_tissue,
                                      image_key="S_image", um_per_px=1.0, inplace=False),  # fmt: skip
            "tissue", "image", "spacing_um",
        )  # fmt: skip
        if res is not None:
            table, _ = res
            xy = table.obsm["spatial"]
            assert len(xy) >= 1 and np.isfinite(xy).all()
            assert ((xy >= 0) & (xy <= [w, h])).all()
            assert (table.obs["tissue_fraction"] >= min_tissue).all()


# ------------------------------------------------------------------------------------------------ gene groups
@settings(SLOW, max_examples=60)
@given(case=tables(max_obs=10, max_vars=12), n_groups=st.sampled_from([None, 1, 2, 3, 7]),
       network=st.sampled_from([None, "random", "empty", "foreign"]), seed=st.integers(0, 50))  # fmt: skip
def test_gene_groups(case, n_groups, network, seed, contract):
    a, kind = case
    genes = list(a.var_names)
    rng = np.random.default_rng(seed)
    edges = {
        None: None,
        "random": [(genes[i], genes[j]) for i, j in rng.integers(0, len(genes), (6, 2))],
        "empty": [],
        "foreign": [("X1", "X2"), ("X2", "X3")],
    }[network]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few clusters / genes absent from the network: documented
        res = contract(
            f"gene_groups: network {network}, X {kind or 'valid'}",
            lambda: scst.pp.gene_groups(a, edges, n_groups=n_groups, copy=True),
            "network", "n_groups", "genes", "adata", "counts",
            expect_error=(n_groups or 0) > len(genes),
        )  # fmt: skip
    if res is None:
        return
    grp = res.var["gene_group"].to_numpy()
    assert grp.shape == (len(genes),) and grp.min() >= -1
    sizes = res.uns["gene_group"]["sizes"]
    assert sorted(set(grp[grp >= 0])) == list(range(len(sizes)))
    assert [int((grp == i).sum()) for i in range(len(sizes))] == sizes
    if n_groups is not None:
        assert len(sizes) <= n_groups


def test_contract_rejects_an_unclear_error(contract):
    """The checker itself: an error that does not name the argument fails, as does a RuntimeWarning."""
    with pytest.raises(AssertionError, match="does not name"):
        contract("self-test", lambda: np.zeros(0).min(), "counts")
    with pytest.raises(RuntimeWarning):
        contract("self-test", lambda: np.log(np.zeros(1)), "counts")
    with pytest.raises(IndexError):
        contract("self-test", lambda: [][1], "counts")
