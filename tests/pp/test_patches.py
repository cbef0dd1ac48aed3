"""Tests for scst.pp SpotPatchDataset / extract_patches on her2st C2 and on small synthetic images."""

from __future__ import annotations

import os
import pickle

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from scipy import sparse

from scst.pp._patches import IMAGENET_MEAN, IMAGENET_STD, SpotPatchDataset, extract_patches

# Spot 25x13 of C2 (spots.tsv row 1): pixel_x 6930.58, pixel_y 3510.24. 80 µm at 0.6888 µm/px -> 116 px, so the
# window starts at floor(6930.58 - 58 + 0.5) = 6873 (x) and floor(3510.24 - 58 + 0.5) = 3452 (y).
# Its counts (counts.tsv.gz): ERBB2 7, GAPDH 5, ACTB 7.
SPOT, X0, Y0, SIZE = "C2_25x13", 6873, 3452, 116


def _synthetic(h=50, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=(3, h, w), dtype=np.uint8)  # never 255: padding is recognisable


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for flip in (False, True):
        y = torch.flip(x, dims=(2,)) if flip else x
        out.extend(torch.rot90(y, k, dims=(1, 2)) for k in range(4))
    return out


class _CacheProbe(torch.utils.data.Dataset):
    """Reads a window and reports the chunk-cache budget of the process that read it."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return 8

    def __getitem__(self, i):
        self.ds.window(i)
        return self.ds._cache.max_bytes


# ------------------------------------------------------------------------------------------------ real data
def test_geometry_and_exact_crop_of_the_jpeg(c2_sdata, her2st_dir):
    from PIL import Image

    ds = SpotPatchDataset(c2_sdata, genes=["ERBB2", "GAPDH", "ACTB"], normalize=None)
    assert ds.size_px == {"C2": round(80 / 0.6888406987617568)} == {"C2": SIZE}
    i = int(np.flatnonzero(ds.obs_names == SPOT)[0])
    item = ds[i]
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(her2st_dir / "C2" / "he.jpg") as im:
        crop = np.asarray(im.convert("RGB").crop((X0, Y0, X0 + SIZE, Y0 + SIZE)))
    np.testing.assert_array_equal(ds.window(i), np.moveaxis(crop, -1, 0))
    np.testing.assert_allclose(item["patch"].numpy(), np.moveaxis(crop, -1, 0) / 255.0, atol=1e-6)
    assert item["patch"].dtype == torch.float32 and item["patch"].shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(item["counts"].numpy(), [7, 5, 7])
    assert item["counts"].dtype == torch.float32
    np.testing.assert_allclose(item["pixel_coords"].numpy(), [6930.58, 3510.24], rtol=1e-6)
    assert item["array_coords"].tolist() == [13, 25] and item["array_coords"].dtype == torch.long
    assert item["index"] == i and item["section"] == 0


def test_spot_patches_darker_than_background(c2_sdata):
    table = c2_sdata.tables["table"]
    xy = table.obsm["spatial"]
    h, w = table.uns["scst"]["sections"]["C2"]["image_shape"]
    # Background: a grid of points more than two spot pitches (580 px) from every spot.
    gx, gy = np.meshgrid(np.arange(200, w - 200, 600), np.arange(200, h - 200, 600))
    grid = np.stack([gx.ravel(), gy.ravel()], 1).astype(float)
    far = np.min(np.linalg.norm(grid[:, None] - xy[None], axis=-1), axis=1) > 580
    img = c2_sdata.images["C2_image"]
    spots = SpotPatchDataset(c2_sdata, return_counts=False)
    bg = SpotPatchDataset.from_arrays({"C2": img}, grid[far], ["C2"] * far.sum(), 0.6888)
    spot_grey = np.array([spots.window(i).mean() / 255 for i in spots.locality_order()])
    bg_grey = np.array([bg.window(i).mean() / 255 for i in bg.locality_order()])
    assert len(bg_grey) > 100
    # README check: 139 (spots) vs 239 (background) of 255 in 68-px disks.
    assert 0.4 < spot_grey.mean() < 0.7 < 0.85 < bg_grey.mean()
    assert (spot_grey < bg_grey.mean()).all()


@pytest.mark.slow
def test_dataloader_two_workers_matches_single_process(c2_sdata):
    ds = SpotPatchDataset(c2_sdata, obs_subset=np.arange(24), genes=["ERBB2"], out_px=112)
    ref = torch.stack([ds[i]["patch"] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    got = torch.cat([b["patch"] for b in batches])
    assert got.shape == (24, 3, 112, 112)
    torch.testing.assert_close(got, ref)
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(24))
    assert batches[0]["counts"].shape == (8, 1) and batches[0]["array_coords"].shape == (8, 2)
    # Each worker holds its share of the chunk-cache budget (memory bounded whatever num_workers).
    probe = torch.utils.data.DataLoader(_CacheProbe(ds), batch_size=4, num_workers=2)
    assert {int(v) for b in probe for v in b} == {ds._cache_budget // 2}
    # extract_patches with workers writes the same uint8 patches as the single-process dataset.
    res = extract_patches(c2_sdata, out_px=112, obs_subset=np.arange(24), num_workers=2, return_counts=False)
    np.testing.assert_array_equal(res["patches"], np.stack([ds.patch_uint8(i) for i in range(24)]))


def test_normalisation_and_resize(c2_sdata):
    raw = SpotPatchDataset(c2_sdata, obs_subset=[0, 1], out_px=224, normalize=None, return_counts=False)
    imnet = SpotPatchDataset(c2_sdata, obs_subset=[0, 1], out_px=224, return_counts=False)
    p, q = raw[1]["patch"], imnet[1]["patch"]
    assert p.shape == (3, 224, 224) and 0 <= p.min() and p.max() <= 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(q, (p - mean) / std)
    # Antialiased 116 -> 56 keeps the mean grey (a plain subsample would too, but not the local averages).
    small = SpotPatchDataset(c2_sdata, obs_subset=[1], out_px=58, normalize=None, return_counts=False)[0]["patch"]
    full = raw.window(1).astype(np.float32) / 255
    block = full.reshape(3, 58, 2, 58, 2).mean((2, 4))
    assert np.abs(small.numpy() - block).mean() < 0.02


def test_subset_by_names_and_sparse_counts(c2_sdata):
    t = c2_sdata.tables["table"]
    names = list(t.obs_names[[5, 2]])
    ds = SpotPatchDataset(c2_sdata, obs_subset=names, genes=list(t.var_names[:4]), normalize=None)
    assert [ds[0]["index"], ds[1]["index"]] == [5, 2]
    np.testing.assert_array_equal(ds[0]["counts"].numpy(), t.X[5, :4].toarray()[0])
    assert ds.sources["C2"].kind == "zarr"  # read through zarr, not dask


def test_extract_patches_roundtrip(c2_sdata, tmp_path):
    sub = np.arange(10)
    path = extract_patches(c2_sdata, out=tmp_path / "c2.npz", out_px=112, obs_subset=sub, genes=["ERBB2", "ACTB"])
    assert path == tmp_path / "c2.npz" and sorted(p.name for p in tmp_path.iterdir()) == ["c2.npz"]
    with np.load(path, allow_pickle=False) as f:
        cache = {k: f[k] for k in f.files}
    ds = SpotPatchDataset(c2_sdata, obs_subset=sub, out_px=112, genes=["ERBB2", "ACTB"], normalize=None)
    assert cache["patches"].shape == (10, 3, 112, 112) and cache["patches"].dtype == np.uint8
    for i in range(10):  # uint8 images are resized in uint8: the cache holds exactly 255 * patch
        np.testing.assert_array_equal(cache["patches"][i], (ds[i]["patch"] * 255).round().to(torch.uint8).numpy())
    np.testing.assert_array_equal(cache["counts"], c2_sdata.tables["table"][sub, ["ERBB2", "ACTB"]].X.toarray())
    assert cache["section_names"].tolist() == ["C2"] and cache["size_px"].tolist() == [SIZE]
    assert cache["var_names"].tolist() == ["ERBB2", "ACTB"] and cache["index"].tolist() == sub.tolist()
    # The cache serves the same items (no image needed).
    cds = SpotPatchDataset.from_patch_cache(path, normalize=None)
    item = cds[3]
    assert set(item) == set(ds[3]) and item["index"] == 3
    torch.testing.assert_close(item["patch"], ds[3]["patch"], rtol=0, atol=0)
    torch.testing.assert_close(item["counts"], ds[3]["counts"])
    torch.testing.assert_close(item["array_coords"], ds[3]["array_coords"])
    # out=array fills a preallocated buffer.
    buf = np.zeros((10, 3, 112, 112), dtype=np.uint8)
    res = extract_patches(c2_sdata, out=buf, out_px=112, obs_subset=sub, return_counts=False)
    assert res["patches"] is buf and np.array_equal(buf, cache["patches"]) and "counts" not in res


def test_errors_on_real_data(c2_sdata, c2, her2st_dir):
    import scst

    with pytest.raises(KeyError, match="Table 'nope'"):
        SpotPatchDataset(c2_sdata, "nope")
    with pytest.raises(KeyError, match="genes"):
        SpotPatchDataset(c2_sdata, genes=["NOT_A_GENE"])
    with pytest.raises(KeyError, match="layer"):
        SpotPatchDataset(c2_sdata, layer="counts")
    with pytest.raises(KeyError, match="obs_subset"):
        SpotPatchDataset(c2_sdata, obs_subset=["C2_0x0"])
    with pytest.raises(ValueError, match="larger than"):
        SpotPatchDataset(c2_sdata, size_um=8000.0)
    del c2.images["C2_image"]
    with pytest.raises(KeyError, match="'C2_image' not in sdata.images"):
        SpotPatchDataset(c2)
    no_img = scst.datasets.her2st(["C2"], path=her2st_dir, images=False)
    with pytest.raises(ValueError, match="image_key'\\] is None"):
        SpotPatchDataset(no_img)


# ------------------------------------------------------------------------------------------------ synthetic
def test_border_padding_constant_and_reflect():
    img = _synthetic()
    # Centre (2.2, 3.0), 10 px: x0 = floor(2.2 - 5 + 0.5) = -3, y0 = floor(3 - 5 + 0.5) = -2.
    kw = {"size_px": 10, "normalize": None}
    const = SpotPatchDataset.from_arrays({"s": img}, [[2.2, 3.0]], ["s"], None, **kw)
    win = const.window(0)
    assert win.shape == (3, 10, 10)
    assert (win[:, :2, :] == 255).all() and (win[:, :, :3] == 255).all()
    np.testing.assert_array_equal(win[:, 2:, 3:], img[:, 0:8, 0:7])
    refl = SpotPatchDataset.from_arrays({"s": img}, [[2.2, 3.0]], ["s"], None, padding="reflect", **kw).window(0)
    np.testing.assert_array_equal(refl[:, 2:, 3:], img[:, 0:8, 0:7])
    np.testing.assert_array_equal(refl[:, 2:, 0], img[:, 0:8, 3])  # x = -3 mirrors x = 3
    np.testing.assert_array_equal(refl[:, 0, 3:], img[:, 2, 0:7])  # y = -2 mirrors y = 2
    # The exact answer everywhere: np.pad of the whole image, windows at the outermost pixels (np.pad of the
    # in-bounds block mirrored inside it: a ramp read [6 7 6 5 …] instead of [8 7 6 5 …])
    h, w = img.shape[1:]
    big = np.pad(img, ((0, 0), (2 * w, 2 * w), (2 * w, 2 * w)), mode="reflect")
    for (cx, cy), size in [((0.0, 10.0), 16), ((0.0, 0.0), 2), ((0.2, 3.0), 4), ((w - 0.5, h - 0.5), 16),
                           ((0.4, h - 0.6), 33)]:  # fmt: skip
        x0, y0 = int(np.floor(cx - size / 2 + 0.5)), int(np.floor(cy - size / 2 + 0.5))
        got = SpotPatchDataset.from_arrays({"s": img}, [[cx, cy]], ["s"], None, size_px=size, normalize=None,
                                           padding="reflect").window(0)  # fmt: skip
        want = big[:, y0 + 2 * w : y0 + 2 * w + size, x0 + 2 * w : x0 + 2 * w + size]
        np.testing.assert_array_equal(got, want, err_msg=f"centre {(cx, cy)}, {size} px")
    # Bottom-right corner, custom pad value.
    br = SpotPatchDataset.from_arrays({"s": img}, [[59.0, 49.0]], ["s"], None, pad_value=7, **kw).window(0)
    np.testing.assert_array_equal(br[:, :6, :6], img[:, 44:50, 54:60])
    assert (br[:, 6:, :] == 7).all() and (br[:, :, 6:] == 7).all()


def test_um_to_px_per_section_and_resize():
    imgs = {"a": _synthetic(), "b": _synthetic(seed=1)}
    ds = SpotPatchDataset.from_arrays(
        imgs, [[20, 20], [30, 25]], ["a", "b"], {"a": 0.5, "b": 0.25}, size_um=8.0, out_px=12, normalize=None
    )
    assert ds.size_px == {"a": 16, "b": 32}
    assert ds[0]["patch"].shape == ds[1]["patch"].shape == (3, 12, 12)
    with pytest.raises(ValueError, match="different window sizes"):
        SpotPatchDataset.from_arrays(imgs, [[20, 20], [30, 25]], ["a", "b"], {"a": 0.5, "b": 0.25}, size_um=8.0)


def test_augmentation_is_a_dihedral_map_of_the_patch():
    img = _synthetic()
    plain = SpotPatchDataset.from_arrays({"s": img}, [[30, 25]], [0], 1.0, size_um=16, normalize=None)
    aug = SpotPatchDataset.from_arrays({"s": img}, [[30, 25]], [0], 1.0, size_um=16, normalize=None, augment=True)
    ref = _dihedral(plain[0]["patch"])
    torch.manual_seed(0)
    seen = set()
    for _ in range(80):
        p = aug[0]["patch"]
        hits = [k for k, r in enumerate(ref) if torch.equal(p, r)]
        assert len(hits) == 1  # the 8 maps of a random patch are distinct
        seen.add(hits[0])
        assert torch.equal(p.flatten().sort().values, ref[0].flatten().sort().values)
    assert seen == set(range(8))


def test_transform_hook_runs_before_normalisation():
    img = _synthetic()
    ds = SpotPatchDataset.from_arrays(
        {"s": img}, [[30, 25]], [0], 1.0, size_um=10, transform=lambda x: 1 - x, normalize=([0.5] * 3, [0.25] * 3)
    )
    raw = torch.from_numpy(img[:, 20:30, 25:35].astype(np.float32) / 255)
    torch.testing.assert_close(ds[0]["patch"], ((1 - raw) - 0.5) / 0.25)


def test_sources_agree_and_cache_is_bounded(tmp_path):
    img = _synthetic(h=100, w=90, seed=3)
    z = zarr.open_array(tmp_path / "img.zarr", mode="w", shape=img.shape, chunks=(3, 16, 16), dtype="uint8")
    z[:] = img
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, [90, 100], size=(40, 2))
    secs = np.zeros(40, dtype=int)
    kw = {"size_px": 24, "normalize": None}
    dz = da.from_zarr(str(tmp_path / "img.zarr"))
    variants = {
        "numpy": SpotPatchDataset.from_arrays({"s": img}, xy, secs, None, **kw),
        "zarr": SpotPatchDataset.from_arrays({"s": z}, xy, secs, None, **kw),
        "zarr_path": SpotPatchDataset.from_arrays({"s": str(tmp_path / "img.zarr")}, xy, secs, None, **kw),
        "zarr_nocache": SpotPatchDataset.from_arrays({"s": z}, xy, secs, None, chunk_cache_mb=0, **kw),
        "dask_view": SpotPatchDataset.from_arrays({"s": dz}, xy, secs, None, **kw),
        "dask_compute": SpotPatchDataset.from_arrays({"s": dz.rechunk(20)}, xy, secs, None, **kw),
    }
    kinds = {k: v.sources["s"].kind for k, v in variants.items()}
    assert kinds == {
        "numpy": "array", "zarr": "zarr", "zarr_path": "zarr", "zarr_nocache": "zarr", "dask_view": "zarr",
        "dask_compute": "dask",
    }  # fmt: skip
    ref = np.stack([variants["numpy"].window(i) for i in range(40)])
    for name, ds in variants.items():
        np.testing.assert_array_equal(np.stack([ds.window(i) for i in range(40)]), ref, err_msg=name)
    # Two full chunks of 3*16*16 bytes fit in the budget; the cache never holds more.
    small = SpotPatchDataset.from_arrays({"s": z}, xy, secs, None, chunk_cache_mb=1600 / 2**20, **kw)
    for i in range(40):
        np.testing.assert_array_equal(small.window(i), ref[i])
        assert small._cache.nbytes <= 1600
    small.clear_cache()
    assert small._cache.nbytes == 0 and not small._cache._d
    # Pickling (DataLoader workers) drops the open store and the cache, and the copy reads the same windows.
    clone = pickle.loads(pickle.dumps(variants["zarr"]))
    assert clone.sources["s"]._z is None and clone._cache.nbytes == 0
    np.testing.assert_array_equal(clone.window(7), ref[7])


def test_array_inputs_counts_and_errors():
    img = _synthetic()
    counts = sparse.csr_matrix(np.array([[1, 0, 3], [0, 2, 0]]))
    ds = SpotPatchDataset.from_arrays(
        {"s": img}, [[10, 10], [40, 30]], ["s", "s"], 1.0, size_um=8, counts=counts, array_coords=[[1, 2], [3, 4]],
        index=[10, 11], normalize=None,
    )  # fmt: skip
    assert ds[1]["counts"].tolist() == [0, 2, 0] and ds[1]["array_coords"].tolist() == [3, 4]
    assert ds[1]["index"] == 11 and len(ds) == 2
    with pytest.raises(ValueError, match=r"Patch of 51 px \(51 µm\) is larger than"):
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], 1.0, size_um=51)
    with pytest.raises(ValueError, match=r"Patch of 64 px \(size_px\) is larger than"):  # no µm made up for px
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], 1.0, size_um=80.0, size_px=64)
    with pytest.raises(ValueError, match="outside"):
        SpotPatchDataset.from_arrays({"s": img}, [[70, 10]], ["s"], 1.0, size_um=8)
    with pytest.raises(KeyError, match="sections"):
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["t"], 1.0)
    with pytest.raises(ValueError, match="padding"):
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], 1.0, size_um=8, padding="wrap")
    with pytest.raises(ValueError, match="normalize"):
        SpotPatchDataset.from_arrays({"s": img[:2]}, [[10, 10]], ["s"], 1.0, size_um=8)
    with pytest.raises(ValueError, match="um_per_px"):
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], None)
    with pytest.raises(ValueError, match="3 dims"):
        SpotPatchDataset.from_arrays({"s": img[0]}, [[10, 10]], ["s"], 1.0)


@pytest.mark.parametrize(
    ("img_dtype", "bad"),
    [(np.uint8, 300), (np.uint8, -1), (np.uint8, 0.5), (np.uint8, float("nan")), (np.uint16, 70000),
     (np.float32, 255), (np.float32, -0.1), (np.float32, float("nan"))],
)  # fmt: skip
def test_pad_value_must_fit_the_image_dtype(img_dtype, bad):
    # Before: 300 wrapped to 44 on uint8, 0.5 and NaN became 0 — silently.
    img = np.full((3, 50, 50), 100, img_dtype) if img_dtype != np.float32 else np.full((3, 50, 50), 0.4, img_dtype)
    with pytest.raises(ValueError, match=r"^pad_value: expected (an integer in \[0, \d+\]|a number in \[0, 1\])"):
        SpotPatchDataset.from_arrays({"a": img}, [[1.0, 25.0]], ["a"], None, size_px=10, pad_value=bad, normalize=None)


def test_valid_pad_values_fill_the_border():
    img8 = np.full((3, 50, 50), 100, np.uint8)
    w = SpotPatchDataset.from_arrays({"a": img8}, [[1.0, 25.0]], ["a"], None, size_px=10, pad_value=np.uint8(7),
                                     normalize=None).window(0)  # fmt: skip
    assert (w[:, :, :4] == 7).all() and (w[:, :, 4:] == 100).all()  # x0 = floor(1 - 5 + 0.5) = -4
    imgf = np.full((3, 50, 50), 0.4, np.float32)
    ds = SpotPatchDataset.from_arrays({"a": imgf}, [[1.0, 25.0]], ["a"], None, size_px=10, pad_value=0.25,
                                      normalize=None)  # fmt: skip
    p = ds[0]["patch"].numpy()
    np.testing.assert_allclose(p[:, :, :4], 0.25)
    np.testing.assert_allclose(p[:, :, 4:], 0.4)  # (before: after `and`, never run)
    # reflect padding does not use pad_value: not checked there
    SpotPatchDataset.from_arrays({"a": img8}, [[1.0, 25.0]], ["a"], None, size_px=10, padding="reflect",
                                 pad_value=300, normalize=None)  # fmt: skip


def test_float_image_outside_0_1_is_refused():
    # Before: a float image in 0..255 (e.g. after a coarsening mean) gave all-white patches (clipped to 1), while
    # tissue_mask divides such images by 255 — the two disagreed silently.
    img = np.random.default_rng(0).uniform(0, 255, (3, 64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=r"images\['a'\]: float \(float32\) image with values in \[.*\]"):
        SpotPatchDataset.from_arrays({"a": img}, [[32.0, 32.0]], ["a"], None, size_px=16, normalize=None)
    ok = SpotPatchDataset.from_arrays({"a": img / 255}, [[32.0, 32.0]], ["a"], None, size_px=16, normalize=None)
    np.testing.assert_allclose(ok[0]["patch"].numpy(), img[:, 24:40, 24:40] / 255, rtol=1e-6)


@pytest.mark.parametrize("out_px", [None, 9, 8])
def test_float_image_slightly_outside_0_1_gives_patches_in_0_1_resized_or_not(out_px):
    # A float image overshooting [0, 1] within the accepted tolerance (resampling) gave patches outside [0, 1] when
    # the window was not resized (only resizing clipped), so handcrafted_features / embed_patches("handcrafted")
    # refused them at out_px == window and accepted them at any other out_px.
    from scst.pp import handcrafted_features

    img = np.random.default_rng(0).uniform(0, 1, (3, 40, 40)).astype(np.float32)
    img[:, :, :20] *= 1.0008
    img[0, 5, 5] = -0.0008
    ds = SpotPatchDataset.from_arrays({"a": img}, [[10.0, 10.0], [5.0, 5.0]], ["a", "a"], None, size_px=9,
                                      out_px=out_px, normalize=None)  # fmt: skip
    items = np.stack([ds[i]["patch"].numpy() for i in range(2)])
    batch = ds.patches_uint8([0, 1], float01=True)
    assert items.min() >= 0 and items.max() <= 1
    np.testing.assert_array_equal(batch, items)
    if out_px != 8:  # not resized: the window itself, clipped
        np.testing.assert_array_equal(items[0], np.clip(img[:, 6:15, 6:15], 0, 1))
    assert handcrafted_features(batch).shape == (2, 95)


def test_one_pixel_output_of_a_uint8_rgb_image():
    """out_px=1 on a 3-channel uint8 image: torch's uint8 antialiased resize fails an internal assert there (found by
    the property test); the float path gives the window's colour."""
    img = np.empty((3, 20, 20), np.uint8)
    img[:] = np.array([200, 100, 50], np.uint8)[:, None, None]
    ds = SpotPatchDataset.from_arrays({"S": img}, np.array([[10.0, 10.0]]), np.zeros(1, int), None,
                                      size_px=4, out_px=1, normalize=None)  # fmt: skip
    np.testing.assert_allclose(ds[0]["patch"].numpy().ravel(), [200 / 255, 100 / 255, 50 / 255], atol=1e-6)
    np.testing.assert_array_equal(ds.patch_uint8(0).ravel(), [200, 100, 50])


