"""Inputs that used to give silently wrong results: each is now an error or a loud warning."""

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scst.io import read_st
from scst.io._image import MANIFEST, check_image_cache
from scst.pp import SpotPatchDataset

HER2ST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "her2st"


def _her2st(section: str, name: str) -> Path:
    import os

    root = Path(os.environ.get("SCST_DATA_DIR", HER2ST.parent)) / "her2st"
    return root / section / name


# ---------------------------------------------------------------------------------------------------------------
# counts of one section with the spot file of another
# ---------------------------------------------------------------------------------------------------------------
def test_counts_with_another_sections_spots_is_an_error():
    # Hand-checked: 32 of C2's 187 count rows have an id in C3's spot file (83 % lost).
    with pytest.raises(ValueError, match=r"155 count row\(s\) without a spot; 32 spots kept — 83%.*same section"):
        read_st(_her2st("C2", "counts.tsv.gz"), _her2st("C3", "spots.tsv"), None, sample="C2")


def test_counts_with_another_sections_spots_warns_loudly_when_most_match():
    # C3 counts with C4's spot file: 123 of 180 count rows match (32 % lost) — kept, with a loud warning.
    with pytest.warns(UserWarning, match=r"57 count row\(s\) without a spot; 123 spots kept \(32% of count rows"):
        sd = read_st(_her2st("C3", "counts.tsv.gz"), _her2st("C4", "spots.tsv"), None, sample="C3")
    assert sd.tables["table"].n_obs == 123


def test_a_few_unmatched_spots_are_logged_not_warned(caplog):
    # C3's own files: 2 selected spots have no count row (1 %), the normal case of every her2st section.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with caplog.at_level(logging.INFO):
            sd = read_st(_her2st("C3", "counts.tsv.gz"), _her2st("C3", "spots.tsv"), None, sample="C3")
    assert sd.tables["table"].n_obs == 180


# ---------------------------------------------------------------------------------------------------------------
# pixel columns swapped, spots off the grid
# ---------------------------------------------------------------------------------------------------------------
def test_swapped_pixel_columns_are_an_error():
    counts, spots = _her2st("C2", "counts.tsv.gz"), _her2st("C2", "spots.tsv")
    with pytest.raises(ValueError, match=r"pixel_cols: .*look swapped.*pixel_cols=\('pixel_x', 'pixel_y'\)"):
        read_st(counts, spots, None, sample="C2", pixel_cols=("pixel_y", "pixel_x"))
    geo = read_st(counts, spots, None, sample="C2").tables["table"].uns["scst"]["sections"]["C2"]
    assert geo["um_per_px"] == pytest.approx(0.6888, abs=1e-3)  # 200 µm / ≈290 px


