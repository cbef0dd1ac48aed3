"""Whole-slide images read lazily tile by tile; JPEG/PNG/TIFF converted to the zarr cache in strips."""

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from scst.io import read_wsi
from scst.io._image import CHUNK_PX, cached_image


def _texture(h, w):
    """An RGB image whose pixel values say where they are (x mod 256, y mod 256, (x + y) mod 256)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)


def _pyramidal_tiff(path, img, mpp=0.5, levels=3, tile=256):
    res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(tile, tile), subifds=levels - 1, photometric="rgb", **res)
        for k in range(1, levels):
            tw.write(img[:: 2**k, :: 2**k], tile=(tile, tile), subfiletype=1, photometric="rgb")


def test_read_wsi_pyramid_is_lazy_and_exact(tmp_path):
    img = _texture(1500, 2100)
    _pyramidal_tiff(tmp_path / "slide.tif", img)
    sd = read_wsi(tmp_path / "slide.tif", sample="S1")
    el = sd.images["S1_image"]
    assert [tuple(el[f"scale{k}"]["image"].shape) for k in range(3)] == [(3, 1500, 2100), (3, 750, 1050), (3, 375, 525)]
    data = el["scale0"]["image"].data
    assert data.chunksize == (3, 256, 256)  # one dask chunk per TIFF tile: windows read only their tiles
    np.testing.assert_array_equal(data[:, 1000:1010, 300:305].compute(), np.moveaxis(img[1000:1010, 300:305], -1, 0))
    np.testing.assert_array_equal(el["scale2"]["image"].data[:, 10, 20].compute(), img[40, 80])
    assert sd.attrs["scst"]["um_per_px"] == pytest.approx(0.5)
    assert sd.attrs["scst"]["image_shape"] == [1500, 2100]
    from spatialdata.transformations import get_transformation

    t = get_transformation(el["scale1"]["image"], "S1")
    np.testing.assert_allclose(t.to_affine_matrix(("x", "y"), ("x", "y"))[:2, :2], np.diag([2.0, 2.0]))


def test_read_wsi_options_and_errors(tmp_path):
    img = _texture(600, 700)
    _pyramidal_tiff(tmp_path / "a.tif", img, levels=2)
    sd = read_wsi(tmp_path / "a.tif", um_per_px=0.25, min_level_px=400)
    assert list(sd.images) == ["a_image"] and list(sd.images["a_image"]) == ["scale0"]  # 300 px level left out
    assert sd.attrs["scst"]["um_per_px"] == 0.25
    Image.fromarray(img).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="not a whole-slide image.*read_st"):
        read_wsi(tmp_path / "a.png")
    (tmp_path / "bad.svs").write_bytes(b"not a slide")
    with pytest.raises(ValueError, match="cannot open .*bad.svs as a whole-slide image"):
        read_wsi(tmp_path / "bad.svs")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_wsi(tmp_path / "missing.svs")
    with pytest.raises(ValueError, match="um_per_px"):
        read_wsi(tmp_path / "a.tif", um_per_px=0)
    _pyramidal_tiff(tmp_path / "b.tif", img, mpp=None, levels=2)
    with pytest.warns(UserWarning, match="b.tif records no pixel size and um_per_px was not given"):
        sd = read_wsi(tmp_path / "b.tif")
    assert sd.attrs["scst"]["um_per_px"] is None


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "grey.png"])
def test_cache_conversion_in_strips_is_exact(tmp_path, fmt):
    """Strip-wise conversion (rows not a multiple of the strip height) gives the image's own pixels."""
    h, w = CHUNK_PX * 2 + 77, 1300
    img = _texture(h, w)
    path = tmp_path / f"he.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(path, img, photometric="rgb")
    elif fmt == "grey.png":
        img = img[..., :1].repeat(3, -1)
        Image.fromarray(img[..., 0]).save(path)
    else:
        Image.fromarray(img).save(path, quality=100)
    el = cached_image(path, "S", cache=tmp_path / "cache")
    got = el["scale0"]["image"].data.compute()
    assert got.shape == (3, h, w)
    if fmt == "jpg":  # lossy: compare with Pillow's decoding of the same file
        img = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(got, np.moveaxis(img, -1, 0))
    assert tuple(el["scale4"]["image"].shape) == (3, h // 16, w // 16)


def test_whole_slide_full_level_goes_to_the_cache(tmp_path):
    """A pyramidal slide (here a TIFF named .svs) given to read_st's cache: its full-resolution level, exactly."""
    img = _texture(700, 900)
    _pyramidal_tiff(tmp_path / "slide.svs", img, levels=2)
    el = cached_image(tmp_path / "slide.svs", "S", cache=tmp_path / "cache")
    np.testing.assert_array_equal(el["scale0"]["image"].data.compute(), np.moveaxis(img, -1, 0))


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    """Two threads ask for the cache of one new image at once: one converts, the other waits and opens its store
    (without the lock both convert, and the second swaps the store the first already reads)."""
    import threading
    import time

    import scst.io._image as image_mod

    img = _texture(300, 400)
    Image.fromarray(img).save(tmp_path / "he.png")
    calls = []
    convert = image_mod._convert

    def slow_convert(path, store):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # both threads are inside cached_image before the first conversion ends
        convert(path, store)

    monkeypatch.setattr(image_mod, "_convert", slow_convert)
    got, errors = [], []

    def ask():
        try:
            got.append(cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")["scale0"]["image"].data)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1 and len(got) == 2
    for arr in got:
        np.testing.assert_array_equal(arr.compute(), np.moveaxis(img, -1, 0))
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [
        image_mod.image_cache_path(tmp_path / "he.png", tmp_path / "cache").name
    ]


def test_intact_cache_opens_without_the_lock(tmp_path, monkeypatch):
    """Only a conversion takes the lock: an intact cache (e.g. a lab's read-only shared one) opens without writing."""
    import filelock

    img = _texture(200, 300)
    Image.fromarray(img).save(tmp_path / "he.png")
    cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")

    def no_lock(*args, **kwargs):
        raise AssertionError("an intact cache took the lock")

    monkeypatch.setattr(filelock, "FileLock", no_lock)
    el = cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")
    np.testing.assert_array_equal(el["scale0"]["image"].data.compute(), np.moveaxis(img, -1, 0))


# ------------------------------------------------------------------------------------------------ mutation sweep
def test_16_bit_and_grey_alpha_images_convert_to_uint8_rgb(tmp_path):
    # 16-bit v -> v // 257 (65535 -> 255): 257 k + 128 -> k (// 256 would give k + 1 for k >= 128).
    k = _texture(32, 48) + 128  # 128..206
    tifffile.imwrite(tmp_path / "a.tif", k.astype(np.uint16) * 257 + 128, photometric="rgb")
    el = cached_image(tmp_path / "a.tif", "S", cache=tmp_path / "cache")
    np.testing.assert_array_equal(el["scale0"]["image"].data.compute(), np.moveaxis(k, -1, 0))
    # Grey + alpha: the grey repeated in R, G and B, alpha dropped.
    la = np.stack([k[..., 0], np.full((32, 48), 200, np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    got = cached_image(tmp_path / "la.png", "S", cache=tmp_path / "cache")["scale0"]["image"].data.compute()
    np.testing.assert_array_equal(got, np.repeat(k[None, ..., 0], 3, axis=0))


def test_smallest_image_for_the_pyramid_and_cache_key_and_grown_files(tmp_path):
    import os

    from scst.io._image import check_image_cache, image_cache_path

    Image.fromarray(_texture(16, 20)).save(tmp_path / "he.png")  # 16 px: the coarsest level is 1 px tall
    el = cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")
    assert tuple(el["scale4"]["image"].shape) == (3, 1, 1)
    store = image_cache_path(tmp_path / "he.png", tmp_path / "cache")
    os.utime(tmp_path / "he.png", ns=(10**18, 10**18))  # same size, another modification time: another cache
    assert image_cache_path(tmp_path / "he.png", tmp_path / "cache") != store
    chunk = store / "images" / "image" / "s0" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes() + b"x")  # a file that grew is as damaged as one cut short
    with pytest.raises(FileNotFoundError, match="0 of .* missing and 1 truncated"):
        check_image_cache(store)


def test_read_wsi_min_level_px_is_inclusive_on_the_short_side_and_grey_slides(tmp_path):
    img = _texture(600, 700)
    _pyramidal_tiff(tmp_path / "a.tif", img, levels=2)  # level 1: 300 × 350
    assert list(read_wsi(tmp_path / "a.tif", min_level_px=300).images["a_image"]) == ["scale0", "scale1"]
    assert list(read_wsi(tmp_path / "a.tif", min_level_px=301).images["a_image"]) == ["scale0"]
    # The slide's µm/px is its x resolution (tiffslide.mpp-x), here 0.5 µm/px along x, 0.25 along y.
    with tifffile.TiffWriter(tmp_path / "r.tif") as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", resolution=(2e4, 4e4), resolutionunit="CENTIMETER")
    assert read_wsi(tmp_path / "r.tif").attrs["scst"]["um_per_px"] == pytest.approx(0.5)
    grey = img[..., 0]
    with tifffile.TiffWriter(tmp_path / "g.tif") as tw:
        tw.write(grey, tile=(256, 256), photometric="minisblack", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    data = read_wsi(tmp_path / "g.tif").images["g_image"]["scale0"]["image"].data
    np.testing.assert_array_equal(data.compute(), np.repeat(grey[None], 3, axis=0))


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_or_unreadable_images_are_refused_not_cached(tmp_path, fmt):
    """A JPEG/PNG cut short (an interrupted copy) is an error naming the file, not a cache whose missing rows libvips
    filled with grey or black; files that are no image (JPEG/PNG or TIFF) are ValueErrors, not libvips' or tifffile's
    own exception types."""
    img = _texture(CHUNK_PX + 500, 300)
    Image.fromarray(img).save(tmp_path / f"he.{fmt}")
    data = (tmp_path / f"he.{fmt}").read_bytes()
    (tmp_path / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"cut.{fmt} is truncated or corrupt"):
        cached_image(tmp_path / f"cut.{fmt}", "S", cache=tmp_path / "cache")
    (tmp_path / f"no.{fmt}").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"image: cannot decode .*no.{fmt}"):
        cached_image(tmp_path / f"no.{fmt}", "S", cache=tmp_path / "cache")
    (tmp_path / "no.tif").write_bytes(b"II*\x00not a tiff")
    with pytest.raises(ValueError, match="image: cannot decode .*no.tif as TIFF"):
        cached_image(tmp_path / "no.tif", "S", cache=tmp_path / "cache")


@pytest.mark.parametrize("compression", [None, "zlib", "jpeg"])
def test_truncated_tiffs_are_named_errors(tmp_path, compression):
    """A tiled TIFF cut short: the codec's own error (RuntimeError 'Empty input file', DeflateError, ...) named
    neither the file nor the row; now a ValueError does, as for JPEG/PNG."""
    img = _texture(CHUNK_PX + 1024, 512)
    tifffile.imwrite(tmp_path / "he.tif", img, tile=(256, 256), photometric="rgb", compression=compression)
    data = (tmp_path / "he.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ValueError, match=r"image: .*cut.tif is truncated or corrupt near row \d+"):
        cached_image(tmp_path / "cut.tif", "S", cache=tmp_path / "cache")


def test_read_wsi_reads_the_pixel_size_of_an_ome_tiff(tmp_path):
    """An OME-TIFF records its pixel size in the OME-XML (PhysicalSizeX and its unit), without TIFF resolution tags:
    read_wsi takes it from there instead of warning that the slide records none."""
    img = _texture(600, 700)
    for unit, size, um in (("µm", 0.25, 0.25), ("nm", 500.0, 0.5), (None, 0.125, 0.125)):
        md = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size}
        if unit is not None:
            md["PhysicalSizeXUnit"] = md["PhysicalSizeYUnit"] = unit
        tifffile.imwrite(tmp_path / "s.ome.tif", img, tile=(256, 256), photometric="rgb", ome=True, metadata=md)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sd = read_wsi(tmp_path / "s.ome.tif", sample="S")
        assert sd.attrs["scst"]["um_per_px"] == pytest.approx(um), unit
    assert read_wsi(tmp_path / "s.ome.tif", sample="S", um_per_px=0.3).attrs["scst"]["um_per_px"] == 0.3  # given wins
    # a writer's default resolution tag (72 dpi = 352.8 µm/px) beside the OME pixel size: the OME value wins
    md = {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    tifffile.imwrite(tmp_path / "d.ome.tif", img, tile=(256, 256), photometric="rgb", ome=True, metadata=md,
                     resolution=(72, 72), resolutionunit="INCH")  # fmt: skip
    assert read_wsi(tmp_path / "d.ome.tif", sample="S").attrs["scst"]["um_per_px"] == pytest.approx(0.5)
    # the default tag alone: not a scan's pixel size — warned about and unknown, not 352.8 µm/px
    tifffile.imwrite(tmp_path / "d.tif", img, tile=(256, 256), photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH")  # fmt: skip
    with pytest.warns(UserWarning, match=r"records 352.8 µm/px in its TIFF resolution tags, outside"):
        assert read_wsi(tmp_path / "d.tif", sample="S").attrs["scst"]["um_per_px"] is None
    # 0.25 µm/px (40000 px/cm), a 40x scan's tags: used
    tifffile.imwrite(tmp_path / "ok.tif", img, tile=(256, 256), photometric="rgb", resolution=(40000, 40000),
                     resolutionunit="CENTIMETER")  # fmt: skip
    assert read_wsi(tmp_path / "ok.tif", sample="S").attrs["scst"]["um_per_px"] == pytest.approx(0.25)


def test_read_wsi_refuses_infinite_pixel_sizes_and_names_unsupported_layouts(tmp_path):
    """um_per_px is finite (as in read_st): inf would give a slide of infinite size in µm; a TIFF whose layout
    tiffslide cannot read (planar RGB) is the documented ValueError naming the file, not tiffslide's
    NotImplementedError (which the CLI would show as a traceback)."""
    img = _texture(300, 400)
    _pyramidal_tiff(tmp_path / "a.tif", img, levels=1)
    for bad in (np.inf, np.nan, "0.5x"):
        with pytest.raises(ValueError, match="um_per_px: expected a finite positive number"):
            read_wsi(tmp_path / "a.tif", um_per_px=bad)
    assert read_wsi(tmp_path / "a.tif", um_per_px=np.float32(0.5)).attrs["scst"]["um_per_px"] == 0.5
    planar = np.moveaxis(img, -1, 0).copy()
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    with pytest.raises(ValueError, match="cannot open .*planar.tif as a whole-slide image"):
        read_wsi(tmp_path / "planar.tif", um_per_px=0.5)


def test_read_wsi_closes_the_slide_it_refuses(tmp_path, monkeypatch):
    """A refused slide (16-bit pixels, a layout tiffslide cannot read) is closed, not left open until collected."""
    import tiffslide

    opened = []

    class Recording(tiffslide.TiffSlide):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(tiffslide, "TiffSlide", Recording)
    img = _texture(300, 400).astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "deep.tif", img, tile=(256, 256), photometric="rgb")
    with pytest.raises(ValueError, match="deep.tif has pixel type uint16; expected 8-bit RGB"):
        read_wsi(tmp_path / "deep.tif", um_per_px=0.5)
    planar = np.moveaxis(_texture(300, 400), -1, 0).copy()
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    with pytest.raises(ValueError, match="cannot open .*planar.tif"):
        read_wsi(tmp_path / "planar.tif", um_per_px=0.5)
    assert len(opened) == 2 and all(s.ts_tifffile.filehandle.closed for s in opened)


def test_palette_and_min_is_white_tiffs_read_as_their_colours_cmyk_refused(tmp_path):
    """tifffile returns stored samples: a palette TIFF's colour-map indices were cached (and read by read_wsi) as
    grey, a min-is-white TIFF inverted, a CMYK TIFF's C, M, Y inks as R, G, B. Now palette indices go through the
    colour map, min-is-white is inverted back, and CMYK is refused with an error naming the file and its type."""
    idx = _texture(40, 48)[..., 2]  # every index 0..86 used
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0], cmap[1], cmap[2] = np.arange(256) * 257, (255 - np.arange(256)) * 256, 65535  # * 256: Pillow's maps
    rgb = np.stack([np.arange(256), 255 - np.arange(256), np.full(256, 255)], -1).astype(np.uint8)[idx]
    grey = _texture(40, 48)[..., 0]
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=cmap, tile=(16, 16))
    tifffile.imwrite(tmp_path / "mw.tif", 255 - grey, photometric="miniswhite", tile=(16, 16))
    for name, want in (("pal", rgb), ("mw", np.repeat(grey[..., None], 3, -1))):
        got = cached_image(tmp_path / f"{name}.tif", "S", cache=tmp_path / "cache")["scale0"]["image"].data.compute()
        np.testing.assert_array_equal(got, np.moveaxis(want, -1, 0), err_msg=name)
        got = read_wsi(tmp_path / f"{name}.tif", um_per_px=0.5).images[f"{name}_image"]["scale0"]["image"].data
        np.testing.assert_array_equal(got.compute(), np.moveaxis(want, -1, 0), err_msg=name)
    tifffile.imwrite(tmp_path / "cmyk.tif", np.dstack([_texture(40, 48), grey]), photometric="separated")
    with pytest.raises(ValueError, match="image: TIFF .*cmyk.tif stores colours as photometric SEPARATED"):
        cached_image(tmp_path / "cmyk.tif", "S", cache=tmp_path / "cache")
    with pytest.raises(ValueError, match="path: TIFF .*cmyk.tif stores colours as photometric SEPARATED"):
        read_wsi(tmp_path / "cmyk.tif", um_per_px=0.5)


# ------------------------------------------------------------------------------------------------ coverage: paths
def test_planar_tiff_and_cmyk_jpeg_convert_to_rgb(tmp_path):
    """A planar (c, y, x) RGB TIFF is cached as its pixels; a CMYK JPEG through libvips' sRGB conversion: no ink is
    white, full black ink dark, cyan ink cyan (its C, M, Y read as R, G, B would make white paper black)."""
    import pyvips

    from scst.io._image import _read_image_array

    img = _texture(40, 48)
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(img, -1, 0).copy(), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(_read_image_array(tmp_path / "planar.tif"), img)
    got = cached_image(tmp_path / "planar.tif", "S", cache=tmp_path / "cache")["scale0"]["image"].data.compute()
    np.testing.assert_array_equal(got, np.moveaxis(img, -1, 0))
    cmyk = np.zeros((16, 24, 4), np.uint8)
    cmyk[:, 8:16, 3] = 255  # black ink
    cmyk[:, 16:, 0] = 255  # cyan ink
    pyvips.Image.new_from_array(cmyk).copy(interpretation="cmyk").jpegsave(str(tmp_path / "cmyk.jpg"), Q=100)
    rgb = _read_image_array(tmp_path / "cmyk.jpg")
    assert rgb.shape == (16, 24, 3)
    assert (rgb[:, :8] >= 250).all()  # paper
    assert (rgb[:, 8:16] <= 60).all()  # black
    assert (rgb[:, 16:, 0] <= 30).all() and (rgb[:, 16:, 2] >= 200).all()  # cyan: no red, much blue


def test_tiffs_that_are_no_2d_uint8_or_uint16_image_are_refused(tmp_path):
    from scst.io._image import _to_rgb

    tifffile.imwrite(tmp_path / "f.tif", _texture(20, 24).astype(np.float32) / 255, photometric="rgb")
    with pytest.raises(ValueError, match=r"image: .*f.tif has pixel type float32; expected 8- or 16-bit RGB or grey"):
        cached_image(tmp_path / "f.tif", "S", cache=tmp_path / "cache")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 5, 20, 24), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match=r"image: TIFF .*stack.tif has axes '\w+'; expected a 2-D image"):
        cached_image(tmp_path / "stack.tif", "S", cache=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"image: x.png has shape \(4, 4, 5\); expected \(y, x\) grey or \(y, x, 3\)"):
        _to_rgb(np.zeros((4, 4, 5), np.uint8), "x.png")


def test_unreadable_manifests_and_stores_without_one_are_rebuilt(tmp_path):
    import shutil

    from scst.io._image import MANIFEST, check_image_cache, image_cache_path

    img = _texture(32, 40)
    Image.fromarray(img).save(tmp_path / "he.png")
    cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")
    store = image_cache_path(tmp_path / "he.png", tmp_path / "cache")
    (store / MANIFEST).write_text("{not json")
    with pytest.raises(FileNotFoundError, match=r"damaged: its manifest .*scst_cache.json is unreadable"):
        check_image_cache(store)
    with pytest.warns(UserWarning, match="manifest .* is unreadable\\); rebuilding"):
        cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")
    check_image_cache(store)
    # a store without a manifest (written before manifests) that lost a pyramid level, or is no zarr group
    (store / MANIFEST).unlink()
    shutil.rmtree(store / "images" / "image" / "s4")
    with pytest.warns(UserWarning, match="it has 4 pyramid levels, expected 5"):
        el = cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")
    np.testing.assert_array_equal(el["scale0"]["image"].data.compute(), np.moveaxis(img, -1, 0))
    (store / MANIFEST).unlink()
    shutil.rmtree(store / "images")
    with pytest.warns(UserWarning, match=r"it is unreadable \("):
        cached_image(tmp_path / "he.png", "S", cache=tmp_path / "cache")
    check_image_cache(store)


def test_read_wsi_grey_alpha_and_ome_without_pixel_size(tmp_path):
    """A (y, x, 2) grey + alpha slide reads as its grey repeated in R, G and B, alpha dropped (as the image cache
    reads the same file; it was refused); a (y, x, 5) one is refused naming the level and shape. An OME-TIFF whose
    OME-XML has no PhysicalSizeX (nor TIFF resolution tags) has no pixel size, with the warning, not an error from
    parsing the XML."""
    grey = _texture(300, 400)[..., 0]
    alpha = np.full_like(grey, 200)
    tifffile.imwrite(tmp_path / "la.tif", np.stack([grey, alpha], -1), tile=(256, 256),
                     photometric="minisblack", extrasamples=[2])  # fmt: skip
    sd = read_wsi(tmp_path / "la.tif", um_per_px=0.5)
    np.testing.assert_array_equal(sd.images["la_image"]["scale0"]["image"].data.compute(), np.stack([grey] * 3))
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((300, 400, 5), np.uint8), tile=(256, 256),
                     photometric="minisblack", planarconfig="contig")  # fmt: skip
    with pytest.raises(ValueError, match=r"path: level 0 of .*five.tif has shape \(300, 400, 5\); expected \(y, x\)"):
        read_wsi(tmp_path / "five.tif", um_per_px=0.5)
    img = _texture(300, 400)
    tifffile.imwrite(
        tmp_path / "o.ome.tif", img, tile=(256, 256), photometric="rgb", ome=True, metadata={"axes": "YXS"}
    )
    with pytest.warns(UserWarning, match="o.ome.tif records no pixel size and um_per_px was not given"):
        sd = read_wsi(tmp_path / "o.ome.tif")
    assert sd.attrs["scst"]["um_per_px"] is None
    np.testing.assert_array_equal(sd.images["o.ome_image"]["scale0"]["image"].data.compute(), np.moveaxis(img, -1, 0))