def test_batched_one_pixel_patches_of_a_uint8_rgb_image_equal_the_single_ones():
    """patches_uint8 (batches of embed_patches, image models, PatchBatches) with out_px=1 failed torch's internal
    assert, where patch_uint8 / __getitem__ of the same spots worked: the batch must equal the single patches."""
    img = _synthetic(h=30, w=30, seed=3)
    xy = np.array([[10.0, 10.0], [20.5, 7.25], [3.0, 25.0]])
    ds = SpotPatchDataset.from_arrays({"S": img}, xy, np.zeros(3, int), None, size_px=6, out_px=1, normalize=None)
    single = np.stack([ds.patch_uint8(i) for i in range(3)])
    np.testing.assert_array_equal(ds.patches_uint8([0, 1, 2]), single)
    np.testing.assert_array_equal(ds.patches_uint8([2, 0]), single[[2, 0]])  # any order, any subset
    items = np.stack([ds[i]["patch"].numpy() for i in range(3)])
    np.testing.assert_array_equal(ds.patches_uint8([0, 1, 2], float01=True), items)


def test_window_origin_rounds_halves_up_and_size_rounds_to_nearest():
    img = _synthetic()
    kw = {"size_px": 10, "normalize": None}
    # Centre 7.5 and 8.5, 10 px: centre - 5 = 2.5 / 3.5 -> origin 3 / 4 (halves up, not to even).
    for c, x0 in ((7.5, 3), (8.5, 4), (8.49, 3)):
        ds = SpotPatchDataset.from_arrays({"s": img}, [[c, 20.0]], ["s"], None, **kw)
        np.testing.assert_array_equal(ds.window(0), img[:, 15:25, x0 : x0 + 10])
    # size_um / um_per_px = 10.6 -> 11 px (nearest), 10.4 -> 10 px.
    assert SpotPatchDataset.from_arrays({"s": img}, [[20, 20]], ["s"], 1.0, size_um=10.6).size_px == {"s": 11}
    assert SpotPatchDataset.from_arrays({"s": img}, [[20, 20]], ["s"], 1.0, size_um=10.4).size_px == {"s": 10}


