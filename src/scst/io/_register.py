"""Make SpatialData from other readers (spatialdata-io's Visium, …) usable by scst models as-is."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from spatialdata import SpatialData
from spatialdata.models import get_table_keys
from spatialdata.transformations import BaseTransformation, Sequence, get_transformation, set_transformation

from .._constants import ARRAY_COL, ARRAY_ROW, SECTION_KEY, SPATIAL_KEY, TABLE_KEY, UNS_KEY
from .._logging import logg
from .._utils import _check_key

__all__ = ["register_sections"]


def register_sections(
    sdata: SpatialData,
    *,
    table: str = TABLE_KEY,
    image_keys: Mapping[str, str] | None = None,
    spot_diameter_um: float = 55.0,
    grid_step_um: float = 100.0,
) -> None:
    """Add scst's per-section geometry to a SpatialData written by another reader, in place.

    scst models read ``obs["section"]`` and ``uns["scst"]["sections"]`` (see :func:`read_st`). For a table that
    annotates circle shapes (one shapes element per section, as spatialdata-io's ``visium`` writes), this derives
    them: the section is the table's ``region``; µm/px is ``spot_diameter_um`` divided by the circles' diameter in
    px (spatialdata-io stores the full-resolution spot diameter as the radius × 2); the coordinate system is the
    one in which the shapes sit untransformed (``"global"`` first), so that ``obsm["spatial"]`` and the radius are
    its pixels; ``obsm["spatial_array"]`` is built from ``obs["array_col"/"array_row"]`` when present.

    An existing ``obs["section"]`` is kept; it must name each spot's region (a warning says when it does not).

    The image must be reachable from that coordinate system. spatialdata-io's ``visium`` without a full-resolution
    image (its default) puts the hires image only in ``"downscaled_hires"``, where the shapes are scaled by the
    hires scale factor: such an image is placed into the shapes' coordinate system through the coordinate system
    they share (a transformation is added to the image element, in place), so patches are cut from it at the right
    spots and size.

    Parameters
    ----------
    sdata
        SpatialData with a table annotating circle shapes.
    table
        Table key.
    image_keys
        Section (region) → image element for patches. Default: the image in the shapes' coordinate system with the
        most pixels (full resolution when present); if there is none, the largest image that shares another
        coordinate system with the shapes. Images named after the section (``f"{region}_..."``, as spatialdata-io
        names them, but not ``f"{region}_rep2_..."`` when ``f"{region}_rep2"`` is another section) come first, so
        that sections concatenated into one coordinate system each get their own image; sections left sharing a
        default image while there are others get a warning. Without any, the section gets
        ``image_key=None`` and a warning (tables and shapes still work; patches need an image).
    spot_diameter_um
        Physical spot diameter: Visium 55 µm, ST 100 µm.
    grid_step_um
        Centre-to-centre spacing of grid neighbours: Visium 100 µm, ST 200 µm.
    """
    _check_key(sdata.tables, table, "sdata.tables")
    adata = sdata.tables[table]
    if SPATIAL_KEY not in adata.obsm:  # checked first: nothing is written to a table that cannot be used
        raise KeyError(f"Table {table!r}: obsm[{SPATIAL_KEY!r}] (spot centres in px) is required.")
    regions, region_key, _ = get_table_keys(adata)
    regions = [regions] if isinstance(regions, str) else list(regions)
    image_keys = dict(image_keys or {})
    sections, placements, defaults = {}, [], {}
    for r in regions:
        _check_key(sdata.shapes, r, "sdata.shapes")
        shapes = sdata.shapes[r]
        if "radius" not in shapes.columns:
            raise ValueError(f"Shapes {r!r}: expected circles with a 'radius' column (spot size in px).")
        shape_ts = get_transformation(shapes, get_all=True)
        untransformed = [c for c, t in shape_ts.items() if _is_identity(t)]
        cs = "global" if "global" in untransformed else next(iter(untransformed or shape_ts))
        radius = shapes["radius"].to_numpy(dtype=np.float64)
        if radius.size == 0 or not (np.isfinite(radius).all() and (radius > 0).all()):
            raise ValueError(
                f"Shapes {r!r}: the 'radius' column must hold positive finite spot radii in px (µm/px is derived "
                f"from it); got {radius[:5].tolist()}{' …' if radius.size > 5 else ''}."
            )
        diameter_px = float(np.median(radius)) * 2
        key = image_keys.get(r)
        if key is None:
            paths = {k: _image_to_cs(el, shape_ts, cs) for k, el in sdata.images.items()}
            # images named after the section first (concatenated samples share coordinate systems), then images in
            # the shapes' coordinate system before those reached through another one
            for named, direct in ((True, True), (True, False), (False, True), (False, False)):
                cands = [k for k, (t, d) in paths.items() if t is not None and d is direct]
                if named:
                    cands = [k for k in cands if _named_after(str(k), str(r), regions)]
                key = max(cands, key=lambda k: int(np.prod(_scale0(sdata.images[k]).shape[1:])), default=None)
                if key is not None:
                    break
            if key is None:
                warnings.warn(
                    f"register_sections: no image of sdata.images ({list(sdata.images)}) shares a coordinate system "
                    f"with shapes {r!r} ({list(shape_ts)}); section {r!r} gets image_key=None, so patches "
                    "(SpotPatchDataset, embeddings, image models) cannot be read for it. Add the H&E image or pass "
                    "image_keys.",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                defaults.setdefault(key, []).append(str(r))
        elif key not in sdata.images:
            raise KeyError(f"image_keys[{r!r}]: {key!r} not in sdata.images ({list(sdata.images)}).")
        if key is not None:
            el = sdata.images[key]
            to_cs, direct = _image_to_cs(el, shape_ts, cs)
            if to_cs is None:
                raise ValueError(
                    f"image_keys[{r!r}]: image {key!r} has no transformation to the coordinate system {cs!r} of "
                    f"shapes {r!r}, nor to another one they share (image: "
                    f"{list(get_transformation(_scale0(el), get_all=True))}, shapes: {list(shape_ts)}); its pixels "
                    "cannot be matched to the spot centres."
                )
            if not direct:  # added once every section is checked: nothing is changed when one fails
                placements.append((key, el, to_cs, cs))
        shape = [int(s) for s in _scale0(sdata.images[key]).shape[1:]] if key is not None else None
        um_per_px = spot_diameter_um / diameter_px
        sections[str(r)] = {
            "image_key": key, "shapes_key": str(r), "coordinate_system": cs, "um_per_px": um_per_px,
            "spot_diameter_um": float(spot_diameter_um), "spot_diameter_px": diameter_px,
            "grid_step_um": float(grid_step_um), "image_shape": shape, "source": "register_sections",
        }  # fmt: skip
        logg.info(f"Section {r!r}: {um_per_px:.3f} µm/px from a {diameter_px:.1f} px spot; image {key!r}")
    shared = {k: rs for k, rs in defaults.items() if len(rs) > 1}
    if shared and len(sdata.images) > 1:
        warnings.warn(
            "register_sections: sections "
            + "; ".join(f"{rs} all use image {k!r}" for k, rs in shared.items())
            + f" (chosen by default among {list(sdata.images)}); if each section has its own image, pass "
            "image_keys={section: image}, else patches are cut from another section's image.",
            UserWarning,
            stacklevel=2,
        )
    for key, el, to_cs, cs in placements:
        set_transformation(el, to_cs, to_coordinate_system=cs)
        logg.info(f"Image {key!r}: added its transformation to coordinate system {cs!r} (through the shapes').")
    if SECTION_KEY not in adata.obs:
        adata.obs[SECTION_KEY] = pd.Categorical(adata.obs[region_key].astype(str), categories=list(sections))
    else:
        # kept, but the geometry is recorded under the regions: sections named otherwise find none
        odd = adata.obs[SECTION_KEY].astype(str).to_numpy() != adata.obs[region_key].astype(str).to_numpy()
        if odd.any():
            eg = adata.obs.loc[odd, [SECTION_KEY, region_key]].astype(str).drop_duplicates().head(3)
            warnings.warn(
                f"register_sections: the table's existing obs[{SECTION_KEY!r}] is kept but does not name the spots' "
                f"regions for {int(odd.sum())} spot(s) (e.g. "
                + ", ".join(f"{a!r} for region {b!r}" for a, b in eg.itertuples(index=False))
                + f"); the geometry is recorded under the region names "
                f"({list(sections)}), and scst looks it up by obs[{SECTION_KEY!r}], so those sections would have "
                f"no geometry or image. Delete obs[{SECTION_KEY!r}] (or set it to obs[{region_key!r}]) first.",
                UserWarning,
                stacklevel=2,
            )
    if ARRAY_ROW in adata.obs and ARRAY_COL in adata.obs:
        adata.obsm[f"{SPATIAL_KEY}_array"] = adata.obs[[ARRAY_COL, ARRAY_ROW]].to_numpy(dtype=np.float64)
    adata.uns[UNS_KEY] = {**adata.uns.get(UNS_KEY, {}), "sections": sections}


def _named_after(key: str, region: str, regions) -> bool:
    """Whether image ``key`` is named after ``region`` (``f"{region}_..."``), not after a longer one beginning with it.

    ``"S1_rep2_full_image"`` is section ``"S1_rep2"``'s image, not ``"S1"``'s.
    """
    longer = [str(o) for o in regions if len(str(o)) > len(region) and str(o).startswith(f"{region}_")]
    return key.startswith(f"{region}_") and not any(key.startswith(f"{o}_") for o in longer)


def _is_identity(t: BaseTransformation) -> bool:
    m = np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)
    return bool(np.allclose(m, np.eye(3)))


def _image_to_cs(
    el: Any, shape_ts: Mapping[str, BaseTransformation], cs: str
) -> tuple[BaseTransformation | None, bool]:
    """Transformation of an image into ``cs``, and whether it is the image's own.

    The image's own transformation to ``cs`` when it has one, else one composed through a coordinate system it
    shares with the shapes (image → shared, then shared → the shapes' ``cs`` with the shapes' transformation
    inverted); ``(None, False)`` when they share none.
    """
    img_ts = get_transformation(_scale0(el), get_all=True) or {}
    if cs in img_ts:
        return img_ts[cs], True
    for c, t in img_ts.items():
        if c in shape_ts:
            return Sequence([t, shape_ts[c].inverse()]), False
    return None, False


def _scale0(el):
    """Full-resolution array of an image element (multiscale DataTree or single-scale DataArray)."""
    if hasattr(el, "children") and len(el.children):
        ds = el[next(iter(el.children))].ds
        return ds[next(iter(ds.data_vars))]
    return el