def _grid_spots(angle_deg=0.0, jitter=0.0, seed=0):
    """6 × 5 ST grid, 100 px per 200 µm step (2 µm/px), rotated by ``angle_deg`` about the first spot."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(1, 7), np.arange(1, 6))
    x, y = x.ravel(), y.ravel()
    t = np.deg2rad(angle_deg)
    px = 300 + 100 * ((x - 1) * np.cos(t) - (y - 1) * np.sin(t)) + jitter * rng.standard_normal(x.size)
    py = 300 + 100 * ((x - 1) * np.sin(t) + (y - 1) * np.cos(t)) + jitter * rng.standard_normal(x.size)
    spots = pd.DataFrame({"x": x, "y": y, "pixel_x": px, "pixel_y": py})
    counts = pd.DataFrame({"G": np.arange(x.size)}, index=[f"{a}x{b}" for a, b in zip(x, y)])
    return counts, spots


def test_rotated_grid_is_accepted_and_scattered_spots_are_not():
    counts, spots = _grid_spots(angle_deg=8.0, jitter=5.0)
    geo = read_st(counts, spots, None, sample="S").tables["table"].uns["scst"]["sections"]["S"]
    # 100 px per 200 µm step whatever the rotation (before: 2.0 / cos 8° = 2.0197 from x-on-column fits)
    assert geo["um_per_px"] == pytest.approx(2.0, abs=0.005)
    counts, spots = _grid_spots()
    spots[["pixel_x", "pixel_y"]] = np.random.default_rng(1).permutation(spots[["pixel_x", "pixel_y"]].to_numpy())
    with pytest.raises(ValueError, match="grid steps \\(RMS\\) off the array grid"):
        read_st(counts, spots, None, sample="S")


@pytest.mark.parametrize("angle", [0.0, 8.0, 20.0, 30.0, -45.0])
def test_um_per_px_of_a_rotated_st_grid_is_exact(angle):
    # Before: 2.0197 at 8°, 2.1284 at 20°, 2.3094 at 30° (1 / cos θ too large); the true pixel size is 2 µm/px.
    counts, spots = _grid_spots(angle_deg=angle)
    geo = read_st(counts, spots, None, sample="S").tables["table"].uns["scst"]["sections"]["S"]
    assert geo["um_per_px"] == pytest.approx(2.0, rel=1e-9)
    assert geo["spot_diameter_px"] == pytest.approx(50.0, rel=1e-9)  # 100 µm spot


def _visium_grid(um_per_px=0.25, angle_deg=0.0, n_rows=10, n_cols=30):
    """Visium's hexagonal array: array_col steps by 2 along a row (col + row even), 100 µm between neighbours, so
    one column index is 50 µm in x and one row index 100 · √3 / 2 = 86.6 µm in y."""
    rows, cols = zip(*[(r, c) for r in range(n_rows) for c in range(r % 2, n_cols, 2)])
    rows, cols = np.array(rows), np.array(cols)
    ux, uy = cols * 50.0 / um_per_px, rows * 100 * np.sqrt(3) / 2 / um_per_px
    t = np.deg2rad(angle_deg)
    spots = pd.DataFrame(
        {"x": cols, "y": rows, "pixel_x": 500 + ux * np.cos(t) - uy * np.sin(t),
         "pixel_y": 500 + ux * np.sin(t) + uy * np.cos(t)}
    )  # fmt: skip
    counts = pd.DataFrame(
        np.ones((len(cols), 2), int), index=[f"{c}x{r}" for c, r in zip(cols, rows)], columns=["a", "b"]
    )
    return counts, spots


@pytest.mark.parametrize("angle", [0.0, 15.0])
def test_um_per_px_of_a_visium_hexagonal_grid(angle):
    # Before: 0.366 µm/px for a true 0.25 (46 % off): one column index was taken for a whole 100 µm step.
    counts, spots = _visium_grid(um_per_px=0.25, angle_deg=angle)
    sd = read_st(counts, spots, None, sample="V", spot_diameter_um=55.0, grid_step_um=100.0)
    geo = sd.tables["table"].uns["scst"]["sections"]["V"]
    assert geo["um_per_px"] == pytest.approx(0.25, rel=1e-9)
    assert geo["spot_diameter_px"] == pytest.approx(220.0, rel=1e-9)  # 55 µm / 0.25 µm/px
    assert sd.shapes["V_spots"]["radius"].iloc[0] == pytest.approx(110.0, rel=1e-9)


def test_um_per_px_of_her2st_sections_is_unchanged():
    # µm/px of C2–C6 from the 1-D fits used before the affine fit (agree to < 3e-4).
    before = {"C2": 0.688841, "C3": 0.685898, "C4": 0.68632, "C5": 0.685647, "C6": 0.687581}
    for s, upp in before.items():
        sd = read_st(_her2st(s, "counts.tsv.gz"), _her2st(s, "spots.tsv"), None, sample=s)
        assert sd.tables["table"].uns["scst"]["sections"][s]["um_per_px"] == pytest.approx(upp, abs=1e-3)


def test_float_array_indices_are_rounded_not_truncated():
    # 25 - 1e-9 is grid column 25 (np.allclose accepts it); int() truncated it to 24: spot 24x13's counts.
    counts, spots = _grid_spots()
    spots["x"] = spots["x"].astype(float)
    spots.loc[spots["x"] == 6, "x"] = 6 - 1e-9
    spots.loc[spots["x"] == 3, "x"] = 3 - 2e-5
    sd = read_st(counts, spots, None, sample="S")
    t = sd.tables["table"]
    # Each spot keeps its own counts: G = position in the 6 × 5 grid, (x - 1) + 6 (y - 1).
    expect = (t.obs["array_col"] - 1) + 6 * (t.obs["array_row"] - 1)
    np.testing.assert_array_equal(t.X.toarray()[:, 0], expect)
    assert t.n_obs == 30 and t.obs["array_col"].max() == 6 and "S_6x1" in t.obs_names
    np.testing.assert_array_equal(t.obsm["spatial_array"][:, 0], t.obs["array_col"])


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"um_per_px": float("nan")}, "um_per_px"),
        ({"um_per_px": float("inf")}, "um_per_px"),
        ({"um_per_px": 0.0}, "um_per_px"),
        ({"grid_step_um": float("nan")}, "grid_step_um"),
        ({"grid_step_um": -200.0}, "grid_step_um"),
        ({"spot_diameter_um": -100.0}, "spot_diameter_um"),
        ({"spot_diameter_um": float("nan")}, "spot_diameter_um"),
    ],
)
def test_non_finite_or_non_positive_scales_are_refused(kw, name):
    # Before: NaN µm/px and grid step were accepted (NaN spot sizes); a negative diameter failed inside spatialdata.
    counts, spots = _grid_spots()
    with pytest.raises(ValueError, match=rf"^{name}: expected a finite positive number"):
        read_st(counts, spots, None, sample="S", **kw)


def test_compressed_tables_are_read_by_their_format_suffix(tmp_path):
    # Before: counts.csv.gz was read as TSV (one column) and spots.tsv.gz as CSV (one column).
    counts, spots = _grid_spots()
    counts.to_csv(tmp_path / "counts.csv.gz")
    spots.to_csv(tmp_path / "spots.tsv.gz", sep="\t", index=False)
    t = read_st(tmp_path / "counts.csv.gz", tmp_path / "spots.tsv.gz", None, sample="S").tables["table"]
    assert list(t.var_names) == ["G"] and t.n_obs == 30
    np.testing.assert_array_equal(t[["S_1x1", "S_6x5"]].X.toarray().ravel(), [0, 29])
    geo = t.uns["scst"]["sections"]["S"]
    assert geo["um_per_px"] == pytest.approx(2.0)


def test_counts_dataframe_of_the_caller_is_not_changed():
    # Before: read_st replaced the caller's integer index by strings.
    counts, spots = _grid_spots()
    spots["x"], spots["y"] = spots["x"] + 10, spots["y"] * 0 + 1  # one row of spots: ids 11x1 … 16x1
    spots = spots.drop_duplicates(["x", "y"])
    mine = pd.DataFrame({"G": [1, 2, 3]}, index=pd.Index([11, 12, 13]))  # ids that are not '<x>x<y>' strings
    with pytest.raises(ValueError, match="No spot of counts matches"):
        read_st(mine, spots, None, sample="S")
    assert mine.index.dtype == np.int64 and mine.index.tolist() == [11, 12, 13]


# ---------------------------------------------------------------------------------------------------------------
# files written by scst (image cache manifest, patch caches): the mode a plain open()/mkdir would give
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def umask_027():
    import os

    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_atomic_writes_get_the_umask_mode_not_a_private_one(tmp_path, umask_027):
    # Before: mkstemp's 0600 / mkdtemp's 0700 — other users of a shared cache saw "manifest is unreadable".
    import stat

    from scst._utils import _atomic_dir, _atomic_file

    with _atomic_file(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
    with open(tmp_path / "plain.json", "w") as fh:
        fh.write("{}")
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o640
    with _atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    (tmp_path / "plain_dir").mkdir()
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == stat.S_IMODE((tmp_path / "plain_dir").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750


def test_image_cache_is_readable_by_the_group(tmp_path, umask_027):
    import stat

    counts, spots, he, _ = _section(tmp_path, h=750, w=850)
    read_st(counts, spots, he, sample="S", cache_dir=tmp_path / "cache")
    (store,) = (p for p in (tmp_path / "cache").iterdir() if p.suffix == ".zarr")
    assert stat.S_IMODE((store / MANIFEST).stat().st_mode) == 0o640
    assert stat.S_IMODE(store.stat().st_mode) == 0o750


# ---------------------------------------------------------------------------------------------------------------
# zarr image cache deleted or truncated after read_st
# ---------------------------------------------------------------------------------------------------------------
def _section(tmp_path, h=2300, w=2100):
    """A 3 × 3 grid of spots on a 2300 × 2100 px image (3 × 3 zarr chunks at full resolution)."""
    counts, spots = _grid_spots()
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (np.arange(w) % 200)[None, :]
    img[..., 1] = (np.arange(h) % 250)[:, None]
    img[..., 2] = 77
    Image.fromarray(img).save(tmp_path / "he.png")
    return counts, spots, tmp_path / "he.png", img


def _patches(sd):
    ds = SpotPatchDataset(sd, size_px=16, return_counts=False)
    return np.stack([ds.patch_uint8(i) for i in range(3)])


def test_damaged_image_cache_is_detected(tmp_path):
    counts, spots, he, img = _section(tmp_path)
    sd = read_st(counts, spots, he, sample="S", cache_dir=tmp_path / "cache")
    good = _patches(sd)
    assert good.std() > 20  # the texture, not a constant
    (store,) = (p for p in (tmp_path / "cache").iterdir() if p.suffix == ".zarr")
    assert (store / MANIFEST).is_file()
    check_image_cache(store)  # complete
    chunk = store / "images" / "image" / "s0" / "c" / "0" / "0" / "0"
    # 1) a chunk deleted after read_st: zarr would read it as black; opening patches refuses
    chunk.unlink()
    with pytest.raises(FileNotFoundError, match=r"damaged: 1 of \d+ files are missing.*s0/c/0/0/0"):
        SpotPatchDataset(sd, size_px=16, return_counts=False)
    # reading the section again rebuilds the cache, with a warning, and the patches are back
    with pytest.warns(UserWarning, match="damaged.*rebuilding"):
        sd = read_st(counts, spots, he, sample="S", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(_patches(sd), good)
    # 2) a chunk truncated
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(FileNotFoundError, match="0 of .* missing and 1 truncated"):
        SpotPatchDataset(sd, size_px=16, return_counts=False)
    # 3) the whole cache deleted
    shutil.rmtree(store)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SpotPatchDataset(sd, size_px=16, return_counts=False)


def test_cache_without_manifest_is_adopted_or_rebuilt(tmp_path):
    counts, spots, he, _ = _section(tmp_path)
    read_st(counts, spots, he, sample="S", cache_dir=tmp_path / "cache")
    (store,) = (p for p in (tmp_path / "cache").iterdir() if p.suffix == ".zarr")
    (store / MANIFEST).unlink()  # as written before manifests existed: complete → adopted silently
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        read_st(counts, spots, he, sample="S", cache_dir=tmp_path / "cache")
    assert (store / MANIFEST).is_file()
    (store / MANIFEST).unlink()
    (store / "images" / "image" / "s1" / "c" / "0" / "0" / "0").unlink()  # and incomplete → rebuilt
    with pytest.warns(UserWarning, match=r"pyramid levels \['s1'\] lack chunks"):
        read_st(counts, spots, he, sample="S", cache_dir=tmp_path / "cache")
    check_image_cache(store)


# ---------------------------------------------------------------------------------------------------------------
# mutation sweep: counts/spot checks, single-line grids, the residual bound, few spots
# ---------------------------------------------------------------------------------------------------------------
def test_bad_count_tables_are_refused_with_their_reason():
    counts, spots = _grid_spots()
    with pytest.raises(ValueError, match=r"counts: duplicate gene names, e.g. \['G'\]"):
        read_st(pd.concat([counts, counts], axis=1), spots, None, sample="S")
    nan = counts.astype(float)
    nan.iloc[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"counts: missing \(NaN\) values"):
        read_st(nan, spots, None, sample="S")
    # pandas' nullable integers (convert_dtypes()): pd.NA is a missing value too (was "boolean value of NA is
    # ambiguous"); without NA they are counts
    two = counts.assign(H=counts["G"] + 1).astype("Int64")
    na = two.copy()
    na.iloc[3, 0] = pd.NA
    with pytest.raises(ValueError, match=r"counts: missing \(NaN\) values"):
        read_st(na, spots, None, sample="S")
    t = read_st(two, spots, None, sample="S").tables["table"]
    np.testing.assert_array_equal(t.X.toarray(), two.loc[[i.removeprefix("S_") for i in t.obs_names]].to_numpy(int))
    # The largest int32 is a valid count (one more is refused).
    big = counts.copy()
    big.iloc[0, 0] = np.iinfo(np.int32).max
    t = read_st(big, spots, None, sample="S").tables["table"]
    assert t["S_1x1", "G"].X.toarray().item() == np.iinfo(np.int32).max


def test_unselected_spots_and_non_integer_array_positions():
    counts, spots = _grid_spots()
    spots["selected"] = 1
    spots.loc[spots.index[:2], "selected"] = 0  # spots 1x1 and 2x1: ignored, their count rows have no spot
    with pytest.warns(UserWarning, match=r"dropped 0 spot\(s\) without counts and 2 count row\(s\) without a spot"):
        t = read_st(counts, spots, None, sample="S").tables["table"]
    assert t.n_obs == 28 and "S_1x1" not in t.obs_names and "S_2x1" not in t.obs_names
    spots = _grid_spots()[1]
    spots["x"] = spots["x"] + 0.4
    with pytest.raises(ValueError, match=r"spots: array columns \['x', 'y'\] must hold integer grid indices"):
        read_st(counts, spots, None, sample="S")


@pytest.mark.parametrize(("axis", "angle"), [("row", 0.0), ("column", 0.0), ("row", 30.0)])
def test_spots_on_one_line_of_the_array_give_the_pitch_along_it(axis, angle):
    # One row (or one column) of the 6 x 5 grid, 100 px per 200 µm step, rotated: 2 µm/px along the line.
    counts, spots = _grid_spots(angle_deg=angle)
    keep = spots["y"] == 3 if axis == "row" else spots["x"] == 4
    ids = [f"{a}x{b}" for a, b in zip(spots["x"][keep], spots["y"][keep])]
    geo = read_st(counts.loc[ids], spots[keep], None, sample="S").tables["table"].uns["scst"]["sections"]["S"]
    assert geo["um_per_px"] == pytest.approx(2.0, rel=1e-9)


def test_four_spots_are_enough_to_catch_swapped_pixel_columns():
    # 2 x 2 spots, columns 100 px apart along x, rows 50 px along y: swapped pixel columns are refused.
    spots = pd.DataFrame({"x": [1, 2, 1, 2], "y": [1, 1, 2, 2]})
    spots["pixel_x"] = 300.0 + 100 * (spots["x"] - 1)
    spots["pixel_y"] = 300.0 + 50 * (spots["y"] - 1)
    counts = pd.DataFrame({"G": [1, 2, 3, 4]}, index=["1x1", "2x1", "1x2", "2x2"])
    with pytest.raises(ValueError, match="look swapped"):
        read_st(counts, spots, None, sample="S", pixel_cols=("pixel_y", "pixel_x"))
    geo = read_st(counts, spots, None, sample="S").tables["table"].uns["scst"]["sections"]["S"]
    assert geo["um_per_px"] == pytest.approx(200 / 75)  # mean of 100 and 50 px per step


def test_pixel_sizes_from_one_line_or_three_spots_are_warned_about():
    """µm/px from spots on one array line (a hexagonal row counts 2 indices per neighbour: 2× too large) or from
    fewer than 4 spots (nothing checks the fit) is a degraded mode: warned about, not only logged; a checked grid
    (the 2 × 2 spots above) is not."""
    row = pd.DataFrame({"x": [0, 2, 4, 6], "y": [0, 0, 0, 0]})  # a Visium-like row: neighbours 2 indices apart
    row["pixel_x"], row["pixel_y"] = 100.0 + 50 * row["x"], 100.0
    counts = pd.DataFrame({"G": [1, 2, 3, 4]}, index=[f"{x}x{y}" for x, y in zip(row["x"], row["y"])])
    with pytest.warns(UserWarning, match=r"section 'S': µm/px .* derived from 4 spots on one line of the array"):
        read_st(counts, row, None, sample="S")
    three = row.iloc[:3].assign(y=[0, 1, 0])
    three["pixel_y"] = 100.0 + 100 * three["y"]
    with pytest.warns(UserWarning, match="derived from 3 spots"):
        read_st(counts.iloc[:3].set_axis([f"{x}x{y}" for x, y in zip(three["x"], three["y"])]), three, None, sample="S")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given, nothing is derived: no warning
        read_st(counts, row, None, sample="S", um_per_px=0.5)


def test_a_grid_at_exactly_45_degrees_is_not_taken_for_swapped_columns():
    # Column vector (100, 100), row vector (-100, 100): |x| and |y| parts tie; 200 µm per 100·√2 px.
    counts, spots = _grid_spots()
    c, r = spots["x"] - 1, spots["y"] - 1
    spots["pixel_x"], spots["pixel_y"] = 1000.0 + 100 * (c - r), 300.0 + 100 * (c + r)
    geo = read_st(counts, spots, None, sample="S").tables["table"].uns["scst"]["sections"]["S"]
    assert geo["um_per_px"] == pytest.approx(200 / (100 * np.sqrt(2)), rel=1e-9)


def _affine_rms_steps(spots: pd.DataFrame) -> float:
    """Reference: RMS residual (in grid steps) of a least-squares affine fit of pixels on array indices."""
    design = np.column_stack([spots["x"], spots["y"], np.ones(len(spots))]).astype(float)
    xy = spots[["pixel_x", "pixel_y"]].to_numpy()
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    pitch = np.mean([np.hypot(*coef[0]), np.hypot(*coef[1])])
    return float(np.sqrt(np.mean(np.sum((xy - design @ coef) ** 2, axis=1))) / pitch)


@pytest.mark.parametrize(("d", "ok"), [(20.0, True), (30.0, False)])
def test_grid_residual_bound_is_a_quarter_step(d, ok):
    # Checkerboard offsets of ±d px along x on a 100 px grid: RMS residual ≈ d / 100 steps; 0.25 is the bound.
    counts, spots = _grid_spots()
    spots["pixel_x"] += d * np.where((spots["x"] + spots["y"]) % 2 == 0, 1, -1)
    rms = _affine_rms_steps(spots)
    assert (rms < 0.25) == ok and abs(rms - d / 100) < 0.02
    if ok:
        read_st(counts, spots, None, sample="S")
    else:
        with pytest.raises(ValueError, match=r"lie 0\.\d\d grid steps \(RMS\) off the array grid"):
            read_st(counts, spots, None, sample="S")
