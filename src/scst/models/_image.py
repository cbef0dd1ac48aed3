"""Machinery shared by the H&E → expression models (HGGEP, TCGN, ST-Net) and the feature heads.

The key registry of image models (``_ImageModel.setup_sdata``), log1p(normalize_total) targets, spatial windows,
and the in-memory uint8 patch cache.
"""

from __future__ import annotations

import hashlib
import math
import os
import types
import warnings
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .._constants import ARRAY_COL, ARRAY_ROW, SECTION_KEY, SPATIAL_KEY, TABLE_KEY, UNS_KEY
from .._logging import logg
from .._normalize import TARGET_SUM, panel_targets, raw_counts
from .._utils import _get_table, _positive_int
from ..nn._train_step import patches_to_input
from ._base import BaseModel, _training_grid_step

#: What a user whose table holds log-normalised values (not counts) can do instead.
_RAW_HINT = "Pass `layer=` with the raw counts (e.g. 'counts', kept before scanpy's normalize_total/log1p)."

__all__ = ["clear_patch_cache"]

#: Relative µm/px difference between a predicted section and training above which a warning is given.
UM_PER_PX_TOLERANCE = 0.05

# --------------------------------------------------------------------------------------------------------------
# In-memory patch cache (shared by HGGEP, TCGN and all their instances in a process)
# --------------------------------------------------------------------------------------------------------------
# her2st: 180 spots x 3 x 112 x 112 uint8 = 6.8 MB per section; a leave-one-section-out run re-reads the same
# sections for every fold and model, so patches are kept per (image content, spots, geometry). The key names the
# image by its dask token (the zarr store and array for a lazily read image, a hash of the pixels for an in-memory
# one), never by the Python object's id(): a new object on the same image hits, a freed object's id reused for
# another image cannot. The budget bounds the process-wide cache; a section larger than what fits is read lazily.
_PATCH_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_PATCH_CACHE_STATE = {"bytes": 0}


def _cache_evict(budget: int) -> None:
    while _PATCH_CACHE and _PATCH_CACHE_STATE["bytes"] > budget:
        _, arr = _PATCH_CACHE.popitem(last=False)
        _PATCH_CACHE_STATE["bytes"] -= arr.nbytes


def clear_patch_cache() -> None:
    """Empty the process-wide patch cache of the image models."""
    _PATCH_CACHE.clear()
    _PATCH_CACHE_STATE["bytes"] = 0


def _element_token(element: Any) -> str:
    """Content token of a spatialdata image element (DataArray or multiscale DataTree): dask's tokenize of its data."""
    import dask.base

    children = getattr(element, "children", None)
    if children:  # multiscale: the full-resolution level names the image
        node = element[sorted(children)[0]]
        data = next(iter(node.ds.data_vars.values())).data
    else:
        data = element.data
    return dask.base.tokenize(data, _zarr_files_stamp(data))


def _zarr_files_stamp(data: Any) -> tuple:
    """(folder, files, bytes, latest mtime) of each local zarr array a dask array reads.

    dask names a lazily read image by its store path and array, so an image rewritten at the same path would
    otherwise keep its cached patches. Every chunk file is stat'ed, once per cache lookup (about 40 ms per 10,000
    files on a local disk, measured 2026-12-04): the metadata file's mtime alone would miss chunks edited in place.
    """
    stamp = []
    graph = getattr(data, "dask", None)
    for layer in getattr(graph, "layers", {}).values() if graph is not None else ():
        for value in layer.values():
            store = getattr(value, "store", None)
            if store is None or not type(value).__module__.startswith("zarr"):
                continue
            root = getattr(store, "root", None) or getattr(store, "path", None)
            folder = os.path.join(str(root), str(getattr(value, "path", "") or "")) if root is not None else None
            if folder is None or not os.path.isdir(folder):
                continue
            n = size = latest = 0
            for dirpath, _, files in os.walk(folder):
                for f in files:
                    st = os.stat(os.path.join(dirpath, f))
                    n, size, latest = n + 1, size + st.st_size, max(latest, st.st_mtime_ns)
            stamp.append((folder, n, size, latest))
    return tuple(stamp)


def _cache_key(element: Any, centers: np.ndarray, size_um: float, patch_px: int, window_px: int) -> tuple:
    # window_px: the window cut from the image (size_um / um_per_px), which a corrected pixel size changes
    digest = hashlib.sha1(np.ascontiguousarray(centers, dtype=np.float64).tobytes()).hexdigest()
    return (_element_token(element), digest, float(size_um), int(patch_px), window_px)