def test_a_window_as_large_as_the_image_is_allowed():
    img = _synthetic(h=20, w=30)
    ds = SpotPatchDataset.from_arrays({"s": img}, [[15.0, 10.0]], ["s"], None, size_px=20, normalize=None)
    np.testing.assert_array_equal(ds.window(0), img[:, :, 5:25])
    with pytest.raises(ValueError, match="larger than"):
        SpotPatchDataset.from_arrays({"s": img}, [[15.0, 10.0]], ["s"], None, size_px=21)


# ------------------------------------------------------------------------------------------------ mutation sweep
def _tiny_sdata(sections=("a", "b"), h=40, w=50, section_of=("a", "a", "b"), xy=((10, 10), (30, 20), (20, 30))):
    """Sections with a 3 x h x w image each at 1 µm/px and a table of spots on them."""
    import anndata as ad
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    images = {
        f"{s}_image": Image2DModel.parse(
            _synthetic(h, w, seed=k), dims=("c", "y", "x"), transformations={s: Identity()}
        )
        for k, s in enumerate(sections)
    }
    obs = pd.DataFrame({"section": pd.Categorical(section_of, categories=list(sections))})
    obs.index = [f"spot{i}" for i in range(len(obs))]
    t = ad.AnnData(np.arange(2 * len(obs), dtype=np.float32).reshape(-1, 2), obs=obs)
    t.obsm["spatial"] = np.asarray(xy, dtype=float)
    t.uns["scst"] = {
        "sections": {s: {"image_key": f"{s}_image", "um_per_px": 1.0, "coordinate_system": s} for s in sections}
    }
    return SpatialData(images=images, tables={"table": t})


