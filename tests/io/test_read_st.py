import warnings

import numpy as np
import pandas as pd
import pytest
import squidpy as sq
from PIL import Image

import scst
from scst.io import concatenate_sections, read_st

# From ../shared/data/her2st/README.md ("Verified numbers").
README = {
    "C2": (187, 9274, 9911), "C3": (180, 9270, 9936), "C4": (184, 9278, 9916),
    "C5": (181, 9272, 9901), "C6": (178, 9288, 9907),
}  # fmt: skip


def test_her2st_shapes_match_readme(her2st_sdata):
    t = her2st_sdata.tables["table"]
    assert t.n_vars == 14382  # genes common to C2-C6
    assert t.X.dtype == np.int32 and t.X.format == "csr"
    for s, (n, w, h) in README.items():
        assert (t.obs["section"] == s).sum() == n
        geo = t.uns["scst"]["sections"][s]
        assert geo["image_shape"] == [h, w]
        assert 0.68 < geo["um_per_px"] < 0.70  # ≈ 290 px per 200 µm
        assert 143 < geo["spot_diameter_px"] < 147
        img = her2st_sdata.images[geo["image_key"]]
        assert tuple(img["scale0"]["image"].shape) == (3, h, w)
        shapes = her2st_sdata.shapes[geo["shapes_key"]]
        assert len(shapes) == n and np.allclose(shapes["radius"], geo["spot_diameter_px"] / 2)
    # Raw counts of one hand-checked entry: spot 10x21 of C2 has ISG15 = 1 in counts.tsv.gz.
    assert t["C2_10x21", "ISG15"].X.toarray().item() == 1
    assert set(t.obs["array_col"].astype(str) + "x" + t.obs["array_row"].astype(str)) == set(t.obs["spot_id"])


def test_her2st_images_are_lazy(her2st_sdata):
    import dask.array as da

    arr = her2st_sdata.images["C2_image"]["scale0"]["image"].data
    assert isinstance(arr, da.Array) and arr.chunksize[1] <= 1024


def test_spots_fall_on_tissue(her2st_sdata):
    """As the data README's check: grey under each spot (68 px disk) vs pixels > 2 pitches from any spot."""
    from scipy import ndimage

    t = her2st_sdata.tables["table"]
    for s in README:
        geo = t.uns["scst"]["sections"][s]
        low = her2st_sdata.images[geo["image_key"]]["scale3"]["image"].data.compute().mean(0)  # 1/8 resolution
        xy = np.round(t.obsm["spatial"][(t.obs["section"] == s).to_numpy()] / 8).astype(int)
        yy, xx = np.mgrid[-8:9, -8:9]
        disk = yy**2 + xx**2 <= 8.5**2  # 68 px at full resolution
        under = np.array([low[y - 8 : y + 9, x - 8 : x + 9][disk].mean() for x, y in xy])
        seeds = np.ones_like(low, dtype=bool)
        seeds[xy[:, 1], xy[:, 0]] = False
        background = low[ndimage.distance_transform_edt(seeds) > 2 * 290 / 8].mean()
        assert (under < background).all(), s
        assert under.mean() < background - 60  # README: ~135-141 under spots vs ~219-240 background


def test_grid_graph_has_no_false_edges(her2st_counts):
    a = her2st_counts.copy()
    sq.gr.spatial_neighbors_grid(a, spatial_key="spatial_array", n_neighs=4, library_key="section", key_added="grid")
    g = a.obsp["grid_connectivities"].tocoo()
    r, c, s = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy(), a.obs["section"].to_numpy()
    assert (np.abs(r[g.row] - r[g.col]) + np.abs(c[g.row] - c[g.col]) == 1).all()
    assert (s[g.row] == s[g.col]).all()
    # Hand-checked: in C2, spot 10x21 (col 10, row 21) has grid neighbours 11x21 and 10x22 only
    # (9x21 and 10x20 are not under tissue).
    i = a.obs_names.get_loc("C2_10x21")
    nbrs = set(a.obs_names[a.obsp["grid_connectivities"][i].indices])
    assert nbrs == {"C2_11x21", "C2_10x22"}