def _cache_lookup(key: tuple) -> np.ndarray | None:
    hit = _PATCH_CACHE.get(key)
    if hit is not None:
        _PATCH_CACHE.move_to_end(key)
    return hit


def _cached_patches(
    element: Any,
    centers: np.ndarray,
    size_um: float,
    patch_px: int,
    budget: int,
    read: Any,
    window_px: int,
):
    """Patches of ``centers`` on ``element`` from the process-wide cache, else ``read()`` (uint8, stored read-only)."""
    key = _cache_key(element, centers, size_um, patch_px, window_px)
    hit = _PATCH_CACHE.get(key)
    if hit is not None:
        _PATCH_CACHE.move_to_end(key)
        return hit
    arr = read()
    arr.setflags(write=False)
    _PATCH_CACHE[key] = arr
    _PATCH_CACHE_STATE["bytes"] += arr.nbytes
    _cache_evict(budget)
    return arr


class _SectionPatches:
    """uint8 ``(3, patch_px, patch_px)`` patches of some spots of one section, read with :class:`SpotPatchDataset`.

    All patches are read once and kept in the process-wide cache when they fit in ``cache_mb``; otherwise every
    :meth:`get` reads its spots from the image (zarr chunk cache of the dataset).
    """

    def __init__(self, sdata: Any, table: str, rows: np.ndarray, size_um: float, patch_px: int, cache_mb: float):
        from ..pp._patches import SpotPatchDataset

        self.n = len(rows)
        self.ds = SpotPatchDataset(
            sdata, table, obs_subset=rows, return_counts=False, size_um=size_um, out_px=patch_px, normalize=None
        )
        adata = _get_table(sdata, table)
        section = str(adata.obs[SECTION_KEY].iloc[int(rows[0])])
        self._element = sdata.images[adata.uns[UNS_KEY]["sections"][section]["image_key"]]
        self.size_um, self.patch_px = float(size_um), int(patch_px)
        self.window_px = int(self.ds.size_px[section])  # pixels cut from the image: part of the cache key
        self.nbytes = self.n * self.ds.n_channels * patch_px * patch_px
        self.budget = int(cache_mb * 2**20)
        self.cached = self.nbytes <= self.budget
        self._arr: np.ndarray | None = None

    def _read_all(self) -> np.ndarray:
        arr = np.empty((self.n, self.ds.n_channels, self.ds.out_px, self.ds.out_px), dtype=np.uint8)
        for i in self.ds.locality_order():
            arr[i] = self.ds.patch_uint8(int(i))
        self.ds.clear_cache()  # the patches are in memory now: free the decoded zarr chunks (up to 512 MB)
        return arr

    def _load(self) -> np.ndarray:
        return _cached_patches(
            self._element, self.ds.centers, self.size_um, self.patch_px, self.budget, self._read_all, self.window_px
        )

    def get(self, idx: np.ndarray) -> np.ndarray:
        """uint8 patches of the spots at positions ``idx`` (into ``rows``); caches the section when it fits."""
        if self.cached:
            if self._arr is None:
                self._arr = self._load()
            return self._arr[idx]
        return self.ds.patches_uint8(idx)

    def in_memory(self) -> np.ndarray | None:
        """All patches when the process-wide cache already holds them (nothing is read or cached); else None.

        Prediction reads a section once: it streams the patches through a DataLoader instead of caching them, so
        its memory does not grow with the section; patches cached by training on the section are reused.
        """
        if self._arr is None and self.cached:
            key = _cache_key(self._element, self.ds.centers, self.size_um, self.patch_px, self.window_px)
            self._arr = _cache_lookup(key)
        return self._arr

    def loader(self, items: Sequence[np.ndarray], opts: Any) -> Any:
        """DataLoader over ``items`` (index arrays): ``(i, uint8 patches of items[i])`` read ahead by its workers."""
        from torch.utils.data import DataLoader

        from ..pp._patches import PatchBatches

        dataset = PatchBatches(self.ds, items, self.in_memory())
        return DataLoader(dataset, batch_size=None, shuffle=False, **opts.loader_kwargs(len(items)))


def _input_on(patches: torch.Tensor, opts: Any) -> torch.Tensor:
    """uint8 ``(n, 3, p, p)`` batch → ImageNet-normalised float on the device (:func:`scst.nn.patches_to_input`).

    The uint8 batch is moved first (a quarter of the bytes of float32; asynchronously when pinned), then converted
    on the device, in the memory layout of ``opts.convolutions`` (``opts.input_layout``, as ``embed_patches``).
    """
    return opts.input_layout(patches_to_input(opts.to_device(patches)))