def test_chunk_cache_reads_exactly_the_chunks_under_a_window(tmp_path):
    # 16 px chunks; a 16 px window centred on 24 starts at floor(24 - 8 + 0.5) = 16 and ends at 32 (exclusive): it
    # is chunk (1, 1) and nothing else (a window ending on a chunk boundary must not read the next chunk).
    img = _synthetic(h=64, w=64, seed=2)
    z = zarr.open_array(tmp_path / "img.zarr", mode="w", shape=img.shape, chunks=(3, 16, 16), dtype="uint8")
    z[:] = img
    ds = SpotPatchDataset.from_arrays({"s": z}, [[24.0, 24.0], [40.0, 8.0]], ["s", "s"], None, size_px=16,
                                      normalize=None)  # fmt: skip
    np.testing.assert_array_equal(ds.window(0), img[:, 16:32, 16:32])
    assert list(ds._cache._d) == [("s", 1, 1)]
    # Centre (40, 8): x 32:48, y 0:16 -> chunk row 0, column 2; the window below y = 0 is padding, not a chunk.
    np.testing.assert_array_equal(ds.window(1), img[:, 0:16, 32:48])
    assert list(ds._cache._d) == [("s", 1, 1), ("s", 0, 2)]


def test_chunk_lru_keeps_the_budget_exactly_and_evicts_the_least_recently_used():
    from scst.pp._patches import _ChunkLRU

    blk = np.zeros(100, np.uint8)
    lru = _ChunkLRU(200)
    lru.put("a", blk)
    lru.put("b", blk.copy())
    assert list(lru._d) == ["a", "b"] and lru.nbytes == 200  # exactly the budget: both stay
    assert lru.get("a") is blk  # "a" is now the most recently used ...
    lru.put("c", blk.copy())
    assert list(lru._d) == ["a", "c"] and lru.nbytes == 200  # ... so "b" goes, not "a" nor the new "c"
    assert lru.get("b") is None
    whole = _ChunkLRU(200)
    whole.put("w", np.zeros(200, np.uint8))  # a block of exactly the budget is kept
    assert list(whole._d) == ["w"]
    whole.put("x", np.zeros(201, np.uint8))  # one larger than the budget is never cached (nor evicts anything)
    assert list(whole._d) == ["w"] and whole.nbytes == 200