def _triple(tmp_path, *, n_img=(100, 120)):
    """4 spots with counts on a 20 px grid (200 µm per step → 10 µm/px), 1 extra spot without counts."""
    spots = pd.DataFrame({"x": [1, 2, 1, 2, 3], "y": [1, 1, 2, 2, 2]})
    spots["pixel_x"] = 10.0 + (spots["x"] - 1) * 20
    spots["pixel_y"] = 15.0 + (spots["y"] - 1) * 20
    spots["selected"] = 1
    counts = pd.DataFrame([[0, 3], [1, 0], [5, 2], [0, 0]], index=["1x1", "2x1", "1x2", "2x2"], columns=["A", "B"])
    h, w = n_img
    img = np.full((h, w, 3), 240, np.uint8)
    img[10:50, 0:60] = 80  # "tissue"
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    counts.to_csv(tmp_path / "counts.tsv", sep="\t")
    Image.fromarray(img).save(tmp_path / "he.png")
    return tmp_path / "counts.tsv", tmp_path / "spots.tsv", tmp_path / "he.png"


def test_read_st_synthetic(tmp_path):
    c, s, i = _triple(tmp_path)
    with pytest.warns(UserWarning, match="dropped 1 spot"):
        sd = read_st(c, s, i, sample="S1", cache_dir=tmp_path / "cache")
    t = sd.tables["table"]
    assert list(t.obs_names) == ["S1_1x1", "S1_2x1", "S1_1x2", "S1_2x2"]
    np.testing.assert_array_equal(t.X.toarray(), [[0, 3], [1, 0], [5, 2], [0, 0]])
    np.testing.assert_allclose(t.obsm["spatial"], [[10, 15], [30, 15], [10, 35], [30, 35]])
    np.testing.assert_array_equal(t.obs["array_row"], [1, 1, 2, 2])
    geo = t.uns["scst"]["sections"]["S1"]
    assert geo["um_per_px"] == pytest.approx(10.0) and geo["spot_diameter_px"] == pytest.approx(10.0)
    np.testing.assert_array_equal(sd.images["S1_image"]["scale0"]["image"].values[:, 20, 5], [80, 80, 80])
    # The cache is reused: a second read does not convert again.
    # Besides the store only its lock file (kept: removing it while another process waits on it would be a race).
    stores = sorted((tmp_path / "cache").iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_st(c, s, i, sample="S1", cache_dir=tmp_path / "cache")
    assert sorted((tmp_path / "cache").iterdir()) == stores and len(stores) == 2
    assert stores[0].name == f".{stores[1].name}.lock" and stores[0].is_file()


def test_read_st_explicit_scale_and_no_image(tmp_path):
    c, s, _ = _triple(tmp_path)
    with pytest.warns(UserWarning):
        sd = read_st(c, s, None, sample="S", um_per_px=2.0)
    assert sd.images == {} or len(sd.images) == 0
    assert sd.tables["table"].uns["scst"]["sections"]["S"]["spot_diameter_px"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c, s: c.assign(A=c["A"].astype(str) + "x"), "non-numeric"),
        (lambda c, s: c.assign(A=-c["A"] - 1), "negative"),
        (lambda c, s: c.assign(A=c["A"] + 0.5), "non-integer"),
        (lambda c, s: pd.concat([c, c.iloc[:1]]), "duplicate spot ids"),
        (lambda c, s: c.set_axis([f"9{i}x9" for i in range(len(c))]), "No spot of counts matches"),
    ],
)
def test_read_st_bad_counts(tmp_path, edit, match):
    c, s, i = _triple(tmp_path)
    counts = pd.read_csv(c, sep="\t", index_col=0)
    with pytest.raises(ValueError, match=match):
        read_st(edit(counts, s), s, i, sample="S")


