"""Whole-slide images (SVS, NDPI, pyramidal TIFF/OME-TIFF) as lazy multiscale SpatialData images, read tile by tile."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity, set_transformation

from .._logging import logg
from .._utils import _positive
from ._image import _tiff_recolour
from ._read_st import _check_sample, _sample_from_file_name

__all__ = ["read_wsi"]

#: Image formats read by :func:`read_wsi` (tiffslide: Aperio SVS, Hamamatsu NDPI, generic/OME pyramidal TIFF).
WSI_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".scn", ".bif")


def _levels(path: Path):
    """``(levels, mpp)``: lazily read dask arrays ``(c, y, x)`` uint8, full resolution first, and µm/px or None."""
    import dask.array as da
    import tiffslide
    import zarr

    try:
        slide = tiffslide.TiffSlide(str(path))
    except Exception as e:  # noqa: BLE001 - tiffslide raises many types for unreadable files
        raise ValueError(f"path: cannot open {path} as a whole-slide image ({type(e).__name__}: {e}).") from e
    try:  # closed also when the slide is refused (layout, pixel type): no file handle left open
        try:
            group = slide.zarr_group  # parses the layout: NotImplementedError for one tiffslide does not read
        except Exception as e:  # noqa: BLE001 - tiffslide raises many types for unreadable files
            raise ValueError(f"path: cannot open {path} as a whole-slide image ({type(e).__name__}: {e}).") from e
        levels = []
        # stored samples → colours (palette indices through the colour map, min-is-white inverted; CMYK refused)
        recolour = _tiff_recolour(path, "path")
        for k in range(slide.level_count):
            arr = da.from_zarr(group[str(k)] if isinstance(group, zarr.Group) else group)
            if recolour is not None:
                probe = recolour(np.zeros((1, 1, *arr.shape[2:]), arr.dtype))
                arr = arr.map_blocks(
                    recolour,
                    dtype=probe.dtype,
                    chunks=arr.chunks[:2] + tuple((n,) for n in probe.shape[2:]),
                    new_axis=list(range(arr.ndim, probe.ndim)) or None,
                )
            if arr.ndim == 2:  # greyscale
                d = arr[None].repeat(3, axis=0)
            elif arr.ndim == 3 and arr.shape[-1] in (1, 2):  # grey (+ alpha), as the image cache reads it
                d = arr[..., 0][None].repeat(3, axis=0)
            elif arr.ndim == 3 and arr.shape[-1] in (3, 4):  # (y, x, s): tiffslide's layout for RGB(A)
                d = arr[..., :3].transpose(2, 0, 1)
            else:
                raise ValueError(
                    f"path: level {k} of {path} has shape {arr.shape}; expected (y, x) or (y, x, 1|2|3|4)."
                )
            if d.dtype != np.uint8:
                raise ValueError(f"path: {path} has pixel type {d.dtype}; expected 8-bit RGB (brightfield H&E).")
            levels.append(d)
        mpp = slide.properties.get("tiffslide.mpp-x")
    finally:
        slide.close()
    ome = _ome_mpp(path)  # written for the image; TIFF resolution tags are often writers' defaults (72 dpi, 1 px/mm)
    if ome is not None:
        return levels, ome
    if mpp and not _MPP_RANGE[0] <= float(mpp) <= _MPP_RANGE[1]:
        warnings.warn(
            f"read_wsi: {path.name} records {float(mpp):.4g} µm/px in its TIFF resolution tags, outside the "
            f"{_MPP_RANGE[0]}–{_MPP_RANGE[1]} µm/px of brightfield scans (a writer's default such as 72 dpi?); it is "
            "ignored (pass um_per_px=).",
            UserWarning,
            stacklevel=3,
        )
        return levels, None
    return levels, float(mpp) if mpp else None


#: Pixel sizes (µm/px) taken from TIFF resolution tags: brightfield scans lie well inside (0.1–0.5 at 80×–20×, a
#: few µm for low-resolution exports); outside, the tag is a writer's default, not the scan's.
_MPP_RANGE = (0.05, 20.0)


#: OME ``PhysicalSizeXUnit`` → µm.
_OME_UNITS_UM = {"µm": 1.0, "μm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_mpp(path: Path) -> float | None:
    """µm/px of an OME-TIFF's first image (OME-XML ``PhysicalSizeX`` and its unit, default µm), else ``None``.

    OME-TIFF writers (Bio-Formats, tifffile) record the pixel size there, often without TIFF resolution tags, and
    tiffslide reads only the tags.
    """
    from xml.etree import ElementTree

    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            xml = tf.ome_metadata
        if not xml:
            return None
        pixels = next(e for e in ElementTree.fromstring(xml).iter() if e.tag.rsplit("}", 1)[-1] == "Pixels")
        size = float(pixels.get("PhysicalSizeX"))
    except Exception:  # noqa: BLE001 - no (readable) OME pixel size: unknown, as without OME-XML
        return None
    factor = _OME_UNITS_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
    return size * factor if factor is not None and np.isfinite(size) and size > 0 else None


def read_wsi(
    path: str | os.PathLike,
    *,
    sample: str | None = None,
    um_per_px: float | None = None,
    min_level_px: int = 256,
) -> SpatialData:
    """Open a pyramidal whole-slide image lazily as a multiscale SpatialData image.

    Nothing is decoded up front: each pyramid level of the file is a dask array over the file's own tiles
    (tiffslide → tifffile's zarr view), so a 100k × 100k px slide opens in milliseconds and computing a window
    reads only the tiles under it. Levels come from the file (SVS/NDPI/OME pyramids); levels smaller than
    ``min_level_px`` on their short side are left out.

    Parameters
    ----------
    path
        Whole-slide image: Aperio ``.svs``, Hamamatsu ``.ndpi``, pyramidal (OME-)TIFF, or any tiled TIFF tiffslide
        reads. A plain JPEG/PNG goes through :func:`scst.io.read_st`'s zarr cache instead. Palette TIFFs are read
        through their colour map, min-is-white ones inverted; grey (+ alpha) slides as their grey repeated in R, G
        and B (alpha dropped, as for RGBA); CMYK and other colour models are refused (``ValueError``).
    sample
        Section name: the image key is ``f"{sample}_image"`` and its coordinate system ``sample`` (letters, digits,
        ``_``, ``-`` and ``.``); default the file's stem with other characters (spaces, ...) replaced by ``_``.
    um_per_px
        Micrometres per full-resolution pixel (finite, > 0); default the slide's own (``tiffslide.mpp-x``, else an
        OME-TIFF's ``PhysicalSizeX``), else unknown.
    min_level_px
        Smallest short side of a pyramid level to keep.

    Returns
    -------
    SpatialData with one ``Image2DModel`` element ``f"{sample}_image"`` (dims ``c, y, x``, uint8 RGB; ``scale0`` =
    full resolution, ``scale<k>`` = the file's level k with a ``Scale`` to full-resolution pixels), in coordinate
    system ``sample`` (identity: full-resolution pixels), and ``sdata.attrs["scst"]``, a dict with ``um_per_px``,
    ``source``, ``image_key``, ``coordinate_system`` and ``image_shape``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: file {path} does not exist.")
    if path.suffix.lower() not in WSI_SUFFIXES:
        raise ValueError(
            f"path: {path.name} is not a whole-slide image ({', '.join(WSI_SUFFIXES)}); read JPEG/PNG with "
            "scst.io.read_st (converted once to a zarr cache)."
        )
    if um_per_px is not None:
        um_per_px = _positive("um_per_px", um_per_px)
    if not sample:
        sample = _sample_from_file_name(path.stem)
    _check_sample(sample)
    levels, mpp = _levels(path)
    levels = [levels[0]] + [d for d in levels[1:] if min(d.shape[1:]) >= min_level_px]
    tree = xr.DataTree.from_dict(
        {f"scale{k}": xr.Dataset({"image": xr.DataArray(d, dims=("c", "y", "x"), coords={"c": ["r", "g", "b"]})})
         for k, d in enumerate(levels)}
    )  # fmt: skip
    set_transformation(tree, {sample: Identity()}, set_all=True)
    Image2DModel().validate(tree)
    upp = um_per_px if um_per_px is not None else mpp
    if upp is None:
        warnings.warn(
            f"read_wsi: {path.name} records no pixel size and um_per_px was not given; the slide has no µm geometry "
            "(pass um_per_px=).",
            UserWarning,
            stacklevel=2,
        )
    h, w = (int(s) for s in levels[0].shape[1:])
    logg.info(f"read_wsi: {path.name}, {w} × {h} px, {len(levels)} levels, µm/px {upp}")
    sd = SpatialData(images={f"{sample}_image": tree})
    sd.attrs["scst"] = {
        "um_per_px": None if upp is None else float(upp),
        "source": str(path),
        "image_key": f"{sample}_image",
        "coordinate_system": sample,
        "image_shape": [h, w],
    }
    return sd