def test_uint16_images_scale_by_65535_and_round_to_uint8():
    # 1000 / 65535 * 255 = 3.89 -> 4 (rounded, not truncated to 3); 40000 -> 155.65 -> 156.
    img = np.full((3, 20, 20), 1000, np.uint16)
    img[:, :, 10:] = 40000
    ds = SpotPatchDataset.from_arrays({"s": img}, [[10.0, 10.0]], ["s"], None, size_px=4, normalize=None)
    p = ds[0]["patch"].numpy()
    np.testing.assert_allclose(p[:, :, :2], 1000 / 65535, rtol=1e-6)
    np.testing.assert_allclose(p[:, :, 2:], 40000 / 65535, rtol=1e-6)
    expect = np.full((3, 4, 4), 4, np.uint8)
    expect[:, :, 2:] = 156
    np.testing.assert_array_equal(ds.patch_uint8(0), expect)
    np.testing.assert_array_equal(ds.patches_uint8([0, 0]), np.stack([expect, expect]))
    np.testing.assert_allclose(ds.patches_uint8([0], float01=True)[0], p, rtol=1e-6)
    # A uint8 image: float01 patches are exactly patches_uint8 / 255.
    img8 = _synthetic()
    ds8 = SpotPatchDataset.from_arrays({"s": img8}, [[20.0, 20.0], [31.5, 12.5]], ["s", "s"], None, size_px=7,
                                       normalize=None)  # fmt: skip
    u8 = ds8.patches_uint8([0, 1])
    np.testing.assert_array_equal(u8[1], img8[:, 9:16, 28:35])
    np.testing.assert_array_equal(ds8.patches_uint8([0, 1], float01=True), u8.astype(np.float32) / 255)


@pytest.mark.parametrize(("dtype", "value"), [(np.uint8, 0), (np.uint8, 255), (np.float32, 0.0), (np.float32, 1.0)])
def test_pad_values_at_the_ends_of_the_dtype_range_are_valid(dtype, value):
    img = np.full((3, 50, 50), 100 if dtype == np.uint8 else 0.4, dtype)
    w = SpotPatchDataset.from_arrays({"a": img}, [[1.0, 25.0]], ["a"], None, size_px=10, pad_value=value,
                                     normalize=None).window(0)  # fmt: skip
    assert (w[:, :, :4] == value).all() and (w[:, :, 4:] == img[0, 0, 0]).all()