def test_read_st_bad_spots_and_files(tmp_path):
    c, s, i = _triple(tmp_path)
    spots = pd.read_csv(s, sep="\t")
    with pytest.raises(ValueError, match="duplicate spot ids"):
        read_st(c, pd.concat([spots, spots.iloc[:1]]), i, sample="S")
    far = spots.assign(pixel_x=spots["pixel_x"] + 1000)
    with pytest.raises(ValueError, match="outside the 120 × 100 px image"), pytest.warns(UserWarning):
        read_st(c, far, i, sample="S", cache_dir=tmp_path / "cache")
    with pytest.raises(KeyError, match="pixel_x"):
        read_st(c, spots.drop(columns="pixel_x"), i, sample="S")
    with pytest.raises(FileNotFoundError, match="counts"):
        read_st(tmp_path / "nope.tsv", s, i, sample="S")
    with pytest.raises(FileNotFoundError, match=r"spots: file .*nope_spots.tsv does not exist"):
        read_st(c, tmp_path / "nope_spots.tsv", i, sample="S")
    with pytest.raises(FileNotFoundError, match="image"), pytest.warns(UserWarning):
        read_st(c, s, tmp_path / "nope.png", sample="S")


@pytest.mark.parametrize("value", [np.nan, "yes", 2])
def test_read_st_selected_column_must_hold_0_or_1(tmp_path, value):
    # a missing 'selected' value raised pandas' bare IntCastingNaNError; other values were silently dropped
    c, s, i = _triple(tmp_path)
    spots = pd.read_csv(s, sep="\t")
    spots["selected"] = spots["selected"].astype(object)
    spots.loc[2, "selected"] = value
    spots.to_csv(s, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"spots \(.*spots.tsv\): column 'selected' must hold 0 or 1.*1 row"):
        read_st(c, s, None, sample="S")
    with pytest.raises(ValueError, match=r"^spots: column 'selected' must hold 0 or 1"):
        read_st(c, spots, None, sample="S")
    # 0/1 as floats or booleans select as before
    spots["selected"] = [True, True, False, True, True]
    with pytest.warns(UserWarning, match="1 count row"):
        t = read_st(c, spots, None, sample="S").tables["table"]
    assert "S_1x2" not in t.obs_names and t.n_obs == 3


