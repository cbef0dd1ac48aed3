"""Convert JPEG/PNG/TIFF images once into a chunked, multiscale zarr cache, strip by strip; open it lazily.

The conversion never holds the whole image: JPEG/PNG are decoded top to bottom by libvips (``pyvips``, sequential
access), TIFF through tifffile's zarr view, one 1024-row strip at a time, into a full-resolution zarr array; the
pyramid is then written from that array by dask, chunk by chunk. A manifest of the cache's files and sizes
(``scst_cache.json``) lets every later reader tell a complete cache from one whose chunks were deleted or truncated
(zarr would read those as black, its fill value).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from spatialdata import SpatialData, read_zarr
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity, set_transformation

from .._logging import logg
from .._utils import _atomic_dir, _atomic_file
from .._utils import cache_dir as _cache_root

__all__ = ["cached_image", "check_image_cache", "image_cache_path"]

#: Downscale factors of the cached pyramid (levels 1, 2, 4, 8, 16) and its chunk edge in pixels.
SCALE_FACTORS = (2, 2, 2, 2)
CHUNK_PX = 1024
#: File inside a cache store listing every file the conversion wrote, with its size in bytes.
MANIFEST = "scst_cache.json"
#: Read through tifffile (full-resolution level of a pyramid: SVS/NDPI/OME-TIFF are TIFF files); others via libvips.
_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif"}


# ----------------------------------------------------------------------------------------------------------------
# strip-wise decoding
# ----------------------------------------------------------------------------------------------------------------
def _to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """``(y, x)`` / ``(y, x, 1|2|3|4)`` → ``(y, x, 3)`` uint8 (grey repeated, alpha dropped)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"image: {path} has shape {arr.shape}; expected (y, x) grey or (y, x, 3) RGB.")
    if arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"image: {path} has pixel type {arr.dtype}; expected 8- or 16-bit RGB or grey.")
    if arr.shape[-1] <= 2:  # grey (+ alpha)
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


#: TIFF photometric interpretations whose stored samples are grey or RGB values as read (YCbCr: decoded to RGB by
#: the JPEG codec); palette and min-is-white images are converted, others refused (see :func:`_tiff_recolour`).
_TIFF_AS_STORED = {"MINISBLACK", "RGB", "YCBCR"}