def _resource_warnings(fn) -> list[str]:
    """ResourceWarnings (unclosed files) raised while ``fn`` runs and its garbage is collected."""
    import gc

    gc.collect()  # earlier tests' lazily read slides (read_wsi keeps its file open while the image is used)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", ResourceWarning)
        fn()
        gc.collect()
    ours = [w for w in rec if issubclass(w.category, ResourceWarning)]
    return [str(w.message) for w in ours if "he.tif" in str(w.message) or "cut.tif" in str(w.message)]


def test_tiff_conversion_closes_the_file_done_or_failed(tmp_path):
    """Converting a TIFF into the cache, complete or cut short, leaves no file open (the zarr view of tifffile held
    it until garbage collection: one handle per converted slide, 'too many open files' over a long list)."""
    img = _texture(300, 400)
    tifffile.imwrite(tmp_path / "he.tif", img, tile=(128, 128), photometric="rgb", compression="zlib")
    data = (tmp_path / "he.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * 0.6)])

    def convert_cut():
        with pytest.raises(ValueError, match=r"image: .*cut.tif is truncated or corrupt near row 0"):
            cached_image(tmp_path / "cut.tif", "S", cache=tmp_path / "c2")

    assert _resource_warnings(lambda: cached_image(tmp_path / "he.tif", "S", cache=tmp_path / "c1")) == []
    assert _resource_warnings(convert_cut) == []
    assert (tmp_path / "c1").exists() and not list((tmp_path / "c2").glob("*.zarr"))  # no store of the cut file


def test_a_palette_tiff_with_more_than_one_sample_per_pixel_is_refused_naming_them(tmp_path):
    """A palette TIFF must hold one colour-map index per pixel; one with an extra (alpha) sample is refused, and the
    message counts the samples per pixel (it said "shape (48, 2)": the image width and the samples)."""
    import tifffile

    cmap = np.zeros((3, 256), np.uint16)
    cmap[0] = np.arange(256) * 257
    path = tmp_path / "pal_alpha.tif"  # tifffile does not write such files: a grey+alpha file relabelled as palette
    tifffile.imwrite(path, np.zeros((40, 48, 2), np.uint8), photometric="minisblack", extrasamples=["unassalpha"],
                     extratags=[(320, "H", cmap.size, cmap.ravel(), True)])  # fmt: skip
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tf.pages[0].tags["PhotometricInterpretation"].overwrite(3)  # palette
    with pytest.raises(ValueError, match=r"image: palette TIFF .*pal_alpha.tif has 2 uint8 sample\(s\) per pixel"):
        cached_image(path, "S", cache=tmp_path / "cache")
