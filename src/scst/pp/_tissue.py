"""Tissue detection on histology images: a low-resolution tissue mask, per-tile filters and a pseudo-spot grid.

Colour rules work in hue / saturation / lightness. Saturation is chroma over value, ``(max - min) / max`` of
R, G, B (the HSV definition): the HSL saturation ``(max - min) / (1 - |2L - 1|)`` explodes on the near-white glass
of a slide (a pale background pixel with 3 % chroma scores like tissue), so lightness is taken from HSL and
saturation from HSV.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from .._constants import (
    ARRAY_COL,
    ARRAY_ROW,
    INSTANCE_KEY,
    REGION_KEY,
    SECTION_KEY,
    SPATIAL_KEY,
    TABLE_KEY,
    UNS_KEY,
)
from .._logging import logg
from .._utils import _positive

__all__ = ["tissue_mask", "filter_tiles", "tile_grid", "PRESETS"]

#: Pixel rules per preset. ``he``: tissue = saturated and darker than the glass (fixed thresholds are used by
#: :func:`filter_tiles`; :func:`tissue_mask` replaces ``sat_min`` by Otsu's threshold of the smoothed saturation,
#: floored at ``sat_floor``, and ``light_max`` by the background lightness minus ``light_margin``).
#: ``dab_brown``: DAB-positive pixel of an IHC stain = hue in ``hue_range`` (degrees; DAB runs from ~22° when
#: faint to ~8° when dense) with enough saturation and lightness neither glass nor black; hematoxylin (~240°)
#: and eosin (~300–340°) fall outside. ``threshold`` is the default per-tile fraction for keeping a tile (DAB:
#: 20 % brown pixels, as in the multimodal GBM study's tile filter).
PRESETS: dict[str, dict[str, Any]] = {
    "he": {"sat_min": 0.08, "light_max": 0.90, "sat_floor": 0.05, "light_margin": 0.02, "threshold": 0.5},
    "dab_brown": {"hue_range": (5.0, 50.0), "sat_min": 0.20, "light_range": (0.08, 0.85), "threshold": 0.2},
}
_METHODS = ("hsl", "otsu")
_LIGHT_CAP = 0.95  # tissue_mask: never call pixels lighter than this tissue, however bright the glass


# --------------------------------------------------------------------------------------------------------------
# pixel rules
# --------------------------------------------------------------------------------------------------------------
def _hsl_channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), HSV saturation and HSL lightness of float RGB in [0, 1], channel axis first."""
    r, g, b = rgb[0], rgb[1], rgb[2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    c = mx - mn
    light = (mx + mn) / 2
    sat = np.where(mx > 0, c / np.maximum(mx, 1e-12), 0.0)
    safe = np.maximum(c, 1e-12)
    hue = np.where(
        mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)
    ) * 60.0  # fmt: skip
    hue = np.where(c > 0, hue, 0.0)
    return hue, sat, light