def _tiff_recolour(path: Path, arg: str = "image") -> Callable[[np.ndarray], np.ndarray] | None:
    """Function turning stored samples of ``path``'s full-resolution level into grey or RGB values; ``None``: as stored.

    tifffile returns the stored samples, not colours: a palette image gives its colour-map indices (read as grey
    they would be the wrong image), a min-is-white image inverted grey, a CMYK one four ink channels (three of which
    would be read as RGB). Palette indices are looked up in the colour map (16-bit entries, their high byte; a map
    with no entry above 255 is taken as 8-bit, as libtiff does), min-is-white grey is inverted; CMYK
    (``SEPARATED``, no faithful conversion without the ink's colour profile), CIE L*a*b* and other colour models are
    refused.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.series[0].levels[0].keyframe
            photometric, colormap, bits = page.photometric, page.colormap, page.bitspersample
    except Exception as e:  # noqa: BLE001 - tifffile raises many types (IndexError, ValueError, ...) for bad files
        raise ValueError(f"{arg}: cannot decode {path} as TIFF ({type(e).__name__}: {e}).") from e
    name = getattr(photometric, "name", str(photometric))
    if name in _TIFF_AS_STORED:
        return None
    if name == "MINISWHITE":
        return lambda a: np.iinfo(a.dtype).max - a if a.dtype.kind == "u" else a
    if name == "PALETTE" and colormap is not None:
        lut = np.moveaxis(np.asarray(colormap), 0, -1)  # (2**bits, 3)
        lut = lut.astype(np.uint8) if lut.max() < 256 else (lut >> 8).astype(np.uint8)  # v * 257 and v * 256 → v

        def _palette(a: np.ndarray) -> np.ndarray:
            if a.ndim != 2 or a.dtype.kind != "u":
                per_px = a.shape[2] if a.ndim > 2 else 1
                raise ValueError(
                    f"{arg}: palette TIFF {path} has {per_px} {a.dtype} sample(s) per pixel; expected one unsigned "
                    "index."
                )
            return lut[a]

        return _palette
    raise ValueError(
        f"{arg}: TIFF {path} stores colours as photometric {name} ({bits}-bit); only grey (MINISBLACK, MINISWHITE), "
        "RGB, YCbCr and palette images are read (CMYK and other colour models cannot be converted to RGB faithfully "
        "here). Convert it to RGB first (e.g. `vips colourspace in.tif out.tif srgb`)."
    )


def _tiff_level0(path: Path):
    """Full-resolution level of a (pyramidal) TIFF as a lazily read zarr array ``(y, x[, c])``, or ``(c, y, x)``.

    Returns ``(array, axes, store)``; the caller closes ``store`` (it holds the file open).
    """
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tf:  # the file is parsed once; the store reopens it when read
            axes = tf.series[0].levels[0].axes
            store = tf.aszarr(series=0, level=0)
    except Exception as e:  # noqa: BLE001 - tifffile raises many types (IndexError, ValueError, ...) for bad files
        raise ValueError(f"image: cannot decode {path} as TIFF ({type(e).__name__}: {e}).") from e
    try:
        z = zarr.open_array(store, mode="r")
    except BaseException:
        store.close()
        raise
    return z, axes, store


def _open_vips(path: Path):
    """JPEG/PNG/... opened for sequential reading; a truncated file fails when its missing rows are read.

    Without ``fail_on="truncated"`` libvips fills the missing rows with grey or black and only prints a warning.
    """
    import pyvips

    try:
        return pyvips.Image.new_from_file(str(path), access="sequential", fail_on="truncated")
    except pyvips.Error as e:
        raise ValueError(f"image: cannot decode {path} ({str(e).strip().splitlines()[0]}).") from e


def _image_shape(path: Path) -> tuple[int, int]:
    if path.suffix.lower() in _TIFF_SUFFIXES:
        z, axes, store = _tiff_level0(path)
        store.close()
        return int(z.shape[axes.index("Y")]), int(z.shape[axes.index("X")])
    im = _open_vips(path)
    return int(im.height), int(im.width)


def _iter_strips(path: Path, rows: int = CHUNK_PX) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(y0, strip)`` with ``strip`` the rows ``y0:y0 + rows`` as ``(rows, x, 3)`` uint8, top to bottom."""
    if path.suffix.lower() in _TIFF_SUFFIXES:
        z, axes, store = _tiff_level0(path)
        try:  # the file is closed when the strips are done, fail, or the generator is dropped
            if set(axes) - set("YXCS") or "Y" not in axes or "X" not in axes:
                raise ValueError(f"image: TIFF {path} has axes {axes!r}; expected a 2-D image (YX, YXS or CYX).")
            recolour = _tiff_recolour(path)
            h = int(z.shape[axes.index("Y")])
            for y0 in range(0, h, rows):
                sl = tuple(slice(y0, y0 + rows) if a == "Y" else slice(None) for a in axes)
                try:
                    strip = np.asarray(z[sl])
                except Exception as e:  # noqa: BLE001 - codec errors (RuntimeError, TiffFileError, ...) name no file
                    raise ValueError(
                        f"image: {path} is truncated or corrupt near row {y0} "
                        f"({type(e).__name__}: {str(e).strip()[:200]})."
                    ) from e
                if axes.startswith(("C", "S")):  # planar (c, y, x)
                    strip = np.moveaxis(strip, 0, -1)
                yield y0, _to_rgb(strip if recolour is None else recolour(strip), path)
        finally:
            store.close()
        return
    import pyvips

    im = _open_vips(path)
    if im.interpretation == "cmyk":
        im = im.colourspace("srgb")
    for y0 in range(0, im.height, rows):
        try:
            strip = im.crop(0, y0, im.width, min(rows, im.height - y0)).numpy()
        except pyvips.Error as e:
            raise ValueError(f"image: {path} is truncated or corrupt near row {y0} ({str(e).strip()[:200]}).") from e
        yield y0, _to_rgb(strip, path)


def _read_image_array(path: Path) -> np.ndarray:
    """Whole image as ``(y, x, 3)`` uint8 (small images and tests only; conversion goes strip by strip)."""
    return np.concatenate([s for _, s in _iter_strips(Path(path))], axis=0)


