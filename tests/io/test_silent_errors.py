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
    assert geo["um_per_px"] == pytest.approx(2.0 / np.cos(np.deg2rad(8.0)), rel=0.02)
    counts, spots = _grid_spots()
    spots[["pixel_x", "pixel_y"]] = np.random.default_rng(1).permutation(spots[["pixel_x", "pixel_y"]].to_numpy())
    with pytest.raises(ValueError, match="grid steps \\(RMS\\) off the array grid"):
        read_st(counts, spots, None, sample="S")


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