# --------------------------------------------------------------------------------------------------------------
# Spatial windows
# --------------------------------------------------------------------------------------------------------------
def _random_windows(positions: np.ndarray, max_spots: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Training windows: ``ceil(n / max_spots)`` sets of the ``max_spots`` spots nearest to a random spot."""
    n = len(positions)
    if n <= max_spots:
        return [np.arange(n)]
    from scipy.spatial import cKDTree

    tree = cKDTree(positions)
    centres = rng.choice(n, size=math.ceil(n / max_spots), replace=False)
    return [np.sort(tree.query(positions[c], k=max_spots)[1]) for c in centres]


def _kd_cells(idx: np.ndarray, positions: np.ndarray, max_size: int) -> list[np.ndarray]:
    if len(idx) <= max_size:
        return [idx]
    p = positions[idx]
    extent = p.max(0) - p.min(0)
    axis = int(np.flatnonzero(extent >= extent.max() * (1 - 1e-9))[0])  # equal extents but for round-off: the first
    # ties on the split axis (spots of a lattice row) are broken by the other coordinates, not by row order
    order = idx[np.lexsort((*p.T[::-1], p[:, axis]))]
    half = len(order) // 2
    return _kd_cells(order[:half], positions, max_size) + _kd_cells(order[half:], positions, max_size)


def _nearest(tree: Any, positions: np.ndarray, centre: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` spots nearest to ``centre``, by distance, then position: ties never depend on the row order."""
    dist, near = tree.query(centre, k=k)
    if k < len(positions):  # spots as far as the k-th one (a lattice around a symmetric centre) are candidates too
        near = np.union1d(near, tree.query_ball_point(centre, dist[-1] * (1 + 1e-9))).astype(np.int64)
    p = positions[near]
    dist = np.sqrt(((p - centre) ** 2).sum(1))
    # distances equal but for round-off (a translated or scaled lattice) tie as well
    dist = np.round(dist / max(float(dist.max()) * 1e-9, np.finfo(float).tiny))
    return near[np.lexsort((*p.T[::-1], dist))][:k]


def _tiling_windows(positions: np.ndarray, max_spots: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Prediction windows ``(window, core)``: every spot is in exactly one core and predicted from its window.

    Cores are k-d cells of at most ``max_spots // 2`` spots; each window is its core plus the spots nearest to the
    core's centre, up to ``max_spots``, so spots at a core's border still see neighbours on all sides. Ties
    (spots of a lattice) are broken by position, so the windows, and the predictions made in them, do not depend on
    the order of the table's rows.
    """
    n = len(positions)
    if n <= max_spots:
        return [(np.arange(n), np.arange(n))]
    from scipy.spatial import cKDTree

    tree = cKDTree(positions)
    out = []
    for core in _kd_cells(np.arange(n), positions, max(1, max_spots // 2)):
        near = _nearest(tree, positions, positions[core].mean(0), max_spots)
        extra = near[~np.isin(near, core)][: max_spots - len(core)]
        out.append((np.sort(np.concatenate([core, extra])), core))
    return out


class _WindowDataset(Dataset):
    """Items = spatial windows of at most ``max_spots`` spots of one section (HGGEP and its spatial head).

    Training draws a new window (the ``max_spots`` spots nearest to a random spot) at every access,
    ``ceil(n / max_spots)`` items per section and epoch; otherwise a fixed tiling in which every spot is predicted
    inside the window around its k-d cell. Subclasses say which spots are usable and build the batch.
    """

    def __init__(self, sections: list, max_spots: int, train: bool):
        self.sections, self.max_spots, self.train = sections, max_spots, train
        self.items: list[tuple[int, np.ndarray | None]] = []
        for i, sec in enumerate(sections):
            usable = self._usable(sec)
            if train:
                self.items += [(i, None)] * math.ceil(len(usable) / max_spots)
            else:
                self.items += [(i, usable[w]) for w, _ in _tiling_windows(sec.positions[usable], max_spots)]

    def _usable(self, sec: Any) -> np.ndarray:
        """Positions (into the section's arrays) of the spots windows are cut from; default all."""
        return np.arange(len(sec.positions))

    def __len__(self) -> int:
        return len(self.items)

    def _window(self, i: int) -> tuple[Any, np.ndarray]:
        s, idx = self.items[i]
        sec = self.sections[s]
        if idx is None:
            usable = self._usable(sec)
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            idx = usable[_random_windows(sec.positions[usable], self.max_spots, rng)[0]]
        return sec, idx


# --------------------------------------------------------------------------------------------------------------
# Shared setup / data plumbing of image models
# --------------------------------------------------------------------------------------------------------------
def _sections_of(adata: Any) -> list[str]:
    col = adata.obs[SECTION_KEY]
    present = pd.unique(col.astype(str))
    cats = col.cat.categories if hasattr(col, "cat") else present
    return [str(s) for s in cats if str(s) in set(present)]


def _check_sections(adata: Any, sections: Any, arg: str = "sections") -> list[str]:
    present = _sections_of(adata)
    if sections is None:
        return present
    sections = [sections] if isinstance(sections, str) else [str(s) for s in sections]
    empty = [s for s in sections if s not in present]
    if empty:
        raise ValueError(f"{arg}: {empty} have no spots in the table (sections with spots: {present}).")
    if not sections:
        raise ValueError(f"{arg}: empty list of sections.")
    return sections


def _training_sections(model: Any, adata: Any) -> list[str]:
    """The sections ``model`` was set up to train on; each must have spots in ``adata``, the attached table.

    A model loaded onto other data keeps its own setup, not that data's.
    """
    sections = [str(s) for s in model.registry["sections"]]
    present = _sections_of(adata)
    absent = [s for s in sections if s not in present]
    if absent:
        raise ValueError(
            f"data: the training sections {absent} of this {type(model).__name__} (its setup, kept by `load`) have "
            f"no spots in the attached table (sections with spots: {present}). A model trains further only on the "
            "sections it was set up with; for other sections, set up their table and build a new model."
        )
    return sections


def _resolve_panel(adata: Any, genes: Any) -> tuple[list[str], str | None]:
    if genes is None:
        return [str(g) for g in adata.var_names], None
    if isinstance(genes, str):
        if genes not in adata.var:
            raise KeyError(
                f"genes: {genes!r} is not a column of var (available: {list(adata.var.columns)[:20]}); run "
                "`scst.pp.select_genes(adata)` or pass a list of genes."
            )
        col = adata.var[genes]
        if col.dtype != bool:
            raise ValueError(f"genes: var[{genes!r}] must be boolean, got dtype {col.dtype}.")
        panel = [str(g) for g in adata.var_names[col.to_numpy()]]
        if not panel:
            raise ValueError(f"genes: var[{genes!r}] selects no gene.")
        return panel, genes
    mask = np.asarray(genes)
    if mask.dtype == bool:  # as evaluate_expression: one entry per var (not names "True")
        if mask.shape != (adata.n_vars,):
            raise ValueError(f"genes: boolean mask of shape {mask.shape}, expected ({adata.n_vars},) (one per var).")
        if not mask.any():
            raise ValueError("genes: the boolean mask selects no gene.")
        return [str(g) for g in adata.var_names[mask]], None
    panel = [str(g) for g in genes]
    if not panel:
        raise ValueError("genes: empty gene list.")
    missing = [g for g in panel if g not in adata.var_names]
    if missing:
        raise KeyError(f"genes: {len(missing)} gene(s) not in var_names: {missing[:20]}")
    if len(set(panel)) != len(panel):
        raise ValueError("genes: duplicated gene names.")
    return panel, None


def _section_geometries(sdata: Any, adata: Any, sections: Sequence[str], size_um: float) -> dict[str, float]:
    """µm/px per section, after checking that each section has an image big enough for a ``size_um`` patch."""
    from ..pp._patches import _full_res_image

    geos = adata.uns.get(UNS_KEY, {}).get("sections", {})
    out = {}
    for s in sections:
        if s not in geos:
            raise KeyError(
                f"Section {s!r}: no geometry in uns[{UNS_KEY!r}]['sections'] (have {list(geos)}); read the data with "
                "scst.io.read_st or scst.datasets.*."
            )
        geo = geos[s]
        key = geo.get("image_key")
        if key is None or key not in sdata.images:
            raise ValueError(
                f"Image missing for section {s!r}: image element {key!r} not in sdata.images ({list(sdata.images)}); "
                "image models need the H&E image of every section."
            )
        upp = geo.get("um_per_px")
        if upp is None or not upp > 0:
            raise ValueError(f"Section {s!r}: uns[{UNS_KEY!r}]['sections'][{s!r}]['um_per_px'] must be positive.")
        # µm/px of the full-resolution image the patches are cut from (SpotPatchDataset's): the coordinate system's
        # µm/px over its scale to the image (an image stored coarser than the coordinates is coarser)
        arr, to_img = _full_res_image(sdata.images[key], geo.get("coordinate_system", s), key)
        upp = float(upp) / to_img
        shape = tuple(arr.shape[-2:])
        px = max(1, int(round(size_um / upp)))  # the window SpotPatchDataset cuts (120.4 px fits 120 px)
        if px > min(shape):
            raise ValueError(
                f"Patch geometry: {size_um} µm = {px} px is larger than the {shape[1]} × {shape[0]} px "
                f"image of section {s!r}; use a smaller size_um."
            )
        out[s] = float(upp)
    return out


def _validation_sections(name: str, sections: list[str], validation: Any, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) section lists from ``validation`` (None: one training section, drawn by ``seed``)."""
    if validation is False or (isinstance(validation, int) and validation == 0):
        return sections, []
    if validation is None or validation is True:
        if len(sections) < 2:
            warnings.warn(
                f"{name}: one training section; training without validation, so no early stopping and no checkpoint "
                "choice (every epoch runs and the last one is kept).",
                UserWarning,
                stacklevel=4,
            )
            return sections, []
        val = [sections[int(np.random.default_rng(seed).integers(len(sections)))]]
    else:
        ok = isinstance(validation, str) or (
            isinstance(validation, list | tuple) and validation and all(isinstance(v, str) for v in validation)
        )
        if not ok:
            raise ValueError(
                "validation: expected None or True (one training section, drawn with the seed), False (none), a "
                f"section name or a list of section names, got {validation!r}."
            )
        val = [validation] if isinstance(validation, str) else list(validation)
        bad = [v for v in val if v not in sections]
        if bad:
            raise ValueError(
                f"validation: {bad} are not training sections {sections} (validation is drawn from the "
                "training sections only; pass `sections=` to setup_sdata)."
            )
    train = [s for s in sections if s not in val]
    if not train:
        raise ValueError(f"validation: {val} leaves no section to train on.")
    logg.info(f"{name}: training on {train}, validating on {val}.")
    return train, val


def _warn_no_counts(section: str, keep: np.ndarray) -> None:
    """Warn that the spots of ``section`` outside ``keep`` (no counts in the panel) are left out of training."""
    if not keep.all():
        warnings.warn(
            f"Section {section!r}: {int((~keep).sum())} of {len(keep)} spot(s) have no counts in the panel and are "
            "left out of training.",
            UserWarning,
            stacklevel=4,
        )


class _ImageModel(BaseModel):
    """Registry, targets and patch plumbing shared by the H&E → expression models (HGGEP, TCGN)."""

    _default_patch_px: ClassVar[int | None] = 112

    @classmethod
    def setup_sdata(
        cls,
        sdata: Any,
        table: str = TABLE_KEY,
        layer: str | None = None,
        genes: str | Sequence[str] | None = "highly_variable_scst",
        size_um: float = 80.0,
        patch_px: int | None = None,
        sections: Sequence[str] | None = None,
    ) -> None:
        """Register the table, the gene panel and the patch geometry for training.

        Parameters
        ----------
        sdata
            SpatialData as written by :func:`scst.io.read_st` / ``scst.datasets.*``: raw counts, ``obs["section"]``,
            ``obs["array_row"/"array_col"]``, ``obsm["spatial"]`` and an H&E image per section.
        table
            Table key.
        layer
            Layer with raw counts; ``None``: ``X``.
        genes
            Gene panel: a boolean ``var`` column (default ``"highly_variable_scst"`` from
            :func:`scst.pp.select_genes`), a list of genes, a boolean mask of length ``n_vars``, or ``None`` for all
            genes.
        size_um
            Patch edge in µm (80 µm: HGGEP/TCGN); cut at each section's own µm/px, then resized to ``patch_px``.
        patch_px
            Patch edge in pixels fed to the network; ``None``: the model's default (HGGEP: 112; TCGN: its
            ``img_size``, 224, or 128 with ``bench_config``).
        sections
            Sections to train on (validation is drawn from these); default all. Leave the test section out.

        Notes
        -----
        Writes ``table.uns["_scst_setup"][ClassName]`` (JSON): ``table``, ``layer``, ``var_names`` (panel),
        ``genes_key``, ``size_um``, ``patch_px``, ``sections``, ``um_per_px`` (per section), ``um_per_px_train``
        (median), ``max_coord`` and ``grid_step_um`` (spot grid step, the default pseudo-spot spacing of
        :func:`scst.tl.predict_expression`; None when a section records none or the sections' steps differ).
        """
        if not hasattr(sdata, "tables") or not hasattr(sdata, "images"):
            raise TypeError(f"sdata: expected a SpatialData object, got {type(sdata).__name__}.")
        adata = _get_table(sdata, table)
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"layer: {layer!r} not in table.layers ({list(adata.layers)}).")
        for key in (SECTION_KEY, ARRAY_ROW, ARRAY_COL):
            if key not in adata.obs:
                raise KeyError(f"table.obs lacks {key!r}; read the data with scst.io.read_st or scst.datasets.*.")
        if SPATIAL_KEY not in adata.obsm:
            raise KeyError(f"table.obsm lacks {SPATIAL_KEY!r} (spot centres in pixels).")
        if not (np.isfinite(size_um) and size_um > 0):
            raise ValueError(f"size_um: expected a positive number, got {size_um!r}.")
        if patch_px is not None:
            _positive_int("patch_px", patch_px, 8, floats=True)
        # log-normalised data is >= 0 too: targets need integer counts (as the closed-form baselines check)
        raw_counts(adata, layer, f"{cls.__name__}.setup_sdata", hint=_RAW_HINT)
        panel, genes_key = _resolve_panel(adata, genes)
        sections = _check_sections(adata, sections)
        if not sections:
            raise ValueError("The table has no spots.")
        if patch_px is None:
            patch_px = cls._default_patch_px
        upp = _section_geometries(sdata, adata, sections, size_um)
        in_train = adata.obs[SECTION_KEY].astype(str).isin(sections).to_numpy()
        rows_ = adata.obs[ARRAY_ROW].to_numpy()[in_train]
        cols_ = adata.obs[ARRAY_COL].to_numpy()[in_train]
        extent = int(max(np.ptp(rows_), np.ptp(cols_))) + 1
        cls._register(
            adata,
            {
                "table": table,
                "layer": layer,
                "var_names": panel,
                "genes_key": genes_key,
                "size_um": float(size_um),
                "patch_px": None if patch_px is None else int(patch_px),
                "sections": list(sections),
                "um_per_px": upp,
                "um_per_px_train": float(np.median(list(upp.values()))),
                "max_coord": max(128, extent),
                "grid_step_um": _training_grid_step(adata, sections),
            },
        )

    # ------------------------------------------------------------------ geometry
    @property
    def var_names(self) -> list[str]:
        """Gene panel predicted by the model."""
        return list(self.registry["var_names"])

    @property
    def patch_px(self) -> int:
        """Patch edge in pixels fed to the network."""
        px = self.registry.get("patch_px")
        return int(px if px is not None else self._module_kwargs_.get("img_size", self._default_patch_px))

    def _extra_state(self) -> dict[str, Any]:
        return {
            "var_names": self.var_names,
            "geometry": {
                "size_um": self.registry["size_um"],
                "patch_px": self.patch_px,
                "um_per_px_train": self.registry["um_per_px_train"],
            },
            "units": f"log1p(normalize_total(target_sum={TARGET_SUM:g}))",
            "target_standardisation": self._target_std,
        }

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        super()._set_extra_state(state)
        self._target_std = state.get("target_standardisation")

    #: Per-gene ``{"mean": [...], "sd": [...]}`` of the training targets when the model trains on z-scores
    #: (config ``standardize_targets``); predictions are mapped back with them.
    _target_std: dict[str, list[float]] | None = None

    def _standardize_targets(self, train: list, sections: list) -> None:
        """z-score every section's targets with the training spots' per-gene mean/sd (set once, at first training)."""
        if not self.config.get("standardize_targets", False):
            return
        if self._target_std is None or not self.is_trained:
            y = np.concatenate([s.target[s.keep] for s in train])
            sd = y.std(0)
            self._target_std = {"mean": y.mean(0).tolist(), "sd": np.where(sd > 1e-8, sd, 1.0).tolist()}
        mean = np.asarray(self._target_std["mean"], np.float32)
        sd = np.asarray(self._target_std["sd"], np.float32)
        for s in sections:
            s.target = ((s.target - mean) / sd).astype(np.float32)

    def _unstandardize(self, pred: np.ndarray) -> np.ndarray:
        if self._target_std is None:
            return pred
        return pred * np.asarray(self._target_std["sd"], np.float32) + np.asarray(self._target_std["mean"], np.float32)

    def _validate_data(self, adata: Any) -> None:
        # Prediction needs no genes (the model predicts its own panel); training checks them in _dataloaders.
        for key in (SECTION_KEY,):
            if key not in adata.obs:
                raise KeyError(f"data: table.obs lacks {key!r}.")

    # ------------------------------------------------------------------ data
    def _train_table(self) -> tuple[Any, Any]:
        """(SpatialData, table) of the training data, checked against the registry."""
        if not hasattr(self.data, "images"):
            raise TypeError(f"{type(self).__name__} trains on a SpatialData (with images), got {type(self.data)}.")
        adata = self.adata
        missing = [g for g in self.var_names if g not in adata.var_names]
        if missing:
            raise ValueError(f"The training table lacks {len(missing)} panel genes: {missing[:20]}")
        return self.data, adata

    def _validation_sections(self, validation: Any, seed: int) -> tuple[list[str], list[str]]:
        sections = _training_sections(self, self.adata)
        train, val = _validation_sections(type(self).__name__, sections, validation, seed)
        self.validation_sections_ = list(val)  # what train() held out (cross_validate records it per fold)
        return train, val

    def _section_data(self, sdata: Any, table: str, section: str, with_targets: bool, lib_median: float | None = None):
        """Patches, coordinates and (optionally) targets of one section's spots."""
        adata = _get_table(sdata, table)
        rows = np.flatnonzero(adata.obs[SECTION_KEY].astype(str).to_numpy() == section)
        if len(rows) == 0:
            raise ValueError(f"Section {section!r} has no spots in table {table!r}.")
        upp = float(adata.uns[UNS_KEY]["sections"][section]["um_per_px"])
        sec = types.SimpleNamespace(name=section, rows=rows, um_per_px=upp)
        sec.positions = np.asarray(adata.obsm[SPATIAL_KEY], dtype=np.float64)[rows, :2] * upp
        sec.coords = np.stack([adata.obs[ARRAY_ROW].to_numpy()[rows], adata.obs[ARRAY_COL].to_numpy()[rows]], 1).astype(
            np.int64
        )
        sec.patches = _SectionPatches(
            sdata, table, rows, self.registry["size_um"], self.patch_px, self.config.get("patch_cache_mb", 2048.0)
        )
        if with_targets:
            target, counts, lib = panel_targets(adata, self.registry["layer"], self.var_names, rows)
            keep = lib > 0
            _warn_no_counts(section, keep)
            sec.keep = np.flatnonzero(keep)
            sec.target, sec.counts, sec.lib = target, counts, lib
            sec.size_factors = (lib / (lib_median if lib_median else np.median(lib[keep]))).astype(np.float32)
        return sec

    def _training_sections(self, validation: Any, seed: int):
        sdata, adata = self._train_table()
        table = self.registry["table"]
        train, val = self._validation_sections(validation, seed)
        secs = {s: self._section_data(sdata, table, s, True) for s in train + val}
        lib = np.concatenate([secs[s].lib[secs[s].keep] for s in train])
        med = float(np.median(lib))
        for s in secs.values():  # one size-factor scale for all sections: the training median
            s.size_factors = (s.lib / med).astype(np.float32)
        self._standardize_targets([secs[s] for s in train], list(secs.values()))
        if not self.is_trained:
            self._init_output_bias([secs[s] for s in train])
        return [secs[s] for s in train], [secs[s] for s in val]

    def _init_output_bias(self, sections: list) -> None:
        """Start the output layer's bias at each gene's training mean (the paper's 400 epochs are not run here)."""
        target = np.concatenate([s.target[s.keep] for s in sections])
        head = self._output_layer()
        if head is None or head.bias is None or head.bias.shape != (target.shape[1],):
            return
        with torch.no_grad():
            head.bias.copy_(torch.from_numpy(target.mean(0)).to(head.bias))
            zinb = getattr(self.module, "zinb_mean", None)
            if zinb is not None:
                rate = np.concatenate([s.counts[s.keep] / s.size_factors[s.keep, None] for s in sections]).mean(0)
                zinb.bias.copy_(torch.from_numpy(np.log(np.maximum(rate, 1e-5))).to(zinb.bias))

    def _output_layer(self) -> torch.nn.Linear | None:
        """The last linear layer (one output per gene) whose bias :meth:`_init_output_bias` sets; None: skip."""
        head = getattr(self.module, "head", None)
        return head if isinstance(head, torch.nn.Linear) else None

    def _predict_table(self, data: Any, table: str | None) -> tuple[Any, str, Any]:
        """(SpatialData-like with images, table key, AnnData) for prediction on ``data``."""
        if hasattr(data, "tables"):
            key = table or self.registry.get("table") or TABLE_KEY
            return data, key, _get_table(data, key)
        if hasattr(data, "obs"):
            if self.data is None or not hasattr(self.data, "images"):
                raise ValueError(
                    "data: an AnnData has no images; pass the SpatialData holding them (or attach it with "
                    f"`{type(self).__name__}.load(dir, data=sdata)`)."
                )
            return types.SimpleNamespace(tables={TABLE_KEY: data}, images=self.data.images), TABLE_KEY, data
        raise TypeError(f"data: expected SpatialData or AnnData, got {type(data).__name__}.")

    def _check_predict_sections(self, sdata: Any, adata: Any, sections: Any) -> list[str]:
        sections = _check_sections(adata, sections)
        if not sections:
            raise ValueError("data: the table has no spots to predict.")
        upp = _section_geometries(sdata, adata, sections, self.registry["size_um"])
        ref = float(self.registry["um_per_px_train"])
        for s, u in upp.items():
            if abs(u / ref - 1) > UM_PER_PX_TOLERANCE:
                warnings.warn(
                    f"Section {s!r} has {u:.3f} µm/px, the model was trained at {ref:.3f} µm/px "
                    f"({100 * (u / ref - 1):+.0f} %); its {self.registry['size_um']} µm patches are cut at {u:.3f} "
                    f"µm/px and rescaled to {self.patch_px} px, but staining/scanner differences may remain.",
                    UserWarning,
                    stacklevel=3,
                )
        return sections

    def predict(
        self,
        data: Any = None,
        sections: str | Sequence[str] | None = None,
        *,
        table: str | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        precision: str = "32",
    ) -> np.ndarray:
        """Predicted expression of the model's gene panel (:attr:`var_names`) for every spot of ``sections``.

        Parameters
        ----------
        data
            SpatialData with the images (default: the model's data), or an AnnData whose images are in the
            model's SpatialData. Needs ``obs["section"]``, ``obsm["spatial"]``, ``obs["array_row"/"array_col"]``
            and ``uns["scst"]["sections"]``; no genes (the model predicts its own panel).
        sections
            Sections to predict; default all sections of the table.
        table
            Table key (default: the registry's table, else ``"table"``).
        batch_size
            Spots per forward pass, a positive integer (default None: the training batch size).
        progress
            Show a tqdm progress bar (spots).
        num_workers
            DataLoader workers reading the patches of the next batches while the model computes (0, the default:
            read in the main process, best on a machine with one or two cores; on a GPU machine 4–8). Patches are
            streamed batch by batch (windows of the section for HGGEP), never cached for the whole section, so
            memory does not grow with the number of spots; a section whose patches training cached is read from
            that cache.
        pin_memory
            Page-locked batches for asynchronous host → GPU copies; None: on CUDA devices only.
        precision
            ``"32"`` (fp32), ``"bf16"`` or ``"16"`` (fp16): ``torch.autocast`` of the forward pass on the model's
            device (bf16 on CPU is slower than fp32 on most CPUs; on a GPU it halves memory and speeds it up).

        Returns
        -------
        float32 ``(n_spots, n_genes)`` in log1p(normalize_total(1e4)) units, clipped at 0; rows are the spots of
        ``sections`` in table order.
        """
        from tqdm.auto import tqdm

        from .._inference import inference_options

        if not self.is_trained:
            raise RuntimeError(
                f"This {type(self).__name__} is not trained: its predictions would come from random weights. Call "
                "`model.train()` first (or load a trained model)."
            )
        data = self.data if data is None else data
        if data is None:
            raise ValueError("data: this model has no data attached; pass a SpatialData.")
        sdata, key, adata = self._predict_table(data, table)
        sections = self._check_predict_sections(sdata, adata, sections)
        # None: the training batch size; 0 or a negative is an error (it fell back to that default)
        bs = _positive_int("batch_size", batch_size) if batch_size is not None else None
        bs = bs or int(self._train_setting("batch_size", None))
        opts = inference_options(self.device, num_workers, pin_memory, precision)
        sec_col = adata.obs[SECTION_KEY].astype(str).to_numpy()
        order = np.flatnonzero(np.isin(sec_col, sections))
        out = np.zeros((adata.n_obs, len(self.var_names)), dtype=np.float32)
        with tqdm(total=len(order), desc=f"{type(self).__name__} predict", unit="spot", disable=not progress) as bar:
            for s in sections:
                sec = self._section_data(sdata, key, s, with_targets=False)
                was_training = self.module.training
                self.module.eval()
                try:
                    with torch.no_grad(), opts.autocast(), opts.convolutions(self.module):
                        pred = self._predict_section(sec, bs, bar, opts)
                finally:
                    self.module.train(was_training)
                out[sec.rows] = self._unstandardize(pred)
        return np.clip(out[order], 0.0, None)

    @abstractmethod
    def _predict_section(self, sec: Any, batch_size: int, bar: Any, opts: Any) -> np.ndarray:
        """Predictions ``(n_spots, n_genes)`` for one section's spots (``sec`` from ``_section_data``).

        Runs in eval mode under ``torch.no_grad()``, ``opts.autocast()`` and ``opts.convolutions(self.module)``; read
        the patches with ``sec.patches.loader(items, opts)`` and move them with ``_input_on(patches, opts)``.
        """