# ----------------------------------------------------------------------------------------------------------------
# cache manifest
# ----------------------------------------------------------------------------------------------------------------
def _store_files(store: Path) -> dict[str, int]:
    return {
        p.relative_to(store).as_posix(): p.stat().st_size
        for p in sorted(store.rglob("*"))
        if p.is_file() and not p.name.startswith((MANIFEST, f".{MANIFEST}"))
    }


def _write_manifest(store: Path) -> None:
    text = json.dumps({"version": 1, "files": _store_files(store)})
    with _atomic_file(store / MANIFEST) as tmp:
        tmp.write_text(text)


def _find_store(path: Path) -> Path | None:
    """The cache store that holds ``path`` (``path`` itself or one of up to four parents with a manifest)."""
    for p in [path, *list(path.parents)[:4]]:
        if (p / MANIFEST).is_file():
            return p
    return None


def _damage(store: Path) -> str | None:
    """``None`` for a complete store, else a sentence on what is missing or truncated."""
    try:
        files = json.loads((store / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"its manifest {store / MANIFEST} is unreadable"
    missing, truncated = [], []
    for rel, size in files.items():
        try:
            if (store / rel).stat().st_size != size:
                truncated.append(rel)
        except FileNotFoundError:
            missing.append(rel)
    if not missing and not truncated:
        return None
    eg = (missing + truncated)[:3]
    return f"{len(missing)} of {len(files)} files are missing and {len(truncated)} truncated (e.g. {eg})"


def check_image_cache(path: str | os.PathLike | Any) -> None:
    """Raise if the zarr image cache that holds ``path`` lost or truncated files since it was written.

    Zarr reads a missing chunk as its fill value, so a cache cleaned or cut short after :func:`scst.io.read_st`
    opened it would give black patches and constant predictions without any message. Paths outside an scst
    cache (no ``scst_cache.json`` manifest above them) are not checked.

    Parameters
    ----------
    path
        The cache store, any folder inside it (e.g. the folder of one pyramid level), or a zarr array read from a
        local folder store (arrays in other stores are not checked).

    Raises
    ------
    FileNotFoundError
        Files of the cache are missing or have another size than when they were written.
    """
    if hasattr(path, "store") and hasattr(path, "chunks"):  # a zarr array
        root = getattr(path.store, "root", None)
        if root is None:
            return
        path = Path(str(root))
    path = Path(path)
    store = _find_store(path)
    if store is None:
        if not path.exists():
            raise FileNotFoundError(f"image cache: {path} does not exist (deleted after it was opened?).")
        return
    why = _damage(store)
    if why is not None:
        raise FileNotFoundError(
            f"image cache {store} is damaged: {why}. It was deleted or truncated after it was opened, and zarr "
            "would read the lost chunks as black pixels. Read the section again (scst.io.read_st or "
            "scst.datasets.*) to rebuild it."
        )


def _adopt_or_damage(store: Path) -> str | None:
    """For a cache written before manifests existed: adopt it if every chunk is stored, else say what is lost."""
    import zarr

    try:
        group = zarr.open_group(store / "images" / "image", mode="r")
        incomplete = [n for n, a in group.arrays() if a.nchunks_initialized != a.nchunks]
        n_arrays = len(list(group.array_keys()))
    except Exception as e:  # noqa: BLE001 - any unreadable store is rebuilt
        return f"it is unreadable ({type(e).__name__}: {e})"
    if n_arrays != len(SCALE_FACTORS) + 1:
        return f"it has {n_arrays} pyramid levels, expected {len(SCALE_FACTORS) + 1}"
    if incomplete:
        return f"pyramid levels {incomplete} lack chunks"
    _write_manifest(store)
    return None


# ----------------------------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------------------------
def image_cache_path(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Where the zarr cache of ``path`` lives: keyed by resolved path, size and modification time."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache) if cache is not None else _cache_root() / "images"
    return root / f"{path.stem}-{key}.zarr"


def _convert(path: Path, store: Path) -> None:
    """Write the multiscale cache of ``path`` to ``store`` (atomically), one strip of rows at a time."""
    import dask.array as da
    import zarr

    h, w = _image_shape(path)
    min_px = int(np.prod(SCALE_FACTORS))
    if min(h, w) < min_px:
        raise ValueError(
            f"image: {path} is {w} × {h} px; the multiscale cache ({len(SCALE_FACTORS) + 1} levels, each half the "
            f"previous) needs at least {min_px} px per side."
        )
    with _atomic_dir(store) as tmp, tempfile.TemporaryDirectory(prefix=f".{store.name}.full.", dir=store.parent) as t0:
        full = zarr.open_array(
            str(Path(t0) / "s0.zarr"),
            mode="w",
            shape=(3, h, w),
            chunks=(3, CHUNK_PX, CHUNK_PX),
            dtype="uint8",
            fill_value=0,
        )
        n = 0
        for y0, strip in _iter_strips(path, CHUNK_PX):
            if strip.shape[1] != w:
                raise ValueError(f"image: {path} strip at row {y0} is {strip.shape[1]} px wide, expected {w}.")
            full[:, y0 : y0 + strip.shape[0], :] = np.moveaxis(strip, -1, 0)
            n += strip.shape[0]
        if n != h:
            raise ValueError(f"image: {path} gave {n} rows, expected {h} (truncated file?).")
        el = Image2DModel.parse(
            da.from_zarr(full),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            scale_factors=list(SCALE_FACTORS),
            chunks=(3, CHUNK_PX, CHUNK_PX),
            transformations={"global": Identity()},
        )
        tmp.rmdir()  # spatialdata refuses to write into an existing folder
        SpatialData(images={"image": el}).write(tmp)
        _write_manifest(tmp)


def cached_image(path: str | os.PathLike, coordinate_system: str, cache: str | os.PathLike | None = None):
    """Return a lazily opened multiscale image element for ``path``, converting it on first use.

    The element is an ``Image2DModel`` DataTree (dims ``c, y, x``; scales 1, 2, 4, 8, 16; 1024 px chunks)
    read from a zarr store in ``cache`` (default ``$SCST_CACHE_DIR/images``). The conversion reads the image in
    strips of 1024 rows (peak memory: one strip plus a few chunks, not the image) and writes to a temporary
    folder that is renamed into place, so a crash never leaves a half-written cache. A cache whose files were
    deleted or truncated since (checked against its manifest, ``scst_cache.json``) is rebuilt with a warning.
    Callers asking for the same image at once (parallel jobs, dask workers) convert it once: the others wait on a
    file lock beside the store, then open it. An intact cache is opened without the lock (a read-only shared cache
    works).

    Parameters
    ----------
    path
        JPEG, PNG or TIFF file; for a pyramidal whole-slide image (SVS, NDPI, OME-TIFF) its full-resolution level
        is cached (fast patch reading), or open it without a copy with :func:`scst.io.read_wsi`. A palette TIFF is
        read through its colour map and a min-is-white one inverted; CMYK and other colour models are refused.
    coordinate_system
        Name of the coordinate system the image is placed in (identity transform: full-resolution pixels).
    cache
        Folder for the zarr stores.

    Raises
    ------
    ValueError
        The file cannot be decoded, or is truncated (an image cut short is refused, not cached with its missing
        rows filled in), or is a TIFF in a colour model other than grey, RGB, YCbCr or palette (e.g. CMYK).
    """
    from filelock import FileLock

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image: file {path} does not exist.")
    store = image_cache_path(path, cache)
    if not ((store / MANIFEST).is_file() and _damage(store) is None):  # an intact cache is opened without a lock
        store.parent.mkdir(parents=True, exist_ok=True)
        # One process converts; others asking for the same image meanwhile (parallel jobs, dask workers, test
        # workers) wait and then open its store, instead of converting again and swapping a store another reads.
        with FileLock(store.parent / f".{store.name}.lock"):
            if store.exists():
                why = _damage(store) if (store / MANIFEST).is_file() else _adopt_or_damage(store)
                if why is not None:
                    warnings.warn(f"Image cache {store} is damaged ({why}); rebuilding it from {path}.", UserWarning, 2)
                    shutil.rmtree(store, ignore_errors=True)
            if not store.exists():
                logg.info(f"Converting {path.name} to a multiscale zarr cache at {store} (once)")
                _convert(path, store)
    el = read_zarr(store, selection=("images",)).images["image"]
    # One cache serves every caller; the coordinate system is set on this in-memory element only.
    set_transformation(el, {coordinate_system: Identity()}, set_all=True)
    return el