def test_float_range_check_reads_the_first_spots_window_at_x_y():
    # Values in 0..255 only in the top-right corner (x >= 40, y < 20), where the first spot (x 50, y 10) lies; the
    # window at the swapped position (x 10, y 50) is fine. Negative values are refused as well.
    img = np.full((3, 60, 60), 0.5, np.float32)
    img[:, :20, 40:] = 200.0
    with pytest.raises(ValueError, match=r"float \(float32\) image with values in \[200, 200\]"):
        SpotPatchDataset.from_arrays({"a": img}, [[50.0, 10.0], [10.0, 50.0]], ["a", "a"], None, size_px=8)
    ok = SpotPatchDataset.from_arrays({"a": img}, [[10.0, 50.0], [50.0, 10.0]], ["a", "a"], None, size_px=8)
    assert len(ok) == 2  # only the first spot's window is checked
    neg = np.full((3, 60, 60), 0.5, np.float32)
    neg[:, 20:40, 20:40] = -0.5
    with pytest.raises(ValueError, match=r"values in \[-0\.5, 0\.5\]"):
        SpotPatchDataset.from_arrays({"a": neg}, [[30.0, 30.0]], ["a"], None, size_px=30)


def test_indexing_past_the_end_raises_and_negative_indices_wrap():
    img = _synthetic()
    ds = SpotPatchDataset.from_arrays({"s": img}, [[10, 10], [40, 30]], ["s", "s"], 1.0, size_um=8, index=[7, 8],
                                      normalize=None)  # fmt: skip
    assert ds[-1]["index"] == 8 and ds[-2]["index"] == 7
    for bad in (2, -3):
        with pytest.raises(IndexError, match="out of range for 2 spots"):
            ds[bad]
    assert [item["index"] for item in ds] == [7, 8]  # iteration stops at the end


def test_locality_order_visits_chunk_rows_then_columns(tmp_path):
    # 16 px chunks. A (x 40, y 5) is in chunk row 0, column 2; B (x 5, y 40) in chunk row 2, column 0; C and D share
    # chunk (0, 0) and go by x. Order: chunk row, then chunk column, then x.
    img = _synthetic(h=64, w=64)
    z = zarr.open_array(tmp_path / "img.zarr", mode="w", shape=img.shape, chunks=(3, 16, 16), dtype="uint8")
    z[:] = img
    xy = [[5.0, 40.0], [40.0, 5.0], [9.0, 3.0], [2.0, 12.0]]  # B, A, D, C
    ds = SpotPatchDataset.from_arrays({"s": z}, xy, ["s"] * 4, None, size_px=4, normalize=None)
    assert ds.locality_order().tolist() == [3, 2, 1, 0]


def test_obs_subset_positions_wrap_like_numpy_and_are_bounded():
    sd = _tiny_sdata()
    ds = SpotPatchDataset(sd, obs_subset=[-1, 0], size_px=6, normalize=None)
    assert [ds[0]["index"], ds[1]["index"]] == [2, 0]
    assert ds.obs_names.tolist() == ["spot2", "spot0"] and ds[0]["counts"].tolist() == [4.0, 5.0]
    for bad in ([3], [-4]):
        with pytest.raises(IndexError, match=r"obs_subset: integer positions must lie in \[0, 3\)"):
            SpotPatchDataset(sd, obs_subset=bad, size_px=6)


def test_missing_section_of_a_selected_spot_is_an_error():
    import pandas as pd

    sd = _tiny_sdata()
    sd.tables["table"].obs["section"] = pd.Categorical(["a", None, "b"], categories=["a", "b"])
    with pytest.raises(ValueError, match=r"obs\['section'\] has missing values for selected spots"):
        SpotPatchDataset(sd, size_px=6)
    assert len(SpotPatchDataset(sd, obs_subset=[0, 2], size_px=6)) == 2  # spots with a section are fine


def test_extract_patches_marks_sections_without_selected_spots():
    sd = _tiny_sdata()
    res = extract_patches(sd, size_px=6, obs_subset=[0, 1], return_counts=False)
    assert res["section_names"].tolist() == ["a", "b"]
    assert res["size_px"].tolist() == [6, -1]
    assert res["um_per_px"][0] == 1.0 and np.isnan(res["um_per_px"][1])
    np.testing.assert_array_equal(res["patches"][1], _synthetic(40, 50, seed=0)[:, 17:23, 27:33])  # (30, 20)
    # a negative number of workers read in the main process without a word
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="num_workers: expected an integer >= 0"):
            extract_patches(sd, size_px=6, obs_subset=[0, 1], return_counts=False, num_workers=bad)


def test_more_argument_checks_of_the_array_and_cache_builders():
    img = _synthetic()
    with pytest.raises(ValueError, match=r"sections: integer codes must lie in \[0, 1\)"):
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], [1], None, size_px=4)
    with pytest.raises(ValueError, match="chunk_cache_mb: expected >= 0"):
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], [0], None, size_px=4, chunk_cache_mb=-0.5)
    with pytest.raises(ValueError, match=r"cache\['patches'\]: expected \(n, c, p, p\)"):
        SpotPatchDataset.from_patch_cache({"patches": np.zeros((2, 3, 4, 5), np.uint8)})


def test_booleans_are_no_window_sizes_numpy_scalars_are():
    """size_px=True / size_um=True were 1 px windows and out_px=True a 1 px output; a NaN chunk budget failed
    inside int(). numpy scalars stay valid."""
    img = _synthetic()
    ds = SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], np.float32(1.0), size_um=np.float32(4.0))
    assert ds.size_px == {"s": 4} and ds.out_px == 4
    assert SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], None, size_px=np.int64(4)).size_px == {"s": 4}
    for kw, name in (
        ({"size_px": True}, "size_px"),
        ({"size_px": 4, "out_px": True}, "out_px"),
        ({"size_um": True}, "size_um"),
        ({"size_um": "4"}, "size_um"),
        ({"size_px": 4, "chunk_cache_mb": np.nan}, "chunk_cache_mb"),
        ({"size_px": np.nan}, "size_px"),  # NaN and inf failed inside int() without the argument's name
        ({"size_px": np.inf}, "size_px"),
        ({"size_px": 4, "out_px": np.nan}, "out_px"),
        ({"size_px": 4.5}, "size_px"),
        ({"size_px": "4"}, "size_px"),
    ):
        with pytest.raises(ValueError, match=f"{name}: expected"):
            SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], 1.0, **kw)
    # an integral float is a size (pixel sizes often come out of arithmetic)
    assert (
        SpotPatchDataset.from_arrays({"s": img}, [[10, 10]], ["s"], None, size_px=4.0, out_px=np.float32(2)).out_px == 2
    )