def _preset(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {list(PRESETS)}, got {preset!r}.")
    params = dict(PRESETS[preset])
    unknown = set(overrides) - set(params)
    if unknown:
        raise TypeError(f"Unknown threshold(s) {sorted(unknown)} for preset {preset!r}; known: {sorted(params)}.")
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def _brown(hue, sat, light, p) -> np.ndarray:
    lo, hi = p["hue_range"]
    llo, lhi = p["light_range"]
    return (hue >= lo) & (hue <= hi) & (sat >= p["sat_min"]) & (light >= llo) & (light <= lhi)


# --------------------------------------------------------------------------------------------------------------
# tissue_mask
# --------------------------------------------------------------------------------------------------------------
def _resolve_image(sdata, image_key, section, table_key, um_per_px):
    """(section or None, image key, µm/px or None) from arguments and the table's per-section geometry.

    A µm/px taken from the geometry is that of the section's coordinate system (full-resolution pixels); for an
    image scaled into it (e.g. the hires image ``scst.io.register_sections`` places there) it becomes the image's.
    """
    passed = um_per_px is not None
    geos = {}
    if table_key in getattr(sdata, "tables", {}):
        geos = sdata.tables[table_key].uns.get(UNS_KEY, {}).get("sections", {})
    if section is not None:
        if section in geos:
            geo = geos[section]
            key = geo.get("image_key")
            if image_key is None:
                if key is None:
                    raise ValueError(
                        f"section: {section!r} has no image (uns[{UNS_KEY!r}]['sections'][{section!r}]"
                        "['image_key'] is None)."
                    )
                image_key = key
            um_per_px = um_per_px if um_per_px is not None else geo.get("um_per_px")
        elif image_key is None:
            image_key = f"{section}_image"
    elif image_key is None:
        with_img = [s for s, g in geos.items() if g.get("image_key") is not None]
        if len(with_img) == 1:
            section = with_img[0]
            image_key = geos[section]["image_key"]
        elif len(geos) == 0 and len(sdata.images) == 1:
            image_key = next(iter(sdata.images))
        else:
            raise ValueError(
                f"Pass section= (one of {list(geos)}) or image_key= (one of {list(sdata.images)}): the data hold "
                "several images."
            )
    else:
        match = [s for s, g in geos.items() if g.get("image_key") == image_key]
        section = match[0] if len(match) == 1 else None
    if section is not None and section in geos and um_per_px is None:
        um_per_px = geos[section].get("um_per_px")
    if image_key not in sdata.images:
        raise KeyError(f"image_key: {image_key!r} not in sdata.images ({list(sdata.images)}).")
    if not passed and um_per_px is not None:
        from ._patches import _full_res_image

        try:
            _, factor = _full_res_image(sdata.images[image_key], geos[section].get("coordinate_system", section), "")
        except KeyError:  # no transformation to the section's coordinate system: the image's pixels are its pixels
            factor = 1.0
        um_per_px = um_per_px / factor
    return section, image_key, um_per_px


def _pick_level(el, scale, um_per_px, target_um_per_px):
    """(level DataArray, factor y, factor x, all transformations of the level)."""
    import xarray as xr
    from spatialdata.transformations import Scale, Sequence, get_transformation

    if isinstance(el, xr.DataArray):
        full = el
        levels = [("scale0", el)]
    else:
        names = list(el.children)
        levels = []
        for n in names:
            ds = el[n].ds
            levels.append((n, ds[next(iter(ds.data_vars))]))
        full = levels[0][1]
    h0, w0 = full.shape[-2:]

    if scale == "auto":
        chosen = levels[0]
        for name, arr in levels:  # coarsest level that is still fine enough
            f = h0 / arr.shape[-2]
            ok = (um_per_px * f <= target_um_per_px) if um_per_px else (min(arr.shape[-2:]) >= 512)
            if ok:
                chosen = (name, arr)
        name, arr = chosen
        f = h0 / arr.shape[-2]
        # A single-scale image: downsample on the fly (dask streams it) to the target resolution.
        if len(levels) == 1 and um_per_px:
            k = min(int(target_um_per_px // um_per_px), h0, w0)  # never coarsen a small image to nothing
            if k >= 2:
                arr = full.coarsen(y=k, x=k, boundary="trim").mean()
                # Scale = shape ratio (not k), spatialdata's convention for its own pyramid levels (also trimmed
                # coarsenings; spatialdata.transformations._utils): the mask lines up as a pyramid level would.
                fy, fx = h0 / arr.shape[-2], w0 / arr.shape[-1]
                ts = {
                    cs: Sequence([Scale([fy, fx], axes=("y", "x")), t])
                    for cs, t in get_transformation(full, get_all=True).items()
                }
                return arr, fy, fx, ts
    else:
        if isinstance(scale, int):
            if not 0 <= scale < len(levels):
                raise ValueError(f"scale: level {scale} out of range; the image has {len(levels)} level(s).")
            name, arr = levels[scale]
        else:
            lookup = dict(levels)
            if scale not in lookup:
                raise KeyError(f"scale: {scale!r} not a level of the image; levels: {list(lookup)} or 'auto'.")
            name, arr = scale, lookup[scale]
    fy, fx = h0 / arr.shape[-2], w0 / arr.shape[-1]
    return arr, fy, fx, get_transformation(arr, get_all=True)


def _remove_small(mask: np.ndarray, min_px: int, holes: bool) -> np.ndarray:
    from skimage import morphology

    fn = morphology.remove_small_holes if holes else morphology.remove_small_objects
    if min_px <= 1:
        return mask
    try:  # scikit-image >= 0.26: objects of at most max_size px go
        return fn(mask, max_size=min_px - 1)
    except TypeError:
        return fn(mask, min_px) if not holes else fn(mask, area_threshold=min_px)


def _mask_from_rgb(
    rgb: np.ndarray, *, method: str, preset: str, level_um: float | None, smooth_um: float, min_object_um2: float,
    min_hole_um2: float, overrides: dict[str, Any],
) -> tuple[np.ndarray, dict[str, float]]:  # fmt: skip
    from skimage.filters import gaussian, threshold_otsu

    sigma = (smooth_um / level_um) if level_um else 1.5
    smooth = (lambda a: gaussian(a, sigma, preserve_range=True)) if sigma >= 0.3 else (lambda a: a)
    hue, sat, light = _hsl_channels(rgb)
    info: dict[str, float] = {}
    if method == "otsu":
        ls = smooth(light)
        t = float(threshold_otsu(ls))
        mask, info["light_max"] = ls < t, t
    elif preset == "he":
        p = _preset(preset, {})
        ss, ls = smooth(sat), smooth(light)
        if overrides.get("sat_min") is not None:
            t_sat = float(overrides["sat_min"])
        else:
            # Otsu splits glass from tissue on smoothed saturation; the floor keeps near-empty slides from
            # thresholding glass noise.
            t_sat = max(float(threshold_otsu(ss)), p["sat_floor"])
        if overrides.get("light_max") is not None:
            t_light = float(overrides["light_max"])
        else:
            bg = ls[ss < t_sat]
            bg_light = float(np.median(bg)) if bg.size else 1.0
            t_light = min(_LIGHT_CAP, bg_light - p["light_margin"])
        mask = (ss >= t_sat) & (ls <= t_light)
        info.update(sat_min=t_sat, light_max=t_light)
    else:
        p = _preset(preset, {k: v for k, v in overrides.items() if k in PRESETS[preset]})
        mask = _brown(hue, smooth(sat), smooth(light), p)
        info.update(sat_min=p["sat_min"])
    area = (level_um**2) if level_um else None
    min_obj = int(np.ceil(min_object_um2 / area)) if area else 64
    min_hole = int(np.ceil(min_hole_um2 / area)) if area else 64
    mask = _remove_small(mask, min_obj, holes=False)
    mask = _remove_small(mask, min_hole, holes=True)
    return mask, info


def tissue_mask(
    sdata: Any,
    image_key: str | None = None,
    *,
    section: str | None = None,
    table_key: str = TABLE_KEY,
    scale: str | int = "auto",
    method: Literal["hsl", "otsu"] = "hsl",
    preset: Literal["he", "dab_brown"] = "he",
    um_per_px: float | None = None,
    target_um_per_px: float = 8.0,
    smooth_um: float = 15.0,
    min_object_um2: float = 20_000.0,
    min_hole_um2: float = 20_000.0,
    sat_min: float | None = None,
    light_max: float | None = None,
    key_added: str | None = None,
    inplace: bool = True,
):
    """Boolean tissue mask of a section's image at a low-resolution pyramid level.

    ``method="hsl"``, ``preset="he"`` (H&E): a pixel is tissue if its smoothed saturation (chroma / max) is at
    least Otsu's threshold (floored at ``PRESETS["he"]["sat_floor"]``) and its lightness is below the glass
    (median lightness of the unsaturated pixels minus a margin). ``preset="dab_brown"`` marks DAB-positive
    (brown) pixels of an IHC image instead. ``method="otsu"``: Otsu on lightness alone (darker = tissue). Then
    objects smaller than ``min_object_um2`` are removed and holes smaller than ``min_hole_um2`` are filled
    (scikit-image). Integer images are scaled by their dtype's maximum (also a level coarsened on the fly); float
    images are taken as ``[0, 1]`` (clipped: an overshoot up to 1e-3 is allowed, as for patches), or as 0..255
    when they exceed that.

    Parameters
    ----------
    sdata
        SpatialData holding the image.
    image_key
        Image element; default the image of ``section`` from ``uns['scst']['sections']``.
    section
        Section name (used for the image and pixel size from the table, and the default key).
    table_key
        Table with per-section geometry.
    scale
        Pyramid level (name like ``"scale3"`` or index), or ``"auto"``: the coarsest level with a pixel size of at
        most ``target_um_per_px`` (without a known pixel size: the coarsest level at least 512 px wide).
        Single-scale images are downsampled on the fly.
    method, preset
        Pixel rule, see above.
    um_per_px
        Pixel size of the image's full-resolution level; default from the table's section geometry (divided by the
        image's scale into the section's coordinate system, e.g. 4× for a hires image placed there).
    target_um_per_px
        Resolution sought by ``scale="auto"``.
    smooth_um
        Gaussian smoothing (sigma, µm) of saturation and lightness before thresholding.
    min_object_um2, min_hole_um2
        Cleanup areas (µm²); without a pixel size, 64 level pixels.
    sat_min, light_max
        Fixed thresholds replacing the automatic ones (``he`` preset).
    key_added
        Labels key; default ``f"{section}_tissue"`` (or ``f"{image_key}_tissue"`` without a section).
    inplace
        Add the mask to ``sdata.labels[key_added]`` and return ``None``; otherwise return it.

    Returns
    -------
    ``None``, or a ``Labels2DModel`` DataArray (uint8, 1 = tissue; ``.values.astype(bool)`` is the mask) with the
    level's scale transformation to the image's coordinate systems (full-resolution pixels).
    """
    from spatialdata.models import Labels2DModel

    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}.")
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {list(PRESETS)}, got {preset!r}.")
    section, image_key, um_per_px = _resolve_image(sdata, image_key, section, table_key, um_per_px)
    if um_per_px is None:
        warnings.warn(
            f"tissue_mask: pixel size of {image_key!r} unknown; smoothing and cleanup use level pixels. Pass "
            "um_per_px for µm-based settings.",
            UserWarning,
            stacklevel=2,
        )
    arr, fy, fx, ts = _pick_level(sdata.images[image_key], scale, um_per_px, target_um_per_px)
    if arr.sizes.get("c", 0) < 3:
        raise ValueError(f"image_key: {image_key!r} needs 3 (RGB) channels, has {arr.sizes.get('c', 0)}.")
    rgb = np.asarray(arr.isel(c=slice(0, 3)).values, dtype=np.float32)
    from ._patches import _FLOAT_RANGE_TOL, _full_res_image

    # the image's own dtype: a coarsened level holds float means of it (uint16: 0..65535, not 0..255)
    src_dtype = np.dtype(_full_res_image(sdata.images[image_key], None, image_key)[0].dtype)
    if np.issubdtype(src_dtype, np.integer):
        rgb /= float(np.iinfo(src_dtype).max)
    elif rgb.max() > 1.0 + _FLOAT_RANGE_TOL:  # a float image in 0..255; [0, 1] may overshoot a little, as for patches
        rgb /= 255.0
    np.clip(rgb, 0.0, 1.0, out=rgb)
    level_um = um_per_px * (fy + fx) / 2 if um_per_px else None
    mask, info = _mask_from_rgb(
        rgb, method=method, preset=preset, level_um=level_um, smooth_um=smooth_um, min_object_um2=min_object_um2,
        min_hole_um2=min_hole_um2, overrides={"sat_min": sat_min, "light_max": light_max},
    )  # fmt: skip
    labels = Labels2DModel.parse(mask.astype(np.uint8), dims=("y", "x"), transformations=ts)
    key = key_added or f"{section if section is not None else image_key}_tissue"
    logg.info(
        f"Tissue mask of {image_key!r} at {mask.shape[1]} × {mask.shape[0]} px (×{fx:.2f}): "
        f"{100 * mask.mean():.1f} % tissue; thresholds { ({k: round(v, 3) for k, v in info.items()}) }"
    )
    if not inplace:
        return labels
    sdata.labels[key] = labels
    return None


# --------------------------------------------------------------------------------------------------------------
# filter_tiles
# --------------------------------------------------------------------------------------------------------------
def _tile_batches(tiles: Any, batch: int = 256) -> Iterable[np.ndarray]:
    """Yield float32 batches ``(b, 3, h, w)`` in [0, 1] from arrays, tensors, a SpotPatchDataset or an iterable."""
    from ._patches import SpotPatchDataset

    if isinstance(tiles, SpotPatchDataset):
        for s in range(0, len(tiles), batch):
            yield _to_float_cf(np.stack([tiles.patch_uint8(i) for i in range(s, min(s + batch, len(tiles)))]))
        return
    if hasattr(tiles, "detach"):
        tiles = tiles.detach().cpu().numpy()
    if isinstance(tiles, np.ndarray):
        if tiles.ndim == 3:
            tiles = tiles[None]
        if tiles.ndim != 4:
            raise ValueError(f"tiles: expected (n, 3, h, w) or (n, h, w, 3), got shape {tiles.shape}.")
        for s in range(0, len(tiles), batch):
            yield _to_float_cf(tiles[s : s + batch])
        return
    if isinstance(tiles, Iterable):
        buf = []
        for t in tiles:
            t = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
            buf.append(t)
            if len(buf) == batch:
                yield from _tile_batches(np.stack(buf), batch)
                buf = []
        if buf:
            yield from _tile_batches(np.stack(buf), batch)
        return
    raise TypeError(f"tiles: expected an array, tensor, SpotPatchDataset or iterable of tiles, got {type(tiles)}.")


def _to_float_cf(a: np.ndarray) -> np.ndarray:
    if a.shape[1] not in (3, 4) and a.shape[-1] in (3, 4):  # channels last: RGB, or RGBA as read_region gives it
        a = np.moveaxis(a, -1, 1)
    if a.shape[1] < 3:
        raise ValueError(f"tiles: need 3 (RGB) channels first or last, got shape {a.shape}.")
    a = a[:, :3]
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32)
    if a.size and not np.isfinite(a).all():
        raise ValueError("tiles: float tiles hold NaN or infinite values; expected values in [0, 1].")
    if a.size and (a.min() < -1e-6 or a.max() > 1 + 1e-6):
        raise ValueError("tiles: float tiles must lie in [0, 1] (un-normalised); got values outside.")
    return a


def filter_tiles(
    tiles_or_patches: Any,
    method: Literal["hsl"] = "hsl",
    preset: Literal["he", "dab_brown"] = "he",
    threshold: float | None = None,
    **thresholds: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile tissue fraction (H&E) or brown-pixel fraction (IHC DAB) and a keep mask.

    ``preset="he"``: fraction of pixels with saturation ≥ ``sat_min`` and lightness ≤ ``light_max``. These are fixed
    thresholds: on slides whose glass is tinted (her2st C3–C5: background grey ≈ 220, saturation ≈ 0.07) 15–25 % of
    glass-only 112 px tiles pass them. :func:`tile_grid` (and everything built on it) screens tiles by the per-slide
    :func:`tissue_mask` first; on such slides, prefer it, or raise ``sat_min`` (0.12–0.15) for tiles you score
    here directly.
    ``preset="dab_brown"``: fraction of pixels whose hue lies in ``hue_range`` with saturation ≥ ``sat_min`` and
    lightness in ``light_range`` (the HSL hue-interval score of the multimodal GBM study, which keeps tiles with
    more than 20 % brown pixels). H&E tiles score ≈ 0 on ``dab_brown``: hematoxylin and eosin hues lie outside.

    Parameters
    ----------
    tiles_or_patches
        uint8 (or float in [0, 1]) tiles ``(n, 3, h, w)`` / ``(n, h, w, 3)`` (a single tile is fine), a torch
        tensor, a :class:`~scst.pp.SpotPatchDataset` (its un-normalised patches) or an iterable of tiles.
    method
        ``"hsl"`` (hue/saturation/lightness pixel rule).
    preset
        ``"he"`` or ``"dab_brown"``; its defaults are in :data:`PRESETS`.
    threshold
        Keep tiles whose fraction is ≥ this (default: the preset's, 0.5 for ``he`` and 0.2 for ``dab_brown``).
    **thresholds
        Overrides of the preset's pixel thresholds (``sat_min``, ``light_max``, ``hue_range``, ``light_range``).

    Returns
    -------
    ``(fraction, keep)``: float64 ``(n,)`` fractions in [0, 1] and the boolean mask ``fraction >= threshold``.
    """
    if method != "hsl":
        raise ValueError(f"method: expected 'hsl' for per-tile scores, got {method!r}.")
    p = _preset(preset, thresholds)
    thr = p["threshold"] if threshold is None else float(threshold)
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"threshold: expected a fraction in [0, 1], got {threshold}.")
    fracs = []
    for b in _tile_batches(tiles_or_patches):
        hue, sat, light = _hsl_channels(np.moveaxis(b, 1, 0))
        if preset == "he":
            pix = (sat >= p["sat_min"]) & (light <= p["light_max"])
        else:
            pix = _brown(hue, sat, light, p)
        fracs.append(pix.reshape(len(b), -1).mean(1))
    frac = np.concatenate(fracs) if fracs else np.zeros(0)
    return frac.astype(np.float64), frac >= thr


# --------------------------------------------------------------------------------------------------------------
# tile_grid
# --------------------------------------------------------------------------------------------------------------
def _window_fraction(mask: np.ndarray, xy: np.ndarray, size_px: float, fy: float, fx: float) -> np.ndarray:
    """Fraction of each full-resolution ``size_px`` window (centred at xy) covered by the low-resolution mask."""
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    half = size_px / 2
    x0 = np.floor((xy[:, 0] - half) / fx + 0.5).astype(np.int64)
    x1 = np.floor((xy[:, 0] + half) / fx + 0.5).astype(np.int64)
    y0 = np.floor((xy[:, 1] - half) / fy + 0.5).astype(np.int64)
    y1 = np.floor((xy[:, 1] + half) / fy + 0.5).astype(np.int64)
    x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)
    area = (x1 - x0) * (y1 - y0)  # outside the image counts as background
    cx0, cx1, cy0, cy1 = (np.clip(a, 0, n) for a, n in ((x0, w), (x1, w), (y0, h), (y1, h)))
    tot = sat[cy1, cx1] - sat[cy0, cx1] - sat[cy1, cx0] + sat[cy0, cx0]
    return tot / area


def tile_grid(
    sdata: Any,
    section: str,
    spacing_um: float = 200.0,
    size_um: float = 80.0,
    min_tissue: float = 0.5,
    *,
    table_key: str = TABLE_KEY,
    image_key: str | None = None,
    um_per_px: float | None = None,
    mask_key: str | None = None,
    shapes_key: str | None = None,
    table_key_added: str | None = None,
    inplace: bool = True,
    **mask_kwargs: Any,
):
    """Pseudo-spots on a regular grid over the tissue, for predicting expression on H&E-only slides.

    Grid centres lie ``spacing_um`` apart (square lattice, centred on the image). A centre is kept when it lies
    on the tissue mask and at least ``min_tissue`` of its ``size_um`` window is tissue; ``min_tissue=0`` keeps every
    grid point (no tissue screen: an image that is all tissue, e.g. a crop or a TMA core, has an empty mask).

    Parameters
    ----------
    sdata
        SpatialData with the section's image.
    section
        Section name: prefixes the new keys and names the coordinate system.
    spacing_um
        Centre-to-centre distance of grid neighbours (µm).
    size_um
        Window edge (µm) for the tissue fraction, and the pseudo-spot diameter of the circle shapes; use the
        patch size of the model that will predict on the grid.
    min_tissue
        Minimum tissue fraction of a window; 0: every grid point, mask or not.
    table_key
        Table whose ``uns['scst']['sections'][section]`` gives the image key and pixel size (optional when
        ``image_key`` and ``um_per_px`` are passed).
    image_key, um_per_px
        Image element and its full-resolution pixel size, if not taken from the table.
    mask_key
        Existing tissue labels (from :func:`tissue_mask`); default ``f"{section}_tissue"`` when present, else the
        mask is computed with ``tissue_mask(..., **mask_kwargs)`` (not stored). With a stored mask, ``mask_kwargs``
        are ignored, with a warning.
    shapes_key, table_key_added
        Keys of the new circle shapes and table; default ``f"{section}_grid"`` and ``f"{section}_grid_table"``.
    inplace
        Add both to ``sdata`` and return ``None``; otherwise return ``(table, shapes)``.

    Returns
    -------
    ``None`` or ``(AnnData, GeoDataFrame)``. The table has no genes; ``obsm["spatial"]`` = (x, y) full-resolution
    px, ``obs`` with ``section``, ``region``, ``spot_id`` (``"{col}x{row}"``), ``array_row``/``array_col`` (grid
    indices) and ``tissue_fraction``, and ``uns['scst']['sections'][section]`` = the section's geometry with
    ``shapes_key`` of the grid, ``grid_spacing_um``, ``spot_diameter_um = size_um`` (so
    :class:`~scst.pp.SpotPatchDataset` reads patches on it directly).

    Raises
    ------
    ValueError
        When the image's transformation to the section's coordinate system (``uns``'s ``coordinate_system``, else
        ``section``) is not the identity: the grid is laid out in the image's pixels and stored there, so a
        translation, a scale (e.g. a downscaled image placed by ``scst.io.register_sections``) or any other affine is
        refused, naming the image.
        An image with no transformation to that coordinate system is tiled in its own pixels.
        :func:`scst.pp.bulk_to_mudata` tiles a slide in its own pixels wherever it is placed.
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    for name, v in (("spacing_um", spacing_um), ("size_um", size_um)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name}: expected a positive number, got {v!r}.")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue: expected a fraction in [0, 1], got {min_tissue!r}.")
    geo: dict[str, Any] = {}
    if table_key in getattr(sdata, "tables", {}):
        geo = dict(sdata.tables[table_key].uns.get(UNS_KEY, {}).get("sections", {}).get(section, {}))
    if image_key is None:
        image_key = geo.get("image_key") or f"{section}_image"
    passed = um_per_px is not None
    um_per_px = um_per_px if passed else geo.get("um_per_px")
    if um_per_px is None:
        raise ValueError(
            f"um_per_px: pixel size of section {section!r} unknown (no uns[{UNS_KEY!r}]['sections'][{section!r}] in "
            f"table {table_key!r}); pass um_per_px."
        )
    where = "" if passed else f" (from uns[{UNS_KEY!r}]['sections'][{section!r}] of table {table_key!r})"
    um_per_px = _positive("um_per_px", um_per_px, "pixel size in µm", where)
    if image_key not in sdata.images:
        raise KeyError(f"image_key: {image_key!r} not in sdata.images ({list(sdata.images)}).")
    from ._patches import _full_res_image

    cs = geo.get("coordinate_system", section)
    try:  # the grid is laid out in image pixels and stored in the coordinate system: the two must coincide
        full, factor = _full_res_image(sdata.images[image_key], cs, image_key)
    except KeyError:  # no transformation to that coordinate system recorded: the image's pixels are taken as its
        full, factor = _full_res_image(sdata.images[image_key], None, image_key)
    except ValueError as err:  # a translation (or rotation, shear): the grid would not line up with the image
        raise ValueError(
            f"image_key: image {image_key!r} is translated or otherwise moved in coordinate system {cs!r} ({err}); "
            "tile_grid lays its grid out in the image's pixels and stores it in that coordinate system, so it "
            "supports only an image whose transformation there is the identity (spot coordinates are the image's "
            "pixels, as scst.pp.SpotPatchDataset reads them). For patches of a slide placed anywhere, use "
            "scst.pp.bulk_to_mudata, which tiles an image in its own pixels."
        ) from err
    if not np.isclose(factor, 1.0):
        raise ValueError(
            f"image_key: image {image_key!r} is scaled by {1 / factor:.4g} into coordinate system {cs!r} (e.g. a "
            "downscaled image placed there by scst.io.register_sections); tile_grid lays its grid out in the pixels "
            "of an image untransformed in the section's coordinate system. Pass the full-resolution image."
        )
    h, w = (int(s) for s in full.shape[-2:])

    mask_key = mask_key or f"{section}_tissue"
    if mask_key in sdata.labels:
        labels = sdata.labels[mask_key]
        if mask_kwargs:
            warnings.warn(
                f"tile_grid: the stored tissue mask sdata.labels[{mask_key!r}] is used, so the tissue_mask options "
                f"{sorted(mask_kwargs)} are ignored; delete that element (or pass another mask_key) to recompute it.",
                UserWarning,
                stacklevel=2,
            )
    elif mask_key != f"{section}_tissue":
        raise KeyError(f"mask_key: {mask_key!r} not in sdata.labels ({list(sdata.labels)}).")
    else:
        labels = tissue_mask(
            sdata, image_key, section=section, table_key=table_key, um_per_px=um_per_px, inplace=False, **mask_kwargs
        )
    if hasattr(labels, "children") and len(labels.children):  # multiscale labels: the finest level
        ds = labels[next(iter(labels.children))].ds
        labels = ds[next(iter(ds.data_vars))]
    mask = np.asarray(labels.values) > 0
    fy, fx = h / mask.shape[0], w / mask.shape[1]

    # In pixels, to 12 significant digits: the same grid given in µm at another pixel size (224 µm at 1 µm/px, 224 *
    # 0.2005 µm at 0.2005 µm/px) must not differ by round-off, which moved centres and window edges that lie on pixel
    # borders (common on a lattice) to the other side, changing tissue fractions and the points kept.
    step = float(f"{spacing_um / um_per_px:.12g}")
    size_px = float(f"{size_um / um_per_px:.12g}")
    # A grid that fits exactly keeps its last row/column: spacing_um / um_per_px can exceed a whole number of pixels
    # by round-off (224 * 0.2005 µm / 0.2005 µm/px = 224.00000000000003 px), and 672 // that dropped a column.
    ny, nx = (max(int(np.floor(n / step * (1 + 1e-9))), 1) for n in (h, w))
    ys = (np.arange(ny) + 0.5) * step + (h - ny * step) / 2
    xs = (np.arange(nx) + 0.5) * step + (w - nx * step) / 2
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    xy = np.stack([xs[cols], ys[rows]], 1)
    frac = _window_fraction(mask, xy, size_px, fy, fx)
    my = np.clip((xy[:, 1] / fy).astype(np.int64), 0, mask.shape[0] - 1)
    mx = np.clip((xy[:, 0] / fx).astype(np.int64), 0, mask.shape[1] - 1)
    keep = (frac >= min_tissue) & (mask[my, mx] | (min_tissue <= 0))
    if not keep.any():
        raise ValueError(
            f"No grid point of section {section!r} has ≥ {min_tissue:.0%} tissue in its {size_um} µm window; "
            "check the tissue mask or lower min_tissue."
        )
    xy, rows, cols, frac = xy[keep], rows[keep], cols[keep], frac[keep]

    shapes_key = shapes_key or f"{section}_grid"
    table_key_added = table_key_added or f"{section}_grid_table"
    ids = pd.Index([f"{c}x{r}" for c, r in zip(cols, rows)], name=INSTANCE_KEY)
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(len(xy), size_px / 2), index=ids, transformations={cs: Identity()}
    )
    obs = pd.DataFrame(
        {
            SECTION_KEY: pd.Categorical([section] * len(xy)),
            REGION_KEY: pd.Categorical([shapes_key] * len(xy)),
            INSTANCE_KEY: ids.to_numpy(),
            ARRAY_ROW: rows.astype(np.int64),
            ARRAY_COL: cols.astype(np.int64),
            "tissue_fraction": frac,
        },
        index=pd.Index([f"{section}_{i}" for i in ids]),
    )
    adata = ad.AnnData(X=sparse.csr_matrix((len(xy), 0), dtype=np.float32), obs=obs)
    adata.obsm[SPATIAL_KEY] = xy
    # The table's other entries first: the image, pixel size and shape used here must win over the table's.
    new_geo = {
        **{k: v for k, v in geo.items() if k not in {"shapes_key", "spot_diameter_um", "spot_diameter_px"}},
        "image_key": image_key,
        "coordinate_system": cs,
        "um_per_px": um_per_px,
        "image_shape": [h, w],
        "source": geo.get("source"),
        "shapes_key": shapes_key,
        "spot_diameter_um": float(size_um),
        "spot_diameter_px": float(size_px),
        "grid_step_um": float(spacing_um),
        "grid_spacing_um": float(spacing_um),
    }
    adata.uns[UNS_KEY] = {"sections": {section: new_geo}}
    table = TableModel.parse(adata, region=shapes_key, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    logg.info(
        f"Tile grid of section {section!r}: {len(xy)} pseudo-spots, {spacing_um} µm apart ({step:.1f} px), "
        f"≥ {min_tissue:.0%} tissue in {size_um} µm windows"
    )
    if not inplace:
        return table, shapes
    sdata.shapes[shapes_key] = shapes
    sdata.tables[table_key_added] = table
    return None
