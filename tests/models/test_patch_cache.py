"""The process-wide patch cache is keyed by image content, never by a Python object's id()."""

import numpy as np
import xarray as xr

from scst.models._image import _cached_patches, _element_token, clear_patch_cache


def _img(seed):
    return xr.DataArray(np.random.default_rng(seed).integers(0, 255, (3, 32, 32), dtype=np.uint8), dims=("c", "y", "x"))


def test_cache_hits_on_same_content_and_misses_on_other_content():
    clear_patch_cache()
    calls = []

    def read(tag):
        def f():
            calls.append(tag)
            return np.full((2, 3, 4, 4), len(calls), dtype=np.uint8)

        return f

    centers = np.array([[5.0, 5.0], [10.0, 12.0]])
    a, a_again, b = _img(0), _img(0), _img(1)  # a_again: another object with the same pixels
    assert _element_token(a) == _element_token(a_again) != _element_token(b)
    first = _cached_patches(a, centers, 80.0, 4, 2**20, read("a"), 40)
    assert _cached_patches(a_again, centers, 80.0, 4, 2**20, read("a_again"), 40) is first
    del a, a_again  # a freed object's id may be reused by the next image: content keys cannot collide
    other = _cached_patches(b, centers, 80.0, 4, 2**20, read("b"), 40)
    assert calls == ["a", "b"] and other[0, 0, 0, 0] == 2
    _cached_patches(b, centers + 1, 80.0, 4, 2**20, read("b moved"), 40)  # other spots: a new entry
    _cached_patches(b, centers, 160.0, 4, 2**20, read("b bigger"), 40)  # other geometry: a new entry
    assert calls == ["a", "b", "b moved", "b bigger"]
    assert not first.flags.writeable
    clear_patch_cache()


def test_cache_budget_is_inclusive():
    """An entry of exactly the budget stays cached; a section of exactly the budget is cached, one byte more is not."""
    import importlib.util
    from pathlib import Path

    from scst.models._image import _PATCH_CACHE, _SectionPatches

    clear_patch_cache()
    calls = []

    def read():
        calls.append(1)
        return np.zeros((2, 3, 4, 4), dtype=np.uint8)  # 96 bytes

    img, centers = _img(0), np.array([[5.0, 5.0], [10.0, 12.0]])
    first = _cached_patches(img, centers, 80.0, 4, 96, read, 40)
    assert len(_PATCH_CACHE) == 1 and _cached_patches(img, centers, 80.0, 4, 96, read, 40) is first and calls == [1]
    _cached_patches(img, centers + 1, 80.0, 4, 96, read, 40)  # a second entry: the budget holds one, the oldest goes
    assert len(_PATCH_CACHE) == 1 and _cached_patches(img, centers + 1, 80.0, 4, 96, read, 40) is not first
    clear_patch_cache()

    spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).with_name("_he_synthetic.py"))
    syn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(syn)
    sd = syn.make_sdata(sections=("S1",), grid=4)
    rows = np.arange(16)
    nbytes = 16 * 3 * 32 * 32
    assert _SectionPatches(sd, "table", rows, syn.SIZE_UM, 32, nbytes / 2**20).cached
    assert not _SectionPatches(sd, "table", rows, syn.SIZE_UM, 32, (nbytes - 1) / 2**20).cached


def test_a_corrected_pixel_size_is_not_served_the_patches_cut_at_the_old_one():
    """The window in pixels is size_um / um_per_px: correcting uns["scst"]["sections"][s]["um_per_px"] in the same
    process must re-read the patches (the cache key held the image, spots, size_um and patch_px only)."""
    import importlib.util
    from pathlib import Path

    from scst.models._image import _SectionPatches

    spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).with_name("_he_synthetic.py"))
    syn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(syn)
    clear_patch_cache()
    sd = syn.make_sdata(sections=("S1",), grid=3)
    tab = sd.tables["table"]
    rows = np.arange(tab.n_obs)
    first = _SectionPatches(sd, "table", rows, syn.SIZE_UM, 16, 64.0).get(rows)  # 32 px windows at 2 µm/px
    tab.uns["scst"]["sections"]["S1"]["um_per_px"] = 1.0  # corrected: 64 px windows
    fresh = _SectionPatches(sd, "table", rows, syn.SIZE_UM, 16, 64.0)
    assert fresh.ds.size_px["S1"] == 64
    np.testing.assert_array_equal(fresh.get(rows), fresh.ds.patches_uint8(rows))  # what the new geometry reads
    assert not np.array_equal(fresh.get(rows), first)
    clear_patch_cache()


def test_an_image_rewritten_at_the_same_zarr_path_is_not_served_its_old_patches(tmp_path):
    """Review 2026-12-04: dask names a lazily read image by its store path and array only; an image rewritten at the
    same path (same process) kept the old image's patches."""
    import shutil

    import dask.array as da
    import zarr

    path = str(tmp_path / "img.zarr")
    zarr.save_array(path, _img(0).data)
    name_before = da.from_zarr(path).name
    first = _element_token(xr.DataArray(da.from_zarr(path), dims=("c", "y", "x")))
    assert _element_token(xr.DataArray(da.from_zarr(path), dims=("c", "y", "x"))) == first  # same files: a hit
    shutil.rmtree(path)
    zarr.save_array(path, _img(1).data)
    assert da.from_zarr(path).name == name_before  # dask's own name does not see the new pixels
    assert _element_token(xr.DataArray(da.from_zarr(path), dims=("c", "y", "x"))) != first