def test_a_patch_cache_keeps_the_window_size_and_pixel_size_of_the_images():
    """10 µm windows (10 px at 1 µm/px) stored resized to 4 px: the dataset over the cache said size_px 4 and
    um_per_px NaN; it reports the windows that were cut, like the image-backed dataset."""
    sd = _tiny_sdata()
    res = extract_patches(sd, size_um=10.0, out_px=4, obs_subset=[0, 1], return_counts=False)
    ds = SpotPatchDataset.from_patch_cache(res, normalize=None)
    assert ds.size_px == {"a": 10} and ds.um_per_px["a"] == 1.0 and ds.out_px == 4
    np.testing.assert_array_equal(ds.patch_uint8(1), res["patches"][1])


# ------------------------------------------------------------------------------------------------ coverage: paths
def test_repr_names_windows_output_and_genes():
    sd = _tiny_sdata()
    ds = SpotPatchDataset(sd, size_px=6, out_px=4, normalize=None)
    assert repr(ds) == "SpotPatchDataset(n=3, sections=2, window {a: 6 px, b: 6 px} -> 4 px, counts=2 genes)"
    ds = SpotPatchDataset(sd, size_px=6, obs_subset=[0], return_counts=False, normalize=None)
    assert repr(ds) == "SpotPatchDataset(n=1, sections=1, window {a: 6 px} -> 6 px, counts=None genes)"


def test_layer_string_sections_and_boolean_subset():
    sd = _tiny_sdata()
    t = sd.tables["table"]
    t.layers["counts"] = t.X * 10
    t.obs["section"] = t.obs["section"].astype(str)  # plain strings, not categorical
    ds = SpotPatchDataset(sd, layer="counts", obs_subset=np.array([False, True, True]), size_px=6, normalize=None)
    assert ds.index.tolist() == [1, 2] and ds.section_names == ["a", "b"] and ds.codes.tolist() == [0, 1]
    assert ds[1]["counts"].tolist() == [40.0, 50.0]  # row 2 of X = [4, 5], times 10
    np.testing.assert_array_equal(ds.window(1), _synthetic(40, 50, seed=1)[:, 27:33, 17:23])  # spot (20, 30) of b
    with pytest.raises(ValueError, match=r"obs_subset: boolean mask of length \(2,\) does not match n_obs = 3"):
        SpotPatchDataset(sd, obs_subset=np.array([True, False]), size_px=6)


def test_a_dask_image_that_is_no_zarr_view_is_computed():
    img = _synthetic(h=30, w=40, seed=2)
    xy, secs = [[5.0, 5.0], [20.0, 15.0], [39.0, 29.0]], [0, 0, 0]
    dask_img = da.from_array(img.astype(np.int16), chunks=(3, 10, 10)) + np.int16(1)  # two layers, no zarr
    ds = SpotPatchDataset.from_arrays({"s": dask_img}, xy, secs, None, size_px=8, normalize=None)
    assert ds.sources["s"].kind == "dask"
    ref = SpotPatchDataset.from_arrays({"s": img.astype(np.int16) + 1}, xy, secs, None, size_px=8, normalize=None)
    for i in range(3):
        np.testing.assert_array_equal(ds.window(i), ref.window(i))


def test_a_new_process_reopens_the_zarr_store_with_its_cache_budget(tmp_path):
    """window() in a process other than the one that built the dataset (a DataLoader worker) drops the zarr handle
    and starts a cache of the full budget when there are no worker infos; the window is unchanged."""
    img = _synthetic(h=40, w=40, seed=4)
    z = zarr.open_array(tmp_path / "img.zarr", mode="w", shape=img.shape, chunks=(3, 16, 16), dtype="uint8")
    z[:] = img
    ds = SpotPatchDataset.from_arrays({"s": z}, [[20.0, 20.0]], [0], None, size_px=8, chunk_cache_mb=1.0)
    ref = ds.window(0)
    old_cache = ds._cache
    assert old_cache.nbytes > 0 and ds.sources["s"]._z is z
    ds._pid = -1  # as after a fork
    np.testing.assert_array_equal(ds.window(0), ref)
    assert ds._pid == os.getpid()
    assert ds._cache is not old_cache and ds._cache.max_bytes == 2**20 and ds._cache.nbytes == old_cache.nbytes
    assert ds.sources["s"]._z is not None and ds.sources["s"]._z is not z  # reopened from its folder


def test_float_image_without_finite_values_in_the_first_window():
    img = np.full((3, 30, 30), 0.5, np.float32)
    img[:, :10, :10] = np.nan  # the first spot's window: nothing to check the range on
    ds = SpotPatchDataset.from_arrays({"s": img}, [[4.0, 4.0], [20.0, 20.0]], [0, 0], None, size_px=6, normalize=None)
    np.testing.assert_array_equal(ds.window(1), img[:, 17:23, 17:23])


def test_uint8_view_and_collate_of_the_extract_patches_loader():
    from scst.pp._patches import _stack_uint8, _Uint8View

    sd = _tiny_sdata()
    ds = SpotPatchDataset(sd, size_px=6, normalize=None)
    view = _Uint8View(ds)
    assert len(view) == 3
    idx, batch = _stack_uint8([view[2], view[0]])
    assert idx.dtype == np.int64 and idx.tolist() == [2, 0]
    np.testing.assert_array_equal(batch, np.stack([ds.patch_uint8(2), ds.patch_uint8(0)]))


def test_extract_patches_into_an_array_and_bad_out():
    sd = _tiny_sdata()
    out = np.zeros((3, 3, 6, 6), np.uint8)
    res = extract_patches(sd, size_px=6, out=out, return_counts=False)
    assert res["patches"] is out
    np.testing.assert_array_equal(out[0], _synthetic(40, 50, seed=0)[:, 7:13, 7:13])  # spot (10, 10) of a
    with pytest.raises(ValueError, match=r"out: expected a uint8 array of shape \(3, 3, 6, 6\), got float32"):
        extract_patches(sd, size_px=6, out=out.astype(np.float32), return_counts=False)
    with pytest.raises(TypeError, match="out: expected None, a path or a numpy array, got list"):
        extract_patches(sd, size_px=6, out=[], return_counts=False)


