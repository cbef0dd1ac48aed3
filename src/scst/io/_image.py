"""Convert JPEG/TIFF images once into a chunked, multiscale zarr cache, then open them lazily."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from spatialdata import SpatialData, read_zarr
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity, set_transformation

from .._logging import logg
from .._utils import _atomic_dir
from .._utils import cache_dir as _cache_root

#: Downscale factors of the cached pyramid (levels 1, 2, 4, 8, 16) and its chunk edge in pixels.
SCALE_FACTORS = (2, 2, 2, 2)
CHUNK_PX = 1024


def _read_image_array(path: Path) -> np.ndarray:
    """Read a whole RGB(A) image as ``(y, x, c)`` uint8; JPEG/PNG via Pillow, TIFF via tifffile."""
    if path.suffix.lower() in {".tif", ".tiff"}:
        import tifffile

        arr = tifffile.imread(path)
    else:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # her2st images are ~92 MP, above Pillow's bomb warning
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"Image {path} has shape {arr.shape}; expected (y, x, 3) RGB.")
    return np.ascontiguousarray(arr[..., :3])


def image_cache_path(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Where the zarr cache of ``path`` lives: keyed by resolved path, size and modification time."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache) if cache is not None else _cache_root() / "images"
    return root / f"{path.stem}-{key}.zarr"


def cached_image(path: str | os.PathLike, coordinate_system: str, cache: str | os.PathLike | None = None):
    """Return a lazily opened multiscale image element for ``path``, converting it on first use.

    The element is an ``Image2DModel`` DataTree (dims ``c, y, x``; scales 1, 2, 4, 8, 16; 1024 px chunks)
    read from a zarr store in ``cache`` (default ``$SCST_CACHE_DIR/images``). The conversion writes to a
    temporary folder that is renamed into place, so a crash never leaves a half-written cache.

    Parameters
    ----------
    path
        JPEG, PNG or TIFF file.
    coordinate_system
        Name of the coordinate system the image is placed in (identity transform: full-resolution pixels).
    cache
        Folder for the zarr stores.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image: file {path} does not exist.")
    store = image_cache_path(path, cache)
    if not store.exists():
        logg.info(f"Converting {path.name} to a multiscale zarr cache at {store} (once)")
        arr = _read_image_array(path)
        el = Image2DModel.parse(
            np.moveaxis(arr, -1, 0),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            scale_factors=list(SCALE_FACTORS),
            chunks=(3, CHUNK_PX, CHUNK_PX),
            transformations={"global": Identity()},
        )
        with _atomic_dir(store) as tmp:
            tmp.rmdir()  # spatialdata refuses to write into an existing folder
            SpatialData(images={"image": el}).write(tmp)
        del arr, el
    el = read_zarr(store, selection=("images",)).images["image"]
    # One cache serves every caller; the coordinate system is set on this in-memory element only.
    set_transformation(el, {coordinate_system: Identity()}, set_all=True)
    return el
