"""Spot-centred image patches for deep learning: a torch ``Dataset`` that reads windows straight from zarr.

The hot path of every image model is "give me the square window around spot i". spatialdata's
``ImageTilesDataset`` answers it through xarray/dask (tens of ms per tile), returns tiles of varying size at
the image border (it clips them) and has no µm geometry, so scst reads windows itself: from the zarr array
behind a lazily opened image element (found in the element's dask graph), through a small bounded LRU cache
of decoded chunks, with padding so that every spot gets a full-size patch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from torch.utils.data import Dataset

from .._utils import _positive_int
from ..nn._train_step import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SpotPatchDataset", "extract_patches", "IMAGENET_MEAN", "IMAGENET_STD"]

_PADDINGS = ("constant", "reflect")


# --------------------------------------------------------------------------------------------------------------
# image sources: read an in-bounds (c, y0:y1, x0:x1) block from zarr / dask / numpy, picklable, opened lazily
# --------------------------------------------------------------------------------------------------------------
def _is_zarr_array(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("zarr") and hasattr(obj, "chunks") and hasattr(obj, "store") and hasattr(obj, "shape")


def _zarr_behind_dask(arr: Any) -> Any | None:
    """The zarr array a dask array is a plain view of (``da.from_zarr``, as spatialdata reads images), else None.

    Only a graph of exactly the two ``from_zarr`` layers (no slicing, rechunking or arithmetic on top) counts:
    anything else would change which pixels a window of the zarr array holds.
    """
    graph = getattr(arr, "dask", None)
    layers = getattr(graph, "layers", None)
    if layers is None or len(layers) != 2:
        return None
    found = []
    for layer in layers.values():
        try:
            values = dict(layer).values() if len(layer) < 8 else ()
        except Exception:  # noqa: BLE001 - exotic layers: not a plain from_zarr graph
            return None
        for v in values:
            v = getattr(v, "value", v)  # newer dask wraps graph values in task-spec nodes (DataNode(value=...))
            if _is_zarr_array(v):
                found.append(v)
    if len(found) != 1:
        return None
    z = found[0]
    if tuple(z.shape) != tuple(arr.shape) or np.dtype(z.dtype) != np.dtype(arr.dtype):
        return None
    return z


def _local_zarr_location(z: Any) -> tuple[str, str] | None:
    """``(store root, array path)`` of a zarr array in a local folder store (zarr v3 LocalStore / v2 DirectoryStore)."""
    store = z.store
    root = getattr(store, "root", None) or getattr(store, "path", None)
    if root is None or not Path(str(root)).is_dir():
        return None
    return str(root), str(z.path).strip("/")


class _Source:
    """One section's image as a ``(c, y, x)`` block reader.

    ``kind`` is ``"zarr"`` (read chunks through zarr, cached), ``"dask"`` (compute the window; slow, for images
    that are not a plain zarr view) or ``"array"`` (numpy / memmap / anything sliceable in memory).
    """

    def __init__(self, data: Any, name: str):
        self.name = name
        self._z = None
        self._loc = None
        if isinstance(data, str | os.PathLike):
            import zarr

            try:
                z = zarr.open_array(str(data), mode="r")
            except Exception as e:
                raise ValueError(f"images[{name!r}]: {str(data)!r} is not a readable zarr array ({e}).") from e
            self.kind, self._loc, self._z = "zarr", (str(data), ""), z
            data = z
        elif _is_zarr_array(data):
            self.kind, self._z = "zarr", data
            self._loc = _local_zarr_location(data)
        elif hasattr(data, "dask") and hasattr(data, "compute"):
            z = _zarr_behind_dask(data)
            if z is not None:
                self.kind, self._z, self._loc = "zarr", z, _local_zarr_location(z)
            else:
                self.kind, self._dask = "dask", data
        else:
            if not hasattr(data, "shape") or not hasattr(data, "__getitem__"):
                raise TypeError(f"images[{name!r}]: expected an array-like (c, y, x), got {type(data).__name__}.")
            self.kind, self._arr = "array", data
        if len(data.shape) != 3:
            raise ValueError(f"images[{name!r}]: expected 3 dims (c, y, x), got shape {tuple(data.shape)}.")
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)
        self.chunks = tuple(int(c) for c in self._z.chunks) if self.kind == "zarr" else None
        if self.kind == "zarr":
            from ..io._image import check_image_cache

            check_image_cache(self._z)  # a cache cut short after read_st would read as black: refuse it

    # Reopen the zarr array in each worker process instead of pickling live store handles.
    def __getstate__(self):
        state = self.__dict__.copy()
        if self.kind == "zarr" and self._loc is not None:
            state["_z"] = None
        return state

    def _zarr(self):
        if self._z is None:
            import zarr

            root, path = self._loc
            self._z = zarr.open_array(root, path=path, mode="r") if path else zarr.open_array(root, mode="r")
        return self._z

    def reopen(self) -> None:
        if self.kind == "zarr" and self._loc is not None:
            self._z = None

    def read(self, y0: int, y1: int, x0: int, x1: int, cache: _ChunkLRU | None) -> np.ndarray:
        """In-bounds block ``[:, y0:y1, x0:x1]`` as a numpy array."""
        if self.kind == "array":
            return np.asarray(self._arr[:, y0:y1, x0:x1])
        if self.kind == "dask":
            return np.asarray(self._dask[:, y0:y1, x0:x1].compute(scheduler="synchronous"))
        z = self._zarr()
        if cache is None or cache.max_bytes <= 0:
            return np.asarray(z[:, y0:y1, x0:x1])
        _, ch, cw = self.chunks
        _, h, w = self.shape
        out = np.empty((self.shape[0], y1 - y0, x1 - x0), dtype=self.dtype)
        for cy in range(y0 // ch, (y1 - 1) // ch + 1):
            for cx in range(x0 // cw, (x1 - 1) // cw + 1):
                key = (self.name, cy, cx)
                block = cache.get(key)
                if block is None:
                    block = np.asarray(z[:, cy * ch : min((cy + 1) * ch, h), cx * cw : min((cx + 1) * cw, w)])
                    cache.put(key, block)
                by0, bx0 = cy * ch, cx * cw
                ya, yb = max(y0, by0), min(y1, by0 + block.shape[1])
                xa, xb = max(x0, bx0), min(x1, bx0 + block.shape[2])
                out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = block[:, ya - by0 : yb - by0, xa - bx0 : xb - bx0]
        return out


class _ChunkLRU:
    """Least-recently-used cache of decoded zarr chunks with a byte budget (per process)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._d: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.nbytes = 0

    def get(self, key):
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        self._d[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self._d.popitem(last=False)
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        self._d.clear()
        self.nbytes = 0


def _white(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


#: Tolerance of the [0, 1] range check of float images (resampling may overshoot a little).
_FLOAT_RANGE_TOL = 1e-3


def _check_pad_value(pad_value: Any, dtype: np.dtype, section: str) -> None:
    """Refuse a fill value that the image dtype cannot hold as given (uint8: 300 would wrap, 0.5 truncate)."""
    try:
        v = float(pad_value)
    except (TypeError, ValueError):
        v = np.nan
    if dtype.kind in "ui":
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        if isinstance(pad_value, bool) or not (np.isfinite(v) and v == np.floor(v) and lo <= v <= hi):
            raise ValueError(
                f"pad_value: expected an integer in [{lo}, {hi}] for the {dtype} image of section {section!r}, "
                f"got {pad_value!r}."
            )
    elif isinstance(pad_value, bool) or not (np.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(
            f"pad_value: expected a number in [0, 1] for the float ({dtype}) image of section {section!r} (float "
            f"images hold intensities in [0, 1]), got {pad_value!r}."
        )


def _check_float_range(src: _Source, center: np.ndarray, size: int) -> None:
    """Refuse a float image whose values leave [0, 1] in the window around ``center`` (e.g. 0..255 as float).

    Only one window is read (the section's first spot, on tissue): reading the whole image to check it would cost
    as much as the conversion itself, and a 0..255 image shows in any window of H&E (background ≈ 240).
    """
    if src.dtype.kind != "f":
        return
    _, h, w = src.shape
    x0, y0 = _window_origin(center[0], size), _window_origin(center[1], size)
    block = src.read(max(y0, 0), min(y0 + size, h), max(x0, 0), min(x0 + size, w), None)
    finite = block[np.isfinite(block)]
    if not finite.size:
        return
    lo, hi = float(finite.min()), float(finite.max())
    if lo < -_FLOAT_RANGE_TOL or hi > 1.0 + _FLOAT_RANGE_TOL:
        raise ValueError(
            f"images[{src.name!r}]: float ({src.dtype}) image with values in [{lo:.4g}, {hi:.4g}] around the "
            "section's first spot; float images must hold intensities in [0, 1] (patches are clipped to it, so "
            "0..255 values would read as white). Convert it first, e.g. `img / 255` or `img.astype(np.uint8)`."
        )


def _window_origin(center: float, size: int) -> int:
    # Pixel i covers [i, i+1): the window [x0, x0+size) whose centre x0 + size/2 is nearest to `center`
    # (halves round up, deterministically, unlike np.round).
    return int(np.floor(center - size / 2 + 0.5))


def _as_section_names(values: Any) -> list[str]:
    return [str(v) for v in values]


# --------------------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------------------
class SpotPatchDataset(Dataset):
    """Square image windows around spot centres, as a :class:`torch.utils.data.Dataset`.

    Build it from a SpatialData object (``SpotPatchDataset(sdata, table_key="table", ...)``), from plain arrays
    (:meth:`from_arrays`, e.g. a model's registry) or from a patch cache written by :func:`extract_patches`
    (:meth:`from_patch_cache`). The window of spot ``i`` is ``size_px = round(size_um / um_per_px)`` pixels wide
    in its section's full-resolution image, with origin ``x0 = floor(cx - size_px / 2 + 0.5)`` (same for y),
    i.e. the ``size_px`` window whose centre is nearest to the spot centre ``(cx, cy)``. Parts outside the image
    are padded, so spots at the border get full-size patches.

    Windows are read from the zarr array behind a lazily opened image element (as written by
    :func:`scst.io.read_st`), chunk by chunk through a bounded LRU cache of decoded chunks (``chunk_cache_mb`` in
    all, shared out among DataLoader workers), so the whole image is never loaded. Elements that are not a plain
    zarr view fall back to dask (slow, one small compute per patch) or to numpy slicing for in-memory arrays.
    spatialdata's ``ImageTilesDataset`` is not used on this hot path: it goes through xarray/dask per tile and
    clips tiles at the border (varying sizes). The dataset is picklable and works with ``num_workers > 0``
    (each worker reopens the zarr store and keeps its own share of the cache; use ``persistent_workers=True`` to
    keep warm caches across epochs).

    Parameters
    ----------
    sdata
        SpatialData with a table (``obsm["spatial"]`` = (x, y) px, ``obs["section"]``) and per-section geometry in
        ``table.uns["scst"]["sections"][S]`` (``image_key``, ``um_per_px``, ``coordinate_system``), as written by
        :func:`scst.io.read_st`.
    table_key
        Table in ``sdata.tables``.
    obs_subset
        Spots to include: boolean mask over ``obs``, integer positions or obs names; default all.
    genes
        Genes (``var_names``) whose counts are returned under ``"counts"``; default all genes of the table.
    layer
        Layer holding raw counts; default ``X``.
    return_counts
        Whether items carry ``"counts"``.
    size_um
        Window edge in µm (80 µm ≈ 116 px on her2st, the crop of HGGEP/TCGN).
    size_px
        Window edge in full-resolution pixels for every section; overrides ``size_um``.
    out_px
        Resize windows to ``out_px`` × ``out_px`` (bilinear, antialiased; uint8 images are resized in uint8, so
        a patch cache from :func:`extract_patches` reproduces the patches exactly), e.g. 112 (HGGEP) or 224 (TCGN);
        default: no resize (all sections must then give the same ``size_px``).
    padding
        ``"constant"`` (fill with ``pad_value``) or ``"reflect"`` (mirror the image at its border).
    pad_value
        Fill value of ``"constant"`` padding in image units; default white (255 for uint8, 1 for float). Must be
        representable: an integer within the dtype's range for integer images, a number in ``[0, 1]`` for float
        images.
    augment
        Apply a random element of the dihedral group (horizontal flip × rot90 by k·90°) to each patch.
    transform
        Callable applied to the float ``(c, out, out)`` patch in ``[0, 1]`` after augmentation and before
        normalisation (e.g. a torchvision colour jitter).
    normalize
        ``"imagenet"`` (ImageNet mean/std), a ``(mean, std)`` pair of per-channel sequences, or ``None`` (patches
        stay in ``[0, 1]``).
    chunk_cache_mb
        Budget of the cache of decoded zarr chunks, split evenly among DataLoader workers (each holds
        ``chunk_cache_mb / num_workers``), so memory stays bounded whatever the number of workers; 0 reads
        windows straight from zarr. Size it to hold the tissue chunks of all images for fast shuffled epochs
        (her2st: ~30 chunks of 3 MB per section); for many epochs over many slides, a patch cache
        (:func:`extract_patches` + :meth:`from_patch_cache`) is faster still.

    Notes
    -----
    Integer images are scaled to ``[0, 1]`` by their dtype's maximum (uint8: 255); float images must already hold
    ``[0, 1]``: the window of each section's first spot is checked when the dataset is built, and a float image in
    0..255 is refused (its patches would be clipped to white). Patches are clipped to ``[0, 1]``, resized or not
    (float images may overshoot it by up to 1e-3, e.g. after resampling).

    Each item is a dict: ``patch`` (float32 ``(c, out, out)``), ``counts`` (float32 ``(n_genes,)``, raw counts;
    absent without genes), ``array_coords`` (long ``(row, col)``; absent when the table has no
    ``array_row``/``array_col``), ``pixel_coords`` (float32 ``(x, y)`` full-resolution px), ``index`` (int: row of
    the spot in the table, or position in the arrays), ``section`` (int code into :attr:`section_names`).
    """

    def __init__(
        self,
        sdata: Any,
        table_key: str = "table",
        *,
        obs_subset: Any = None,
        genes: Sequence[str] | None = None,
        layer: str | None = None,
        return_counts: bool = True,
        size_um: float = 80.0,
        size_px: int | None = None,
        out_px: int | None = None,
        padding: Literal["constant", "reflect"] = "constant",
        pad_value: float | None = None,
        augment: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        normalize: Literal["imagenet"] | tuple[Sequence[float], Sequence[float]] | None = "imagenet",
        chunk_cache_mb: float = 512.0,
    ):
        from .._constants import ARRAY_COL, ARRAY_ROW, SECTION_KEY, SPATIAL_KEY, UNS_KEY
        from .._utils import _check_key, _get_table

        if not hasattr(sdata, "tables") or not hasattr(sdata, "images"):
            raise TypeError(f"sdata: expected a SpatialData object, got {type(sdata).__name__}.")
        adata = _get_table(sdata, table_key)
        _check_key(adata.obs, SECTION_KEY, f"sdata.tables[{table_key!r}].obs")
        _check_key(adata.obsm, SPATIAL_KEY, f"sdata.tables[{table_key!r}].obsm")
        if UNS_KEY not in adata.uns or "sections" not in adata.uns[UNS_KEY]:
            raise KeyError(
                f"sdata.tables[{table_key!r}].uns[{UNS_KEY!r}]['sections'] not found: per-section geometry "
                "(image_key, um_per_px) is needed; read the data with scst.io.read_st or scst.datasets.*."
            )
        pos = _resolve_obs_subset(adata, obs_subset)
        if pos.size == 0:
            raise ValueError("obs_subset: selects no spot.")
        sec_col = adata.obs[SECTION_KEY]
        if not hasattr(sec_col, "cat"):
            sec_col = sec_col.astype("category")
        names = _as_section_names(sec_col.cat.categories)
        codes = sec_col.cat.codes.to_numpy()[pos].astype(np.int64)
        if (codes < 0).any():
            raise ValueError(f"obs[{SECTION_KEY!r}] has missing values for selected spots.")
        centers = np.asarray(adata.obsm[SPATIAL_KEY], dtype=np.float64)[pos, :2]

        geos = adata.uns[UNS_KEY]["sections"]
        images, um_per_px = {}, {}
        for code in np.unique(codes):
            s = names[code]
            if s not in geos:
                raise KeyError(f"Section {s!r}: no geometry in uns[{UNS_KEY!r}]['sections'] (have {list(geos)}).")
            geo = geos[s]
            key = geo.get("image_key")
            if key is None:
                raise ValueError(
                    f"Section {s!r} has no image (uns[{UNS_KEY!r}]['sections'][{s!r}]['image_key'] is None); "
                    "patches need the H&E image: read the section with an image."
                )
            if key not in sdata.images:
                raise KeyError(f"Section {s!r}: image element {key!r} not in sdata.images ({list(sdata.images)}).")
            arr, to_img = _full_res_image(sdata.images[key], geo.get("coordinate_system", s), key)
            sel = codes == code
            centers[sel] = centers[sel] * to_img
            images[s] = arr
            if geo.get("um_per_px") is None and size_px is None:
                raise ValueError(f"Section {s!r}: um_per_px unknown; pass size_px instead of size_um.")
            um_per_px[s] = float(geo["um_per_px"]) / to_img if geo.get("um_per_px") is not None else np.nan

        counts = var_names = None
        if return_counts:
            X = adata.X if layer is None else adata.layers[_checked(adata.layers, layer, "layer")]
            if genes is None:
                gidx = np.arange(adata.n_vars)
            else:
                genes = [genes] if isinstance(genes, str) else list(genes)
                missing = [g for g in genes if g not in adata.var_names]
                if missing:
                    raise KeyError(f"genes: {len(missing)} not in var_names, e.g. {missing[:5]}.")
                gidx = adata.var_names.get_indexer(genes)
            if gidx.size:  # a table without genes (e.g. a tile_grid) gives no counts
                counts = X[pos][:, gidx]
                var_names = np.asarray(adata.var_names[gidx]).astype(str)
        arr_coords = None
        if ARRAY_ROW in adata.obs and ARRAY_COL in adata.obs:
            arr_coords = np.stack([adata.obs[ARRAY_ROW].to_numpy()[pos], adata.obs[ARRAY_COL].to_numpy()[pos]], 1)
        self._setup(
            images=images, section_names=names, codes=codes, centers=centers, um_per_px=um_per_px, counts=counts,
            var_names=var_names, array_coords=arr_coords, index=pos, obs_names=np.asarray(adata.obs_names[pos]),
            size_um=size_um, size_px=size_px, out_px=out_px, padding=padding, pad_value=pad_value, augment=augment,
            transform=transform, normalize=normalize, chunk_cache_mb=chunk_cache_mb,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        images: Mapping[str, Any],
        centers: Any,
        sections: Any,
        um_per_px: float | Mapping[str, float] | None,
        *,
        counts: Any = None,
        var_names: Sequence[str] | None = None,
        array_coords: Any = None,
        index: Any = None,
        size_um: float = 80.0,
        size_px: int | None = None,
        out_px: int | None = None,
        padding: Literal["constant", "reflect"] = "constant",
        pad_value: float | None = None,
        augment: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        normalize: Literal["imagenet"] | tuple[Sequence[float], Sequence[float]] | None = "imagenet",
        chunk_cache_mb: float = 512.0,
    ) -> SpotPatchDataset:
        """Build the dataset from plain arrays (no AnnData/SpatialData needed).

        Parameters
        ----------
        images
            Section name → image ``(c, y, x)``: a zarr array, a path to one, a dask array (a plain
            ``from_zarr`` view is read through zarr), an xarray DataArray / multiscale DataTree (full resolution
            is used) or a numpy array / memmap.
        centers
            ``(n, 2)`` spot centres ``(x, y)`` in full-resolution pixels of their section's image.
        sections
            Per-spot section: names (keys of ``images``) or integer codes into ``list(images)``.
        um_per_px
            Micrometres per pixel, one number or per section; may be ``None`` when ``size_px`` is given.
        counts
            Optional ``(n, n_genes)`` raw counts (dense or scipy sparse).
        var_names
            Optional gene names of ``counts`` columns.
        array_coords
            Optional ``(n, 2)`` integer ``(row, col)`` grid positions.
        index
            Optional ``(n,)`` integer ids returned as ``"index"`` (default ``0..n-1``).
        size_um, size_px, out_px, padding, pad_value, augment, transform, normalize, chunk_cache_mb
            As in :class:`SpotPatchDataset`.
        """
        if not isinstance(images, Mapping) or len(images) == 0:
            raise TypeError("images: expected a non-empty mapping section name -> (c, y, x) image.")
        names = _as_section_names(images.keys())
        imgs = {}
        for s, im in zip(names, images.values()):
            if hasattr(im, "children") or (hasattr(im, "dims") and hasattr(im, "data")):
                im, _ = _full_res_image(im, None, s)
            imgs[s] = im
        centers = np.asarray(centers, dtype=np.float64)
        if centers.ndim != 2 or centers.shape[1] < 2:
            raise ValueError(f"centers: expected shape (n, 2) of (x, y) pixels, got {centers.shape}.")
        centers = centers[:, :2].copy()
        n = len(centers)
        sections = np.asarray(sections)
        if sections.shape != (n,):
            raise ValueError(f"sections: expected shape ({n},) like centers, got {sections.shape}.")
        if sections.dtype.kind in "iu":
            codes = sections.astype(np.int64)
            if codes.size and (codes.min() < 0 or codes.max() >= len(names)):
                raise ValueError(f"sections: integer codes must lie in [0, {len(names)}) (into list(images)).")
        else:
            lookup = {s: i for i, s in enumerate(names)}
            unknown = sorted({str(s) for s in sections} - set(lookup))
            if unknown:
                raise KeyError(f"sections: {unknown[:5]} not among the keys of images ({names}).")
            codes = np.array([lookup[str(s)] for s in sections], dtype=np.int64)
        if um_per_px is None:
            if size_px is None:
                raise ValueError("um_per_px: needed to convert size_um to pixels (or pass size_px).")
            upp = dict.fromkeys(names, np.nan)
        elif isinstance(um_per_px, Mapping):
            missing = [s for s in names if s not in um_per_px]
            if missing:
                raise KeyError(f"um_per_px: no value for section(s) {missing}.")
            upp = {s: float(um_per_px[s]) for s in names}
        else:
            upp = dict.fromkeys(names, float(um_per_px))
        if counts is not None and counts.shape[0] != n:
            raise ValueError(f"counts: expected {n} rows like centers, got {counts.shape[0]}.")
        if array_coords is not None:
            array_coords = np.asarray(array_coords)
            if array_coords.shape != (n, 2):
                raise ValueError(f"array_coords: expected shape ({n}, 2), got {array_coords.shape}.")
        index = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
        if index.shape != (n,):
            raise ValueError(f"index: expected shape ({n},), got {index.shape}.")
        obj = cls.__new__(cls)
        obj._setup(
            images=imgs, section_names=names, codes=codes, centers=centers, um_per_px=upp, counts=counts,
            var_names=None if var_names is None else np.asarray(var_names).astype(str), array_coords=array_coords,
            index=index, obs_names=None, size_um=size_um, size_px=size_px, out_px=out_px, padding=padding,
            pad_value=pad_value, augment=augment, transform=transform, normalize=normalize,
            chunk_cache_mb=chunk_cache_mb,
        )  # fmt: skip
        return obj

    @classmethod
    def from_patch_cache(
        cls,
        cache: str | os.PathLike | Mapping[str, np.ndarray],
        *,
        out_px: int | None = None,
        augment: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        normalize: Literal["imagenet"] | tuple[Sequence[float], Sequence[float]] | None = "imagenet",
        return_counts: bool = True,
    ) -> SpotPatchDataset:
        """Dataset over pre-extracted patches (a ``.npz`` written by :func:`extract_patches`, or its dict).

        Items have the same keys as for image-backed datasets; the patches are held in memory as uint8.
        ``size_px`` and ``um_per_px`` are the cache's (the windows cut from the images, per section), when it has them.
        """
        if isinstance(cache, str | os.PathLike):
            with np.load(cache, allow_pickle=False) as f:
                cache = {k: f[k] for k in f.files}
        if "patches" not in cache:
            raise KeyError(f"cache: no 'patches' array (keys: {sorted(cache)}); expected extract_patches output.")
        patches = np.asarray(cache["patches"])
        if patches.ndim != 4 or patches.shape[2] != patches.shape[3]:
            raise ValueError(f"cache['patches']: expected (n, c, p, p), got {patches.shape}.")
        n, p = patches.shape[0], patches.shape[2]
        obj = cls.__new__(cls)
        names = [str(s) for s in cache.get("section_names", ["0"])]
        obj._setup(
            images={}, section_names=names, codes=np.asarray(cache.get("sections", np.zeros(n)), dtype=np.int64),
            centers=np.asarray(cache.get("pixel_coords", np.full((n, 2), np.nan)), dtype=np.float64),
            um_per_px=dict.fromkeys(names, np.nan), counts=cache.get("counts") if return_counts else None,
            var_names=cache.get("var_names"), array_coords=cache.get("array_coords"),
            index=np.asarray(cache.get("index", np.arange(n)), dtype=np.int64),
            obs_names=cache.get("obs_names"), size_um=float(cache.get("size_um", np.nan)), size_px=p,
            out_px=out_px, padding="constant", pad_value=None, augment=augment, transform=transform,
            normalize=normalize, chunk_cache_mb=0, patches=patches,
        )  # fmt: skip
        obj.size_um = float(cache.get("size_um", np.nan))
        # the windows read from the images, not the stored patch edge (a 116 px window stored at 64 px said 64)
        geo = {k: np.asarray(cache[k]).ravel() for k in ("size_px", "um_per_px") if k in cache}
        if "size_px" in geo and len(geo["size_px"]) == len(names):
            obj.size_px = {s: int(v) for s, v in zip(names, geo["size_px"]) if v > 0}
        if "um_per_px" in geo and len(geo["um_per_px"]) == len(names):
            obj.um_per_px = {s: float(v) for s, v in zip(names, geo["um_per_px"])}
        return obj

    # ----------------------------------------------------------------------------------------------------------
    def _setup(self, *, images, section_names, codes, centers, um_per_px, counts, var_names, array_coords, index,
               obs_names, size_um, size_px, out_px, padding, pad_value, augment, transform, normalize,
               chunk_cache_mb, patches=None):  # fmt: skip
        if padding not in _PADDINGS:
            raise ValueError(f"padding: expected one of {_PADDINGS}, got {padding!r}.")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable, got {type(transform).__name__}.")
        # bools are no sizes (True was a 1 px window / output); numpy scalars are
        for name, v in (("out_px", out_px), ("size_px", size_px)):
            if v is not None:
                _positive_int(name, v, floats=True)
        if size_px is None:
            try:
                ok = not isinstance(size_um, bool | np.bool_) and np.isfinite(float(size_um)) and size_um > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"size_um: expected a positive number, got {size_um!r}.")
        if not chunk_cache_mb >= 0:  # NaN too
            raise ValueError(f"chunk_cache_mb: expected >= 0, got {chunk_cache_mb}.")
        self.section_names = list(section_names)
        self.codes = np.asarray(codes, dtype=np.int64)
        if self.codes.size == 0:
            raise ValueError("No spots: the dataset would be empty.")
        self.centers = np.asarray(centers, dtype=np.float64)
        self.index = np.asarray(index, dtype=np.int64)
        self.obs_names = None if obs_names is None else np.asarray(obs_names).astype(str)
        self.um_per_px = dict(um_per_px)
        self.size_um = float(size_um) if size_px is None else float("nan")
        self._patches = patches
        self.sources: dict[str, _Source] = {}
        self.size_px: dict[str, int] = {}
        used = {self.section_names[c] for c in np.unique(self.codes)}
        for s in self.section_names:
            if patches is not None:
                self.size_px[s] = int(size_px)
                continue
            if s not in used:
                continue
            src = _Source(images[s], s)
            if size_px is not None:
                px = int(size_px)
            else:
                if not (np.isfinite(self.um_per_px[s]) and self.um_per_px[s] > 0):
                    raise ValueError(f"um_per_px: section {s!r} needs a positive value, got {self.um_per_px[s]}.")
                px = max(1, int(round(size_um / self.um_per_px[s])))
            c, h, w = src.shape
            if px > h or px > w:
                given = f"{px} px (size_px)" if size_px is not None else f"{px} px ({size_um} µm)"
                raise ValueError(
                    f"Patch of {given} is larger than the {w} × {h} px image of section {s!r}; "
                    "use a smaller size_um/size_px."
                )
            sel = self.codes == self.section_names.index(s)
            xy = self.centers[sel]
            # Pixel i covers [i, i + 1): a centre on the far edge (x = w) lies outside, and its window may too.
            bad = ~np.isfinite(xy).all(1) | (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
            if bad.any():
                raise ValueError(
                    f"centers: {int(bad.sum())} spot(s) of section {s!r} lie outside its {w} × {h} px image; "
                    "are the coordinates full-resolution (x, y) pixels?"
                )
            _check_float_range(src, xy[0], px)
            if padding == "constant" and pad_value is not None:
                _check_pad_value(pad_value, src.dtype, s)
            self.sources[s] = src
            self.size_px[s] = px
        sizes = {self.size_px[self.section_names[c]] for c in np.unique(self.codes)}
        if out_px is None and len(sizes) > 1:
            raise ValueError(
                f"Sections give different window sizes {sorted(sizes)} px for {size_um} µm; pass out_px to resize "
                "all patches to one size."
            )
        self.out_px = int(out_px) if out_px is not None else int(next(iter(sizes)))
        chans = {src.shape[0] for src in self.sources.values()} if patches is None else {patches.shape[1]}
        self.n_channels = int(next(iter(chans))) if len(chans) == 1 else None
        if len(chans) > 1:
            raise ValueError(f"images: sections have different channel counts {sorted(chans)}.")
        self.padding = padding
        self.pad_value = pad_value
        self.augment = bool(augment)
        self.transform = transform
        self._mean = self._std = None
        if normalize is not None:
            if isinstance(normalize, str):
                if normalize != "imagenet":
                    raise ValueError(f"normalize: expected 'imagenet', (mean, std) or None, got {normalize!r}.")
                mean, std = IMAGENET_MEAN, IMAGENET_STD
            else:
                try:
                    mean, std = normalize
                except (TypeError, ValueError) as e:
                    raise ValueError("normalize: expected 'imagenet', a (mean, std) pair or None.") from e
            mean, std = np.asarray(mean, dtype=np.float32).ravel(), np.asarray(std, dtype=np.float32).ravel()
            if mean.size != self.n_channels or std.size != self.n_channels or (std <= 0).any():
                raise ValueError(
                    f"normalize: mean/std need {self.n_channels} values (one per channel) and std > 0, got "
                    f"{mean.tolist()} / {std.tolist()}."
                )
            self._mean = torch.from_numpy(mean).view(-1, 1, 1)
            self._std = torch.from_numpy(std).view(-1, 1, 1)
        self.counts = None
        if counts is not None:
            self.counts = (
                sparse.csr_matrix(counts, dtype=np.float32)
                if sparse.issparse(counts)
                else np.asarray(counts, dtype=np.float32)
            )
        self.var_names = var_names
        self.array_coords = None if array_coords is None else np.asarray(array_coords, dtype=np.int64)
        self.chunk_cache_mb = float(chunk_cache_mb)
        self._cache_budget = int(chunk_cache_mb * 2**20)
        self._cache = _ChunkLRU(self._cache_budget)
        self._pid = os.getpid()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = _ChunkLRU(self._cache.max_bytes)  # workers start with an empty cache of their own
        return state

    def __len__(self) -> int:
        return len(self.codes)

    def clear_cache(self) -> None:
        """Free the decoded zarr chunks held by this process (e.g. after reading every patch once)."""
        self._cache.clear()

    def __repr__(self) -> str:
        geo = ", ".join(f"{s}: {p} px" for s, p in self.size_px.items())
        return (
            f"SpotPatchDataset(n={len(self)}, sections={len(self.size_px)}, window {{{geo}}} -> {self.out_px} px, "
            f"counts={None if self.counts is None else self.counts.shape[1]} genes)"
        )

    # ----------------------------------------------------------------------------------------------------------
    def window(self, i: int) -> np.ndarray:
        """Raw padded window of spot ``i`` at full resolution: ``(c, size_px, size_px)`` in the image dtype."""
        if self._patches is not None:
            return np.asarray(self._patches[i])
        if os.getpid() != self._pid:  # DataLoader worker: fresh handles, and its share of the cache budget
            self._pid = os.getpid()
            info = torch.utils.data.get_worker_info()
            self._cache = _ChunkLRU(self._cache_budget // (info.num_workers if info is not None else 1))
            for src in self.sources.values():
                src.reopen()
        s = self.section_names[self.codes[i]]
        src, size = self.sources[s], self.size_px[s]
        _, h, w = src.shape
        cx, cy = self.centers[i]
        x0, y0 = _window_origin(cx, size), _window_origin(cy, size)
        x1, y1 = x0 + size, y0 + size
        xa, xb, ya, yb = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
        block = src.read(ya, yb, xa, xb, self._cache)
        pad = ((0, 0), (ya - y0, y1 - yb), (xa - x0, x1 - xb))
        if pad[1] == (0, 0) and pad[2] == (0, 0):
            return block
        if self.padding == "reflect":  # mirrored at the image's border (np.pad on the block mirrors inside it)
            ys, xs = _reflect_index(y0, y1, h), _reflect_index(x0, x1, w)
            block = src.read(int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1, self._cache)
            return block[:, ys - ys.min()][:, :, xs - xs.min()]
        fill = _white(src.dtype) if self.pad_value is None else self.pad_value
        return np.pad(block, pad, mode="constant", constant_values=fill)

    def patch_uint8(self, i: int) -> np.ndarray:
        """Window of spot ``i`` resized to ``out_px`` as uint8 ``(c, out_px, out_px)``, no augmentation.

        For uint8 images this is exactly ``round(255 * patch)`` of the un-normalised item (both resize in uint8).
        """
        w = self.window(i)
        if w.dtype == np.uint8:
            return self._resize_uint8(w).numpy()
        x = self._resize(self._to_float(w))
        return (x * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).numpy()

    def patches_uint8(self, idx: Sequence[int] | np.ndarray, float01: bool = False) -> np.ndarray:
        """Patches of the spots ``idx``, as :meth:`patch_uint8` gives each, resized in one batch per window size.

        With ``float01``, float32 patches in ``[0, 1]`` as ``__getitem__`` makes them without augmentation,
        transform or normalisation (for uint8 images exactly ``patches_uint8(idx) / 255``).
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        p, c = int(self.out_px), self.n_channels
        out = np.empty((len(idx), c, p, p), dtype=np.float32 if float01 else np.uint8)
        wins = [self.window(int(i)) for i in idx]
        sizes = np.array([w.shape[-1] for w in wins], dtype=np.int64)
        for size in np.unique(sizes):
            sel = np.flatnonzero(sizes == size)
            stack = np.stack([wins[j] for j in sel])
            if stack.dtype == np.uint8:
                t = torch.from_numpy(stack)
                if size != p and p == 1:  # as _resize_uint8: torch's uint8 kernel fails an assert for 1 × 1 output
                    t = F.interpolate(t.to(torch.float32).div_(255.0), size=(1, 1), mode="bilinear",
                                      align_corners=False, antialias=True)  # fmt: skip
                    t = t.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
                elif size != p:
                    t = F.interpolate(t, size=(p, p), mode="bilinear", align_corners=False, antialias=True)
                out[sel] = t.to(torch.float32).div_(255.0).numpy() if float01 else t.numpy()
                continue
            x = torch.from_numpy(stack).to(torch.float32)
            scale = _white(stack.dtype)
            x = (x / scale if scale != 1.0 else x).clamp(0.0, 1.0)  # as _to_float
            if size != p:
                x = F.interpolate(x, size=(p, p), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
            out[sel] = x.numpy() if float01 else (x * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).numpy()
        return out

    def _resize_uint8(self, w: np.ndarray) -> torch.Tensor:
        # torch resizes uint8 with an antialiased bilinear kernel directly (about twice as fast as float32).
        t = torch.from_numpy(np.ascontiguousarray(w))
        if t.shape[-1] == self.out_px:
            return t
        if self.out_px == 1:  # torch's uint8 kernel fails an internal assert for 1 × 1 output with 3 channels
            return self._resize(t.to(torch.float32).div_(255.0)).mul_(255.0).round_().to(torch.uint8)
        size = (self.out_px, self.out_px)
        return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]

    def _to_float(self, w: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(w)).to(torch.float32)
        scale = _white(w.dtype)
        # clipped to [0, 1] as resized patches are: float images may overshoot it a little (_FLOAT_RANGE_TOL)
        return (x / scale if scale != 1.0 else x).clamp(0.0, 1.0)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.out_px:
            return x
        size = (self.out_px, self.out_px)
        y = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)
        return y[0].clamp_(0.0, 1.0)

    def _float_patch(self, i: int) -> torch.Tensor:
        w = self.window(i)
        if w.dtype == np.uint8:
            return self._resize_uint8(w).to(torch.float32).div_(255.0)
        return self._resize(self._to_float(w))

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} spots.")
        i %= len(self)
        x = self._float_patch(i)
        if self.augment:
            r = int(torch.randint(0, 8, ()).item())
            if r >= 4:
                x = torch.flip(x, dims=(2,))
            if r % 4:
                x = torch.rot90(x, r % 4, dims=(1, 2))
            x = x.contiguous()
        if self.transform is not None:
            x = self.transform(x)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        item = {
            "patch": x,
            "pixel_coords": torch.tensor(self.centers[i], dtype=torch.float32),
            "index": int(self.index[i]),
            "section": int(self.codes[i]),
        }
        if self.counts is not None:
            row = self.counts[i].toarray()[0] if sparse.issparse(self.counts) else self.counts[i]
            item["counts"] = torch.from_numpy(np.asarray(row, dtype=np.float32))
        if self.array_coords is not None:
            item["array_coords"] = torch.from_numpy(self.array_coords[i].copy())
        return item

    def locality_order(self) -> np.ndarray:
        """Spot order that visits each section's image chunk by chunk (maximises chunk-cache hits)."""
        cells = np.zeros((len(self), 2), dtype=np.int64)
        for s, src in self.sources.items():
            sel = self.codes == self.section_names.index(s)
            ch, cw = (src.chunks[1], src.chunks[2]) if src.chunks else (1024, 1024)
            cells[sel] = (self.centers[sel][:, ::-1] // (ch, cw)).astype(np.int64)
        return np.lexsort((self.centers[:, 0], cells[:, 1], cells[:, 0], self.codes))


# --------------------------------------------------------------------------------------------------------------
def _checked(mapping, key, arg):
    if key not in mapping:
        raise KeyError(f"{arg}: {key!r} not found; available: {list(mapping.keys())}.")
    return key


def _resolve_obs_subset(adata, obs_subset) -> np.ndarray:
    n = adata.n_obs
    if obs_subset is None:
        return np.arange(n)
    sub = np.asarray(obs_subset)
    if sub.dtype == bool:
        if sub.shape != (n,):
            raise ValueError(f"obs_subset: boolean mask of length {sub.shape} does not match n_obs = {n}.")
        return np.flatnonzero(sub)
    if sub.dtype.kind in "iu":
        if sub.size and (sub.min() < -n or sub.max() >= n):
            raise IndexError(f"obs_subset: integer positions must lie in [0, {n}).")
        return np.asarray(sub, dtype=np.int64) % n
    if not adata.obs_names.is_unique:
        raise ValueError(
            "obs_subset: obs names are not unique, so names are ambiguous; pass a boolean mask or integer positions "
            "(or call adata.obs_names_make_unique())."
        )
    idx = adata.obs_names.get_indexer(sub.astype(str))
    if (idx < 0).any():
        raise KeyError(f"obs_subset: obs names {sub[idx < 0][:5].tolist()} not in the table.")
    return idx.astype(np.int64)


def _reflect_index(start: int, stop: int, n: int) -> np.ndarray:
    """Indices ``start … stop - 1`` mirrored into ``0 … n - 1`` at the borders (numpy's ``"reflect"``).

    The edge pixel is not repeated; windows wider than twice the image fold back and forth.
    """
    i = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i > n - 1, period - i, i)


def _full_res_image(el: Any, coordinate_system: str | None, key: str) -> tuple[Any, float]:
    """Full-resolution ``(c, y, x)`` array of an image element and the factor coordinate-system px → image px."""
    if hasattr(el, "children") and len(el.children):  # multiscale DataTree
        first = next(iter(el.children))
        ds = el[first].ds
        arr = ds[next(iter(ds.data_vars))]
    else:
        arr = el
    dims = tuple(getattr(arr, "dims", ()))
    if dims and dims != ("c", "y", "x"):
        raise ValueError(f"Image {key!r}: expected dims ('c', 'y', 'x'), got {dims}.")
    factor = 1.0
    if coordinate_system is not None:
        from spatialdata.transformations import get_transformation

        ts = get_transformation(arr, get_all=True) or {}
        if coordinate_system not in ts:
            raise KeyError(f"Image {key!r} has no transformation to coordinate system {coordinate_system!r}.")
        m = np.asarray(ts[coordinate_system].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))
        if not (np.allclose(m[0, 1:], 0) and np.allclose(m[1, [0, 2]], 0) and np.isclose(m[0, 0], m[1, 1])):
            raise ValueError(
                f"Image {key!r}: only an isotropic scale to coordinate system {coordinate_system!r} is supported, "
                f"got affine {m.tolist()}."
            )
        factor = 1.0 / float(m[0, 0])
    data = getattr(arr, "data", arr)
    return data, factor


# --------------------------------------------------------------------------------------------------------------
def extract_patches(
    sdata: Any,
    table_key: str = "table",
    *,
    out: str | os.PathLike | np.ndarray | None = None,
    size_um: float = 80.0,
    size_px: int | None = None,
    out_px: int | None = None,
    obs_subset: Any = None,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    return_counts: bool = True,
    padding: Literal["constant", "reflect"] = "constant",
    pad_value: float | None = None,
    num_workers: int = 0,
    chunk_cache_mb: float = 512.0,
    compress: bool = False,
) -> Path | dict[str, np.ndarray]:
    """Write spot patches once to a numpy cache, for torch-only (e.g. GPU) scripts without the scverse stack.

    Patches are read exactly as by :class:`SpotPatchDataset` (same window, padding and resize, no augmentation
    or normalisation), visiting each image chunk by chunk, and stored as uint8.

    Parameters
    ----------
    sdata, table_key, obs_subset, genes, layer, return_counts, size_um, size_px, out_px, padding, pad_value
        As in :class:`SpotPatchDataset`.
    out
        ``None``: return the arrays; a path: write an ``.npz`` there (to a temporary file in the same folder,
        renamed into place) and return the path; a uint8 array of shape ``(n, 3, out_px, out_px)`` (e.g. a
        ``np.memmap``): fill it and return the arrays with ``"patches"`` being ``out``.
    num_workers
        DataLoader workers reading patches.
    chunk_cache_mb
        Decoded-chunk cache budget, shared out among the workers.
    compress
        Write a compressed ``.npz`` (smaller, slower).

    Returns
    -------
    The path, or a dict with ``patches`` (uint8 ``(n, c, p, p)``), ``pixel_coords`` (float64 ``(n, 2)`` x, y px),
    ``sections`` (int64 codes into ``section_names``), ``section_names``, ``index`` (int64 table rows),
    ``obs_names``, ``size_px`` / ``um_per_px`` (per section name, ``-1``/``nan`` for sections without selected
    spots), ``size_um``, ``out_px``, and when available ``array_coords`` (int64 ``(n, 2)`` row, col),
    ``counts`` (float32 ``(n, n_genes)``) and ``var_names``. String arrays are unicode, so
    ``np.load(path)`` needs no pickle.
    """
    _positive_int("num_workers", num_workers, minimum=0)  # < 0 ran in-process
    ds = SpotPatchDataset(
        sdata, table_key, obs_subset=obs_subset, genes=genes, layer=layer, return_counts=return_counts,
        size_um=size_um, size_px=size_px, out_px=out_px, padding=padding, pad_value=pad_value, normalize=None,
        chunk_cache_mb=chunk_cache_mb,
    )  # fmt: skip
    n, c, p = len(ds), ds.n_channels, ds.out_px
    if isinstance(out, np.ndarray):
        if out.shape != (n, c, p, p) or out.dtype != np.uint8:
            raise ValueError(f"out: expected a uint8 array of shape {(n, c, p, p)}, got {out.dtype} {out.shape}.")
        patches = out
    elif out is None or isinstance(out, str | os.PathLike):
        patches = np.empty((n, c, p, p), dtype=np.uint8)
    else:
        raise TypeError(f"out: expected None, a path or a numpy array, got {type(out).__name__}.")
    order = ds.locality_order()
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            _Uint8View(ds), batch_size=32, sampler=order.tolist(), num_workers=num_workers,
            collate_fn=_stack_uint8,
        )  # fmt: skip
        for idx, batch in loader:
            patches[idx] = batch
    else:
        for i in order:
            patches[i] = ds.patch_uint8(int(i))
        ds.clear_cache()
    names = ds.section_names
    res: dict[str, np.ndarray] = {
        "patches": patches,
        "pixel_coords": ds.centers.copy(),
        "sections": ds.codes.copy(),
        "section_names": np.asarray(names, dtype=str),
        "index": ds.index.copy(),
        "size_px": np.array([ds.size_px.get(s, -1) for s in names], dtype=np.int64),
        "um_per_px": np.array([ds.um_per_px.get(s, np.nan) for s in names], dtype=np.float64),
        "size_um": np.float64(ds.size_um),
        "out_px": np.int64(p),
    }
    if ds.obs_names is not None:
        res["obs_names"] = ds.obs_names.astype(str)
    if ds.array_coords is not None:
        res["array_coords"] = ds.array_coords
    if ds.counts is not None:
        res["counts"] = ds.counts.toarray() if sparse.issparse(ds.counts) else ds.counts
        res["var_names"] = np.asarray(ds.var_names, dtype=str)
    if out is None or isinstance(out, np.ndarray):
        return res
    from .._logging import logg
    from .._utils import _atomic_file

    dest = Path(out)
    with _atomic_file(dest) as tmp, open(tmp, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **res)
    logg.info(f"Wrote {n} patches ({c}×{p}×{p} uint8) to {dest}")
    return dest


class PatchBatches(Dataset):
    """Batches of spot patches as DataLoader items (``batch_size=None``): item ``i`` is ``(i, patches of items[i])``.

    The batch is read by :meth:`SpotPatchDataset.patches_uint8` (one resize per batch), in a DataLoader worker when
    ``num_workers > 0`` (reading overlaps the model), or taken from ``patches`` (uint8 ``(n, c, p, p)`` already in
    memory). ``float01``: float32 patches in ``[0, 1]`` instead of uint8. ``fn``: a picklable function applied to
    the numpy batch where it is read (e.g. CPU features computed in the workers, in parallel); its array is returned.
    """

    def __init__(self, ds: SpotPatchDataset, items: Sequence[np.ndarray], patches: np.ndarray | None = None,
                 float01: bool = False, fn: Callable[[np.ndarray], np.ndarray] | None = None):  # fmt: skip
        self.ds, self.items, self.patches, self.float01 = ds, [np.asarray(i, np.int64) for i in items], patches, float01
        self.fn = fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        idx = self.items[i]
        if self.patches is not None:
            p = self.patches[idx]
            p = p.astype(np.float32) / 255.0 if self.float01 else np.ascontiguousarray(p)
        else:
            p = self.ds.patches_uint8(idx, float01=self.float01)
        return i, torch.from_numpy(np.ascontiguousarray(self.fn(p)) if self.fn is not None else p)


class _Uint8View(Dataset):
    def __init__(self, ds: SpotPatchDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return int(i), self.ds.patch_uint8(int(i))


def _stack_uint8(batch):
    idx = np.array([b[0] for b in batch], dtype=np.int64)
    return idx, np.stack([b[1] for b in batch])
