"""MuData for the histology ↔ RNA model: modality ``"rna"`` (samples × genes) and ``"image"`` (patches).

Both builders write the same layout (read by :class:`scst.models.MultimodalST` and ``scst.tl`` retrieval):

* ``mdata["rna"]``: ``X`` = log1p(normalize_total(1e4)) float32 of the gene panel (library sizes over all genes),
  ``layers["counts"]`` raw counts, ``obs`` with the group columns.
* ``mdata["image"]``: one row per patch, no genes; ``obsm["patch"]`` uint8 ``(n, 3, px, px)``; ``obs``:
  ``rna_sample`` (obs name of the patch's RNA sample, the link), ``image_key``, ``x``/``y`` (centre, full-resolution
  px; for :func:`bulk_to_mudata` the image's own pixels, whatever its transformations), ``size_px`` (window in
  full-resolution px), ``tissue_fraction`` and ``dab_fraction`` (per-patch scores of :func:`scst.pp.filter_tiles`,
  ``"he"`` and ``"dab_brown"`` presets, so patches can be sorted) and the group columns.
* ``mdata.uns["scst_mudata"]``: ``link_key``, ``patch_key``, ``group_keys``, ``source`` (``"spots"`` or ``"bulk"``),
  ``patch_px`` (edge of the stored patches); :func:`to_mudata` adds ``size_um`` (None when the window was given in
  px; 80 when neither was given) and ``um_per_px`` (per section), :func:`bulk_to_mudata` ``size_px`` and ``stain``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._constants import SECTION_KEY, SPATIAL_KEY, TABLE_KEY, UNS_KEY
from .._logging import logg
from .._normalize import log_normalize_counts
from .._utils import _check_key, _get_table, _positive, _positive_int

__all__ = ["to_mudata", "bulk_to_mudata", "LINK_KEY", "PATCH_KEY", "MUDATA_UNS"]

LINK_KEY = "rna_sample"
PATCH_KEY = "patch"
MUDATA_UNS = "scst_mudata"
#: Tissue windows of a whole-slide image read and scored at a time by :func:`bulk_to_mudata`.
_SCORE_CHUNK = 512


def _refuse_duplicate_names(names: pd.Index, where: str, what: str = "sample names") -> None:
    """A ValueError naming ``where`` when ``names`` repeat: patches link to their RNA sample by name."""
    if not names.is_unique:
        dup = names[names.duplicated()].unique()[:3].tolist()
        raise ValueError(
            f"{where}: duplicate {what}, e.g. {dup}; patches link to their RNA sample by name (call "
            "obs_names_make_unique())."
        )


def _rna_modality(adata: AnnData, rows: np.ndarray, genes: Any, layer: str | None, group_keys: Sequence[str]):
    X = adata.X if layer is None else adata.layers[layer]
    X = sparse.csr_matrix(X[rows]) if sparse.issparse(X) else sparse.csr_matrix(np.asarray(X[rows]))
    if X.nnz and X.data.min() < 0:
        raise ValueError("adata: expected raw counts (non-negative) in X / `layer`.")
    if genes is None:
        gmask = np.arange(adata.n_vars)
    elif isinstance(genes, str):
        _check_key(adata.var, genes, "adata.var")
        gmask = np.flatnonzero(adata.var[genes].to_numpy(dtype=bool))
    else:  # a list keeps its order
        missing = pd.Index(list(genes)).difference(adata.var_names)
        if len(missing):
            raise KeyError(f"genes: {len(missing)} genes are not in var_names, e.g. {list(missing[:5])}.")
        gmask = adata.var_names.get_indexer(list(dict.fromkeys(genes)))
    if len(gmask) == 0:
        raise ValueError("genes: the panel is empty.")
    lib = np.asarray(X.sum(1)).ravel().astype(np.float64)
    counts = X[:, gmask].astype(np.float32)
    logx = log_normalize_counts(counts, lib)
    obs = adata.obs.iloc[rows][[c for c in adata.obs.columns if c in group_keys or c == SECTION_KEY]].copy()
    rna = AnnData(X=logx, obs=obs, var=adata.var.iloc[gmask].copy())
    rna.layers["counts"] = counts
    if SPATIAL_KEY in adata.obsm:
        rna.obsm[SPATIAL_KEY] = np.asarray(adata.obsm[SPATIAL_KEY])[rows]
    return rna


def _scores(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ._tissue import filter_tiles

    if len(patches) == 0:
        return np.zeros(0), np.zeros(0)
    return filter_tiles(patches, preset="he")[0], filter_tiles(patches, preset="dab_brown")[0]


def _make_mudata(rna: AnnData, image: AnnData, group_keys: Sequence[str], info: dict[str, Any]) -> Any:
    import mudata as md

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData({"rna": rna, "image": image})
    mdata.uns[MUDATA_UNS] = {"link_key": LINK_KEY, "patch_key": PATCH_KEY, "group_keys": list(group_keys), **info}
    return mdata


def to_mudata(
    sdata: Any,
    table: str = TABLE_KEY,
    *,
    sections: str | Sequence[str] | None = None,
    genes: str | Sequence[str] | None = None,
    group_keys: str | Sequence[str] = (SECTION_KEY, "label"),
    size_px: int | None = 256,
    size_um: float | None = None,
    out_px: int | None = None,
    layer: str | None = None,
) -> Any:
    """MuData of paired spots: each spot is one RNA sample and one image patch centred on it.

    Parameters
    ----------
    sdata
        SpatialData with the spot table (raw counts, ``obs["section"]``, ``obsm["spatial"]``) and per-section images
        (as from :func:`scst.datasets.her2st` / :func:`scst.io.read_st`).
    table
        Table key.
    sections
        Sections to include (default all).
    genes
        Gene panel: a boolean ``var`` column (e.g. ``"highly_variable_scst"``), a list, or None for all genes.
    group_keys
        ``obs`` column(s) copied to both modalities (one name or a sequence); they define positives of the
        contrastive losses (paper: lineage / patient; here section and cluster label).
    size_px, size_um
        Patch window in full-resolution pixels (the paper's 256 px; ≈ 176 µm on her2st) or in µm (overrides).
        With both None the window is 80 µm (cut at each section's µm/px; not the recorded spot diameter).
    out_px
        Resize patches to ``out_px`` (e.g. 64 for a CPU ViT); default: no resize.
    layer
        Layer with raw counts instead of ``X``.

    Returns
    -------
    :class:`mudata.MuData` laid out as described in the module docstring; image obs names are the spot names, so
    MuData sees each spot as one observation in both modalities.
    """
    from ._patches import SpotPatchDataset

    adata = _get_table(sdata, table)
    group_keys = [group_keys] if isinstance(group_keys, str) else list(group_keys)  # one column, or several
    _refuse_duplicate_names(adata.obs_names, f"sdata.tables[{table!r}]", "obs names")
    _check_key(adata.obs, SECTION_KEY, f"sdata.tables[{table!r}].obs")
    for k in group_keys:
        _check_key(adata.obs, k, f"sdata.tables[{table!r}].obs (group_keys)")
    sec = adata.obs[SECTION_KEY].astype(str).to_numpy()
    if sections is not None:
        wanted = [sections] if isinstance(sections, str) else list(sections)
        unknown = sorted(set(wanted) - set(sec))
        if unknown:
            raise ValueError(f"sections: {unknown} not in obs[{SECTION_KEY!r}] ({sorted(set(sec))}).")
        rows = np.flatnonzero(np.isin(sec, wanted))
    else:
        rows = np.arange(adata.n_obs)
    rna = _rna_modality(adata, rows, genes, layer, group_keys)
    if size_um is None and size_px is None:
        size_um = 80.0  # recorded in uns like a window given in µm
    ds = SpotPatchDataset(
        sdata,
        table,
        obs_subset=rows,
        return_counts=False,
        size_um=size_um if size_um is not None else 80.0,  # unused when size_px is given
        size_px=None if size_um is not None else size_px,
        out_px=out_px,
        normalize=None,
    )
    first = _rgb(ds.patch_uint8(0), "sdata")
    patches = np.empty((len(ds), *first.shape), dtype=np.uint8)
    for i in ds.locality_order():
        patches[i] = _rgb(ds.patch_uint8(int(i)), "sdata")
    ds.clear_cache()
    tissue, dab = _scores(patches)
    geo = adata.uns.get(UNS_KEY, {}).get("sections", {})
    obs = rna.obs.copy()
    obs[LINK_KEY] = rna.obs_names.to_numpy()
    obs["image_key"] = pd.Categorical([geo.get(s, {}).get("image_key", f"{s}_image") for s in sec[rows]])
    obs["x"], obs["y"] = ds.centers[:, 0], ds.centers[:, 1]
    obs["size_px"] = [ds.size_px[s] for s in sec[rows]]
    obs["tissue_fraction"], obs["dab_fraction"] = tissue, dab
    image = AnnData(X=sparse.csr_matrix((len(rows), 0), dtype=np.float32), obs=obs)
    image.obsm[PATCH_KEY] = patches
    um = {s: float(geo[s]["um_per_px"]) for s in pd.unique(sec[rows]) if s in geo}
    info = {"source": "spots", "patch_px": int(patches.shape[-1]), "size_um": size_um, "um_per_px": um}
    logg.info(f"to_mudata: {len(rows)} paired spots, {rna.n_vars} genes, patches {patches.shape[1:]} uint8")
    return _make_mudata(rna, image, group_keys, info)


def _rgb(patches: np.ndarray, where: str, axis: int = 0) -> np.ndarray:
    """The colour channels (the first three) of ``patches``, channels on ``axis``.

    RGBA images (openslide's ``read_region``) gave 4-channel patches that MultimodalST refuses; a grey image is an
    error naming ``where``.
    """
    n = patches.shape[axis]
    if n < 3:
        raise ValueError(f"{where}: expected an RGB image (3 channels, or RGBA), got {n} channel(s).")
    return np.take(patches, [0, 1, 2], axis=axis) if n > 3 else patches


def bulk_to_mudata(
    adata: AnnData,
    sdata: Any,
    image_to_sample: Mapping[str, str],
    *,
    um_per_px: float | Mapping[str, float],
    genes: str | Sequence[str] | None = None,
    group_keys: str | Sequence[str] = (),
    patch_px: int = 256,
    out_px: int | None = None,
    stain: str = "dab_brown",
    threshold: float | None = None,
    min_tissue: float = 0.5,
    max_patches: int | None = None,
    layer: str | None = None,
    **tile_kwargs: Any,
) -> Any:
    """MuData of bulk RNA-seq samples and non-overlapping patches of whole-slide images (the paper's setting).

    Each image is tiled into non-overlapping ``patch_px`` × ``patch_px`` windows over the tissue with
    :func:`scst.pp.tile_grid` (lazy: only the tissue mask and the kept windows are read), each window is scored with
    :func:`scst.pp.filter_tiles` (``stain="dab_brown"``: the paper's brown-pixel fraction for IHC slides, kept when
    ≥ 20 %; ``stain="he"``: the tissue fraction, for H&E, where no tile passes the DAB rule) and the passing patches
    are linked to the image's RNA sample. An image is tiled in its own pixels: its transformations to coordinate
    systems (a translation, a scale) change neither the patches nor their recorded centres.

    Parameters
    ----------
    adata
        Bulk samples × genes, raw counts; group columns (e.g. lineage, patient) in ``obs``.
    sdata
        SpatialData holding the images.
    image_to_sample
        Image element key → ``adata.obs_names`` of its sample (several images may share a sample).
    um_per_px
        Size (µm) of the image's own full-resolution pixel, one value or per image (not read from the image's
        transformations, whose coordinate-system units are unknown).
    genes, layer
        As in :func:`to_mudata`.
    group_keys
        ``adata.obs`` column(s) copied to the patches of each sample (one name or a sequence).
    patch_px
        Window edge in full-resolution pixels (paper: 256).
    out_px
        Resize patches to this size (default: keep ``patch_px``).
    stain
        ``"dab_brown"`` or ``"he"`` (preset of :func:`scst.pp.filter_tiles` used to keep patches).
    threshold
        Keep patches whose score is ≥ this (default: the preset's, 0.2 for DAB).
    min_tissue
        Tissue fraction of a window on the low-resolution mask for it to be read at all. The mask is a stored
        ``sdata.labels[f"{coordinate_system}_tissue"]`` when the image is the only one in its (first) coordinate
        system, else a stored ``sdata.labels[f"{image_key}_tissue"]``, else computed (:func:`scst.pp.tissue_mask`).
    max_patches
        Keep at most this many best-scoring patches per image.
    **tile_kwargs
        Passed to :func:`scst.pp.tile_grid` (e.g. tissue-mask options ``scale``, ``smooth_um``).

    Raises
    ------
    ValueError
        When samples do not link up (the unmatched count is given), an image is smaller than one patch, or no patch
        of an image passes the stain filter (the score distribution is given).
    """
    from spatialdata.transformations import get_transformation

    from ._patches import SpotPatchDataset, _full_res_image
    from ._tissue import filter_tiles, tile_grid

    group_keys = [group_keys] if isinstance(group_keys, str) else list(group_keys)  # one column, or several
    _refuse_duplicate_names(adata.obs_names, "adata")
    if max_patches is not None:  # 0 would slice [:None], i.e. keep every patch
        _positive_int("max_patches", max_patches, what="None (all) or a positive integer")
    # named here: SpotPatchDataset would call it size_px (and True tiled the image into 1 px windows first)
    patch_px = _positive_int("patch_px", patch_px, floats=True, what="a positive integer (window edge in pixels)")
    for k in group_keys:
        _check_key(adata.obs, k, "adata.obs (group_keys)")
    keys = list(image_to_sample)
    if not keys:
        raise ValueError("image_to_sample: expected at least one image key → sample name.")
    for k, u in um_per_px.items() if isinstance(um_per_px, Mapping) else [("", um_per_px)]:
        # numpy floats too: a float32 pixel size was refused by an isinstance check
        _positive(f"um_per_px{f'[{k!r}]' if k else ''}", u, "pixel size in µm")
    if isinstance(um_per_px, Mapping) and (no_upp := [k for k in keys if k not in um_per_px]):
        raise KeyError(f"um_per_px: no pixel size for image(s) {no_upp[:5]} (given for {list(um_per_px)[:5]}).")
    missing_img = [k for k in keys if k not in sdata.images]
    if missing_img:
        raise KeyError(f"image_to_sample: {len(missing_img)} image keys not in sdata.images, e.g. {missing_img[:5]}.")
    unmatched = [k for k in keys if str(image_to_sample[k]) not in adata.obs_names]
    if unmatched:
        raise ValueError(
            f"image_to_sample: {len(unmatched)} of {len(keys)} images link to no sample of adata.obs_names "
            f"(e.g. {[(k, image_to_sample[k]) for k in unmatched[:3]]})."
        )
    frames, patch_list = [], []
    for key in keys:
        upp = float(um_per_px[key] if isinstance(um_per_px, Mapping) else um_per_px)
        full, _ = _full_res_image(sdata.images[key], None, key)
        h, w = (int(s) for s in full.shape[-2:])
        if h < patch_px or w < patch_px:
            raise ValueError(f"sdata.images[{key!r}]: {h} × {w} px is smaller than one patch ({patch_px} px).")
        own_cs = get_transformation(sdata.images[key], get_all=True)
        cs = next(iter(own_cs))
        # A stored mask: the coordinate system's (tissue_mask(section=cs)) only when no other image shares it (in a
        # shared one, e.g. all in "global", it is no image's own), else the image's own (tissue_mask's default key
        # for an image without a section); without one, a fresh mask is computed.
        shared = sum(cs in get_transformation(el, get_all=True) for el in sdata.images.values()) > 1
        candidates = [f"{key}_tissue"] if shared else [f"{cs}_tissue", f"{key}_tissue"]
        stored = [m for m in candidates if m in sdata.labels]
        # Tiled in the image's own pixels, wherever it is placed: tile_grid lays its grid out in the section's
        # coordinate system and refuses an image translated or scaled there, so the section is named after no
        # coordinate system of the image (tile_grid then takes the image's pixels as its coordinates).
        section = key if key not in own_cs else f"{key}__pixels"
        try:
            table, _ = tile_grid(
                sdata, section, spacing_um=patch_px * upp, size_um=patch_px * upp, min_tissue=min_tissue,
                image_key=key, um_per_px=upp, mask_key=stored[0] if stored else None, inplace=False,
                table_key=f"__none_{key}", **tile_kwargs,
            )  # fmt: skip
        except ValueError as err:  # tile_grid names the coordinate system it tiled; the user knows the image key
            raise ValueError(f"bulk_to_mudata: image {key!r}: {err}") from err
        xy = np.asarray(table.obsm[SPATIAL_KEY])
        ds = SpotPatchDataset.from_arrays(
            {key: sdata.images[key]}, xy, np.zeros(len(xy), dtype=int), upp, size_px=patch_px, out_px=out_px,
            normalize=None,
        )  # fmt: skip
        # scored a chunk at a time, keeping only the passing patches (the best max_patches of them): a whole slide's
        # tissue windows are never all in memory (tens of GB at 40×)
        score = np.empty(len(ds))
        kept_idx, kept = np.zeros(0, dtype=int), None
        for start in range(0, len(ds), _SCORE_CHUNK):
            chunk = np.arange(start, min(start + _SCORE_CHUNK, len(ds)))
            block = np.stack([ds.patch_uint8(i) for i in chunk])
            score[chunk], keep = filter_tiles(block, preset=stain, threshold=threshold)
            kept = block[keep] if kept is None else np.concatenate([kept, block[keep]])
            kept_idx = np.concatenate([kept_idx, chunk[keep]])
            order = np.lexsort((kept_idx, -score[kept_idx]))[:max_patches]  # best first, ties by position
            kept_idx, kept = kept_idx[order], kept[order]
        if not len(kept_idx):
            q = np.quantile(score, [0, 0.5, 0.9, 1.0])
            hint = " On H&E use stain='he'." if stain == "dab_brown" else ""
            raise ValueError(
                f"No patch of image {key!r} passes the {stain!r} filter (threshold "
                f"{threshold if threshold is not None else 'preset default'}); scores of its {len(score)} tissue "
                f"patches: min {q[0]:.3f}, median {q[1]:.3f}, 90% {q[2]:.3f}, max {q[3]:.3f}.{hint}"
            )
        idx = kept_idx
        kept = _rgb(kept, f"sdata.images[{key!r}]", axis=1)
        tissue, dab = _scores(kept)
        sample = str(image_to_sample[key])
        obs = pd.DataFrame(
            {
                LINK_KEY: sample,
                "image_key": key,
                "x": xy[idx, 0],
                "y": xy[idx, 1],
                "size_px": patch_px,
                "tissue_fraction": tissue,
                "dab_fraction": dab,
                **{g: adata.obs.loc[sample, g] for g in group_keys},
            },
            index=[f"{key}_{int(table.obs['array_col'].iloc[i])}x{int(table.obs['array_row'].iloc[i])}" for i in idx],
        )
        frames.append(obs)
        patch_list.append(kept)
    obs = pd.concat(frames)
    for c in ("image_key", *group_keys):
        obs[c] = obs[c].astype("category")
    image = AnnData(X=sparse.csr_matrix((len(obs), 0), dtype=np.float32), obs=obs)
    image.obsm[PATCH_KEY] = np.concatenate(patch_list)
    rna = _rna_modality(adata, np.arange(adata.n_obs), genes, layer, group_keys)
    info = {"source": "bulk", "patch_px": int(image.obsm[PATCH_KEY].shape[-1]), "size_px": patch_px, "stain": stain}
    logg.info(f"bulk_to_mudata: {adata.n_obs} samples, {len(obs)} patches from {len(keys)} images")
    return _make_mudata(rna, image, group_keys, info)