def _two_sections(tmp_path, um_per_px_b):
    """Sections A and B of the same spots; B's gene "B" is named "C" (so one gene is common)."""
    c, s, _ = _triple(tmp_path)
    counts = pd.read_csv(c, sep="\t", index_col=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read_st(counts, s, None, sample="A", um_per_px=1.0)
        b = read_st(counts.rename(columns={"B": "C"}), s, None, sample="B", um_per_px=um_per_px_b)
    return a, b


def test_concatenate_sections_aligns_genes(tmp_path):
    a, b = _two_sections(tmp_path, um_per_px_b=2.0)
    inner = concatenate_sections([a, b]).tables["table"]
    assert list(inner.var_names) == ["A"] and inner.n_obs == 8
    assert inner.uns["scst"]["gene_alignment"] == "intersection"
    assert set(inner.uns["scst"]["sections"]) == {"A", "B"}
    outer = concatenate_sections([a, b], join="outer").tables["table"]
    assert sorted(outer.var_names) == ["A", "B", "C"]
    assert outer[outer.obs["section"] == "B", "B"].X.sum() == 0  # not measured there → 0
    with pytest.raises(ValueError, match="appears twice"):
        concatenate_sections([a, a])


def test_her2st_bad_section_and_hash(tmp_path):
    with pytest.raises(ValueError, match="unknown section"):
        scst.datasets.her2st(["C7"])
    (tmp_path / "C2").mkdir()
    (tmp_path / "C2" / "counts.tsv.gz").write_bytes(b"not the published file")
    with pytest.raises(ValueError, match="Hash mismatch"):
        scst.datasets.her2st(["C2"], path=tmp_path, images=False)
    with pytest.raises(FileNotFoundError, match="spots.tsv"):
        scst.datasets.fetch("her2st", "C2/spots.tsv", path=tmp_path)


def test_read_st_spot_centre_on_the_far_image_edge_is_outside(tmp_path):
    # Pixel i covers [i, i + 1): on the 120 px wide image a centre at x = 120 lies outside, x = 119.9 inside.
    c, s, i = _triple(tmp_path)
    spots = pd.read_csv(s, sep="\t").iloc[:4]  # the spots with counts: x = 10, 30
    inside = spots.assign(pixel_x=spots["pixel_x"] + 89.9, pixel_y=spots["pixel_y"] + 64.9)  # max (119.9, 99.9)
    sd = read_st(c, inside, i, sample="S", cache_dir=tmp_path / "cache")
    assert sd.tables["table"].obsm["spatial"].max(0).tolist() == pytest.approx([119.9, 99.9])
    for dx, dy in ((90.0, 0.0), (0.0, 65.0)):
        edge = spots.assign(pixel_x=spots["pixel_x"] + dx, pixel_y=spots["pixel_y"] + dy)
        with pytest.raises(ValueError, match=r"2 spot centre\(s\) lie outside the 120 × 100 px image"):
            read_st(c, edge, i, sample="S", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ mutation sweep
def _grid(n_x=6, n_y=5):
    """n_x × n_y ST grid, 100 px per step; counts G = position."""
    x, y = (a.ravel() for a in np.meshgrid(np.arange(1, n_x + 1), np.arange(1, n_y + 1)))
    spots = pd.DataFrame({"x": x, "y": y, "pixel_x": 300.0 + 100 * (x - 1), "pixel_y": 300.0 + 100 * (y - 1)})
    counts = pd.DataFrame({"G": np.arange(x.size)}, index=[f"{a}x{b}" for a, b in zip(x, y)])
    return counts, spots


def test_drop_fractions_at_their_bounds():
    counts, spots = _grid()
    # Exactly half the count rows without a spot: a loud warning, not yet an error (more than half is).
    with pytest.warns(UserWarning, match=r"15 count row\(s\) without a spot; 15 spots kept \(50% of count rows"):
        assert read_st(counts, spots.iloc[:15], None, sample="S").tables["table"].n_obs == 15
    with pytest.raises(ValueError, match="53% of the count rows have no spot"):
        read_st(counts, spots.iloc[:14], None, sample="S")
    # Exactly 5 % (1 of 20 count rows): logged only; 2 of 20 warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert read_st(counts.iloc[:20], spots.iloc[:19], None, sample="S").tables["table"].n_obs == 19
    with pytest.warns(UserWarning, match=r"10% of count rows"):
        read_st(counts.iloc[:20], spots.iloc[:18], None, sample="S")


def test_read_st_geometry_entries_and_sample_name(tmp_path):
    c, s, i = _triple(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geo = read_st(c, s, i, sample="S", cache_dir=tmp_path / "cache").tables["table"].uns["scst"]["sections"]["S"]
        assert geo["image_shape"] == [100, 120] and geo["image_key"] == "S_image"  # [h, w] of the 120 × 100 image
        geo = read_st(c, s, None, sample="S").tables["table"].uns["scst"]["sections"]["S"]
        assert geo["image_key"] is None and geo["image_shape"] is None and geo["source"] is None
        with pytest.raises(ValueError, match="sample: expected a non-empty string"):
            read_st(c, s, None, sample="")
        # A name SpatialData refuses for its elements is refused up front, naming `sample`, before the image is
        # converted (spatialdata's ValidationError came at the end, naming shapes/'patient 1_spots').
        for bad in ("patient 1", "C2/left", "__x"):
            with pytest.raises(ValueError, match=r"sample: .* use only letters, digits"):
                read_st(c, s, i, sample=bad, cache_dir=tmp_path / "cache_bad")
            assert not (tmp_path / "cache_bad").exists()
        assert "C2.left-1_image" in read_st(c, s, i, sample="C2.left-1", cache_dir=tmp_path / "cache").images
        # A .txt spot file is tab-separated like .tsv.
        pd.read_csv(s, sep="\t").to_csv(tmp_path / "spots.txt", sep="\t", index=False)
        assert read_st(c, tmp_path / "spots.txt", None, sample="S").tables["table"].n_obs == 4


def test_concatenate_sections_keeps_the_given_section_order_and_int32_counts(tmp_path):
    c, s, _ = _triple(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = read_st(c, s, None, sample="B", um_per_px=1.0)
        a = read_st(c, s, None, sample="A", um_per_px=1.0)
    t = concatenate_sections([b, a]).tables["table"]
    assert t.obs["section"].cat.categories.tolist() == ["B", "A"] and t.obs["section"].tolist()[:1] == ["B"]
    assert t.X.dtype == np.int32
    assert concatenate_sections({"x": b, "y": a}, join="outer").tables["table"].X.dtype == np.int32
    # Sections normalised before they are combined keep their values (the int32 cast truncated 8.35 to 8)
    for sd in (a, b):
        sd.tables["table"].X = (sd.tables["table"].X / 3).astype(np.float32)
    t = concatenate_sections([b, a], join="outer").tables["table"]
    assert t.X.dtype == np.float32
    np.testing.assert_allclose(t.X.toarray(), np.vstack([x.tables["table"].X.toarray() for x in (b, a)]))


def test_concatenate_sections_inner_join_keeps_obs_columns_of_some_sections(tmp_path):
    """join= aligns genes: with the default "inner", an obs column present in one section only (labels added to the
    annotated sections) was dropped from the combined table silently; now it is kept with NaN elsewhere, as with
    join="outer", and the genes are still the common ones."""
    a, b = _two_sections(tmp_path, um_per_px_b=1.0)
    a.tables["table"].obs["label"] = pd.Categorical(["t", "n", "t", "n"])
    for join in ("inner", "outer"):
        t = concatenate_sections([a, b], join=join).tables["table"]
        label = t.obs["label"].astype(object)
        assert label[:4].tolist() == ["t", "n", "t", "n"] and label[4:].isna().all(), join
        assert t.obs_names.tolist()[:4] == a.tables["table"].obs_names.tolist()
    assert list(concatenate_sections([a, b]).tables["table"].var_names) == ["A"]


@pytest.mark.parametrize("suffix", [".tsv", ".csv.gz"])
def test_read_st_refuses_a_count_file_with_a_repeated_gene_name_as_it_refuses_the_data_frame(tmp_path, suffix):
    """A count file whose header names a gene twice was read with pandas' renamed copy "A.1" (a gene that does not
    exist), while the same table as a DataFrame is refused: both are now the same duplicate-gene error."""
    c, s, _ = _triple(tmp_path)
    counts = pd.read_csv(c, sep="\t", index_col=0)
    dup = pd.concat([counts, counts[["A"]]], axis=1)
    dup.to_csv(tmp_path / f"dup{suffix}", sep="," if ".csv" in suffix else "\t")
    for table in (dup, tmp_path / f"dup{suffix}"):
        with pytest.raises(ValueError, match=r"counts: duplicate gene names, e.g. \['A'\]"):
            read_st(table, s, None, sample="S")
    counts.to_csv(tmp_path / f"ok{suffix}", sep="," if ".csv" in suffix else "\t")  # names as written, unchanged
    assert list(read_st(tmp_path / f"ok{suffix}", s, None, sample="S").tables["table"].var_names) == ["A", "B"]


def test_read_st_reads_a_count_file_whose_header_has_no_corner_cell(tmp_path):
    """R's ``write.table`` (default ``col.names=TRUE``) writes the gene names without a cell above the spot ids: the
    genes are read as written, and a repeated gene name is refused as with a corner cell (it was read as "A.1")."""
    _, s, _ = _triple(tmp_path)
    rows = "1x1\t0\t3\n2x1\t1\t0\n1x2\t5\t2\n2x2\t0\t0\n"
    (tmp_path / "r.tsv").write_text("A\tB\n" + rows)
    t = read_st(tmp_path / "r.tsv", s, None, sample="S").tables["table"]
    assert list(t.var_names) == ["A", "B"] and list(t.obs_names) == ["S_1x1", "S_2x1", "S_1x2", "S_2x2"]
    np.testing.assert_array_equal(t.X.toarray(), [[0, 3], [1, 0], [5, 2], [0, 0]])
    (tmp_path / "r_dup.tsv").write_text("A\tA\n" + rows)
    with pytest.raises(ValueError, match=r"counts: duplicate gene names, e.g. \['A'\]"):
        read_st(tmp_path / "r_dup.tsv", s, None, sample="S")