@pytest.mark.parametrize(
    ("args", "kw", "err", "match"),
    [
        (({}, [[10, 10]], ["s"], 1.0), {}, TypeError, "images: expected a non-empty mapping"),
        (([_synthetic()], [[10, 10]], ["s"], 1.0), {}, TypeError, "images: expected a non-empty mapping"),
        (({"s": [[[0]]]}, [[10, 10]], ["s"], 1.0), {}, TypeError, r"images\['s'\]: expected an array-like.*got list"),
        (({"s": _synthetic()}, [10, 10], ["s"], 1.0), {}, ValueError, r"centers: expected shape \(n, 2\).*got \(2,\)"),
        (({"s": _synthetic()}, [[10, 10]], ["s", "s"], 1.0), {}, ValueError, r"sections: expected shape \(1,\)"),
        (({"s": _synthetic()}, [[10, 10]], ["s"], {"t": 1.0}), {}, KeyError, r"um_per_px: no value for.*\['s'\]"),
        (({"s": _synthetic()}, [[10, 10]], ["s"], {"s": 0.0}), {}, ValueError, "um_per_px: section 's' needs a pos"),
        (
            ({"s": _synthetic()}, [[10, 10]], ["s"], 1.0),
            {"counts": np.ones((2, 3))},
            ValueError,
            "counts: expected 1 rows like centers, got 2",
        ),
        (
            ({"s": _synthetic()}, [[10, 10]], ["s"], 1.0),
            {"array_coords": [1, 2]},
            ValueError,
            r"array_coords: expected shape \(1, 2\), got \(2,\)",
        ),
        (
            ({"s": _synthetic()}, [[10, 10]], ["s"], 1.0),
            {"index": [1, 2]},
            ValueError,
            r"index: expected shape \(1,\), got \(2,\)",
        ),
        (
            ({"s": _synthetic()}, [[10, 10]], ["s"], 1.0),
            {"transform": "flip"},
            TypeError,
            "transform: expected a callable, got str",
        ),
        (
            ({"s": _synthetic(), "t": _synthetic()[:2]}, [[10, 10], [10, 10]], ["s", "t"], 1.0),
            {"normalize": None},
            ValueError,
            r"images: sections have different channel counts \[2, 3\]",
        ),
        (
            ({"s": _synthetic()}, [[10, 10]], ["s"], 1.0),
            {"normalize": "imagnet"},
            ValueError,
            "normalize: expected 'imagenet', \\(mean, std\\) or None, got 'imagnet'",
        ),
        (
            ({"s": _synthetic()}, [[10, 10]], ["s"], 1.0),
            {"normalize": 0.5},
            ValueError,
            r"normalize: expected 'imagenet', a \(mean, std\) pair or None",
        ),
        (
            ({"s": _synthetic()}, [[10, 10]], ["s"], 1.0),
            {"pad_value": "white"},
            ValueError,
            r"pad_value: expected an integer in \[0, 255\].*got 'white'",
        ),
    ],
)
def test_from_arrays_bad_input(args, kw, err, match):
    with pytest.raises(err, match=match):
        SpotPatchDataset.from_arrays(*args, **{"size_um": 8.0, **kw})


def test_from_arrays_bad_paths_and_dims(tmp_path):
    import xarray as xr

    with pytest.raises(ValueError, match=r"images\['s'\]: '.*nothing.zarr' is not a readable zarr array"):
        SpotPatchDataset.from_arrays({"s": str(tmp_path / "nothing.zarr")}, [[1, 1]], ["s"], 1.0, size_um=2.0)
    yxc = xr.DataArray(np.zeros((20, 20, 3), np.uint8), dims=("y", "x", "c"))
    with pytest.raises(ValueError, match=r"Image 's': expected dims \('c', 'y', 'x'\), got \('y', 'x', 'c'\)"):
        SpotPatchDataset.from_arrays({"s": yxc}, [[1, 1]], ["s"], 1.0, size_um=2.0)
    with pytest.raises(KeyError, match=r"cache: no 'patches' array \(keys: \['counts'\]\)"):
        SpotPatchDataset.from_patch_cache({"counts": np.zeros((2, 3))})


def test_spatialdata_constructor_bad_input():
    sd = _tiny_sdata()
    with pytest.raises(TypeError, match="sdata: expected a SpatialData object, got AnnData"):
        SpotPatchDataset(sd.tables["table"])
    geos = sd.tables["table"].uns["scst"]["sections"]
    del geos["b"]
    with pytest.raises(KeyError, match=r"Section 'b': no geometry in uns\['scst'\]\['sections'\] \(have \['a'\]\)"):
        SpotPatchDataset(sd, size_px=6)
    geos["a"]["um_per_px"] = None
    with pytest.raises(ValueError, match="Section 'a': um_per_px unknown; pass size_px instead of size_um"):
        SpotPatchDataset(sd, obs_subset=[0])
    assert SpotPatchDataset(sd, obs_subset=[0], size_px=6).size_px == {"a": 6}
    del sd.tables["table"].uns["scst"]
    with pytest.raises(KeyError, match=r"uns\['scst'\]\['sections'\] not found"):
        SpotPatchDataset(sd, size_px=6)


def test_an_in_memory_zarr_image_travels_with_the_pickle_and_a_worker_reads_the_same_windows():
    """A zarr array in a store that is not a local folder (memory; remote stores likewise) cannot be reopened by
    path: pickling (spawned DataLoader workers) keeps the array, and a worker process reads the same windows.
    Numpy sources have nothing to reopen."""
    img = _synthetic(h=40, w=40, seed=5)
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=img.shape, chunks=(3, 16, 16), dtype="uint8")
    z[:] = img
    for image, kind in ((z, "zarr"), (img, "array")):
        ds = SpotPatchDataset.from_arrays({"s": image}, [[20.2, 20.7], [5, 5]], [0, 0], None, size_px=10,
                                          normalize=None)  # fmt: skip
        clone = pickle.loads(pickle.dumps(ds))
        assert clone.sources["s"].kind == kind
        np.testing.assert_array_equal(clone.window(0), img[:, 16:26, 15:25])
        clone._pid = -1  # as in a DataLoader worker: the sources are reopened
        np.testing.assert_array_equal(clone.window(0), img[:, 16:26, 15:25])
        np.testing.assert_array_equal(clone.window(1), ds.window(1))


def test_a_patch_cache_of_patches_only_has_the_stored_edge_and_unknown_pixel_size():
    """A cache without the image geometry (a hand-made dict, or one written before ``size_px``/``um_per_px`` were
    stored): one section "0", windows of the stored edge, pixel size NaN; the patches are served as stored."""
    patches = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    ds = SpotPatchDataset.from_patch_cache({"patches": patches}, normalize=None, return_counts=False)
    assert ds.section_names == ["0"] and ds.size_px == {"0": 4} and np.isnan(ds.um_per_px["0"]) and len(ds) == 2
    item = ds[1]
    assert item["index"] == 1
    torch.testing.assert_close(item["patch"], torch.from_numpy(patches[1].astype(np.float32) / 255))
    # geometry for another number of sections than the cache names is not applied to the wrong sections
    ds = SpotPatchDataset.from_patch_cache(
        {"patches": patches, "size_px": np.array([10, 12]), "um_per_px": np.array([1.0, 2.0])}, normalize=None
    )
    assert ds.size_px == {"0": 4} and np.isnan(ds.um_per_px["0"])
