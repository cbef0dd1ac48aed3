"""Read classic Spatial Transcriptomics / Visium-style (counts, spots, image) triples into SpatialData."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity

from .._constants import ARRAY_COL, ARRAY_ROW, INSTANCE_KEY, REGION_KEY, SECTION_KEY, SPATIAL_KEY, TABLE_KEY, UNS_KEY
from .._logging import logg
from .._utils import _positive
from ._image import cached_image

__all__ = ["read_st", "concatenate_sections"]

#: Compression suffixes pandas reads transparently; the table format is the suffix before them.
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".zip", ".xz", ".zst"}


def _format_suffix(p: Path) -> str:
    """Lower-case suffix naming the table format, ignoring a compression suffix (``counts.csv.gz`` → ``.csv``)."""
    suffixes = [x.lower() for x in p.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _check_sample(sample: str) -> None:
    """Refuse a section name that SpatialData refuses in element names (``f"{sample}_image"``)."""
    if sample.startswith("__") or not all(c.isalnum() or c in "_-." for c in sample):
        raise ValueError(
            f"sample: {sample!r} names the SpatialData elements and coordinate system; use only letters, digits, "
            "'_', '-' and '.' (not starting with '__')."
        )


def _sample_from_file_name(name: str) -> str:
    """A valid section name from a file name without suffix: other characters (spaces, '#', ...) become ``_``."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name).lstrip("_") or "slide"


def _read_counts(counts: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    if isinstance(counts, pd.DataFrame):
        df = counts.copy(deep=False)  # the index is replaced below: never on the caller's frame
    else:
        p = Path(counts)
        if not p.exists():
            raise FileNotFoundError(f"counts: file {p} does not exist.")
        sep = "," if _format_suffix(p) == ".csv" else "\t"
        df = pd.read_csv(p, sep=sep, index_col=0)
        # pandas renames a repeated header name ("A", "A" → "A", "A.1"): the names as written, so it is caught below;
        # the header has a cell above the spot ids, or not (R's write.table)
        header = pd.read_csv(p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0]
        if len(header) in (df.shape[1], df.shape[1] + 1):
            df.columns = pd.Index(header.to_numpy()[len(header) - df.shape[1] :])
    df.index = df.index.astype(str)
    if df.index.has_duplicates:
        dup = df.index[df.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"counts: duplicate spot ids, e.g. {dup}; each row must be one spot.")
    if df.columns.has_duplicates:
        dup = df.columns[df.columns.duplicated()].unique()[:5].tolist()
        raise ValueError(f"counts: duplicate gene names, e.g. {dup}.")
    bad = [c for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        raise ValueError(f"counts: non-numeric values in gene columns {bad[:5]}; expected raw counts.")
    vals = df.to_numpy()
    if vals.dtype == object:  # pandas' nullable columns (Int64, Float64, from convert_dtypes()): pd.NA as NaN
        vals = df.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(vals).any() if vals.dtype.kind == "f" else False:
        raise ValueError("counts: missing (NaN) values; expected raw counts.")
    if vals.dtype.kind == "f" and np.isinf(vals).any():
        raise ValueError("counts: infinite values; expected raw counts.")
    if (vals < 0).any():
        raise ValueError("counts: negative values; expected raw counts (non-negative integers).")
    if vals.dtype.kind == "f" and not np.array_equal(vals, np.round(vals)):
        raise ValueError("counts: non-integer values; expected raw counts, not normalised data.")
    if vals.size and vals.max() > np.iinfo(np.int32).max:  # stored as int32: larger values would wrap around
        raise ValueError(f"counts: values up to {vals.max()} exceed the int32 range of raw counts.")
    return df


def _read_spots(spots: str | os.PathLike | pd.DataFrame, array_cols: Sequence[str], pixel_cols: Sequence[str]):
    if isinstance(spots, pd.DataFrame):
        df = spots.copy()
        where = "spots"
    else:
        p = Path(spots)
        if not p.exists():
            raise FileNotFoundError(f"spots: file {p} does not exist.")
        df = pd.read_csv(p, sep="\t" if _format_suffix(p) in {".tsv", ".txt"} else ",")
        where = f"spots ({p})"
    missing = [c for c in (*array_cols, *pixel_cols) if c not in df.columns]
    if missing:
        raise KeyError(f"spots: columns {missing} not found; available: {list(df.columns)}.")
    if "selected" in df.columns:
        sel = pd.to_numeric(df["selected"], errors="coerce").astype("float64")
        bad = ~sel.isin([0, 1])  # NaN, text and other numbers: the ST pipeline writes 0 or 1
        if bad.any():
            raise ValueError(
                f"{where}: column 'selected' must hold 0 or 1 in every row (1 = spot under tissue, kept); "
                f"{int(bad.sum())} row(s) do not, e.g. values {df['selected'][bad].head(3).tolist()} in rows "
                f"{df.index[bad][:3].tolist()}."
            )
        df = df[sel.to_numpy() == 1]
    pix = df[list(pixel_cols)]
    if not all(pd.api.types.is_numeric_dtype(t) for t in pix.dtypes) or not np.isfinite(pix.to_numpy(float)).all():
        bad = pix.index[~np.isfinite(pix.apply(pd.to_numeric, errors="coerce").to_numpy(float)).all(1)]
        raise ValueError(
            f"spots: pixel columns {list(pixel_cols)} must hold finite numbers (spot centres in px); "
            f"{len(bad)} row(s) do not, e.g. rows {bad[:3].tolist()}."
        )
    col, row = (df[c].to_numpy() for c in array_cols)
    if not (np.issubdtype(col.dtype, np.integer) and np.issubdtype(row.dtype, np.integer)):
        if not all(pd.api.types.is_numeric_dtype(df[c]) for c in array_cols) or not (
            np.allclose(col, np.round(col)) and np.allclose(row, np.round(row))
        ):
            raise ValueError(f"spots: array columns {list(array_cols)} must hold integer grid indices.")
        # Round, not truncate: 24.9999999 is grid index 25 (int() would give 24, another spot's id).
        col, row = np.rint(col).astype(np.int64), np.rint(row).astype(np.int64)
        df = df.assign(**{array_cols[0]: col, array_cols[1]: row})
    df.index = pd.Index([f"{int(x)}x{int(y)}" for x, y in zip(col, row)])
    if df.index.has_duplicates:
        dup = df.index[df.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"spots: duplicate spot ids (array positions) {dup}.")
    return df


#: Fraction of count rows without a spot above which reading warns (a few are normal: spots filtered upstream)
#: and above which it refuses (most measured spots lost: the counts belong to another section's spot file).
DROP_WARN_FRACTION, DROP_ERROR_FRACTION = 0.05, 0.5
#: Largest RMS distance (in grid steps) of spot centres from the fitted array grid before the fit is rejected.
#: her2st sections fit to 0.04-0.08 steps.
GRID_RESIDUAL_MAX_STEPS = 0.25


def _grid_steps_per_index(col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Grid steps spanned by one array column and one array row index: ``(1, 1)`` on ST's square grid.

    Visium's hexagonal grid is detected by every spot having the same parity of ``col + row`` (rows are
    interleaved: columns step by 2 along a row): one column index is half a grid step and one row index
    ``√3 / 2`` of a step (Visium: 50 µm and 86.6 µm for a 100 µm step).
    """
    if len(col) > 1 and np.unique((col + row) % 2).size == 1:
        return np.array([0.5, np.sqrt(3) / 2])
    return np.ones(2)


def _fit_grid(xy: np.ndarray, col: np.ndarray, row: np.ndarray, array_cols, pixel_cols) -> tuple[float, str | None]:
    """Pixels per grid step from the array grid, and what leaves it unchecked (None: a checked fit).

    Centres off the grid and pixel columns along the wrong axis are refused.

    An affine fit ``(x, y) = A @ (col, row) + t`` tolerates rotation, scale and shear. The lengths of ``A``'s
    columns (pixels per column and per row index), divided by the grid steps one index spans (see
    :func:`_grid_steps_per_index`), each give pixels per grid step; the pitch is their mean. It does not depend on
    the grid's rotation. The fit's RMS residual is measured in grid steps. The array column must run mostly along x
    and the row along y: otherwise the pixel columns are swapped (the fit is then exact, but µm/px from it would be
    wrong). Spots on one line of the array (one row, one column) give the pitch along that line only, taking
    one index as one grid step (the interleaved rows of a hexagonal grid cannot be seen on one line), and are not
    checked; a single spot gives NaN.
    """
    idx = np.column_stack([col, row]).astype(float)
    design = np.column_stack([idx, np.ones(len(col))])
    if np.linalg.matrix_rank(design) < 3:  # spots on one line of the array (or one spot): its direction only
        centred = idx - idx.mean(axis=0)
        if not np.any(centred):
            return np.nan, "a single spot"
        u = np.linalg.svd(centred, full_matrices=False)[2][0]  # unit direction of the line in index space
        v, *_ = np.linalg.lstsq(np.column_stack([centred @ u, np.ones(len(col))]), xy, rcond=None)
        return float(np.hypot(*v[0])), (
            f"{len(col)} spots on one line of the array, taking one index as one grid step (on a hexagonal row, "
            "e.g. Visium, neighbours are 2 indices apart and µm/px comes out 2× too large)"
        )
    steps = _grid_steps_per_index(col, row)
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    (a, d), (b, e) = coef[0], coef[1]  # x = a col + b row + .., y = d col + e row + ..
    pitch = float(np.mean([np.hypot(a, d) / steps[0], np.hypot(b, e) / steps[1]]))
    if len(col) < 4:  # as many parameters as spots: nothing to check against
        return pitch, f"{len(col)} spots (the grid fit has as many parameters: nothing checks it)"
    rms = float(np.sqrt(np.mean(np.sum((xy - design @ coef) ** 2, axis=1)))) / pitch if pitch > 0 else np.inf
    if not rms <= GRID_RESIDUAL_MAX_STEPS:
        raise ValueError(
            f"spots: spot centres {list(pixel_cols)} lie {rms:.2f} grid steps (RMS) off the array grid of "
            f"{list(array_cols)} (expected < {GRID_RESIDUAL_MAX_STEPS}); the pixel size derived from them would be "
            f"wrong. Are {list(pixel_cols)} the spot centres in pixels and {list(array_cols)} the integer array "
            "column and row of the same spots?"
        )
    if abs(d) > abs(a) and abs(b) > abs(e):
        raise ValueError(
            f"pixel_cols: the array column {array_cols[0]!r} runs along {pixel_cols[1]!r} and the array row "
            f"{array_cols[1]!r} along {pixel_cols[0]!r}: the pixel columns look swapped (µm/px would come out "
            f"wrong); pass pixel_cols={tuple(pixel_cols[::-1])!r}, or rotate an image that is turned by 90°."
        )
    return pitch, None


def _check_drops(sample: str, n_counts: int, n_spots: int, n_kept: int) -> None:
    """Log the few unmatched spots every section has; warn loudly above a few per cent; refuse most lost."""
    n_nospot, n_nocount = n_counts - n_kept, n_spots - n_kept
    if not (n_nospot or n_nocount):
        return
    msg = (
        f"Section {sample!r}: dropped {n_nocount} spot(s) without counts and {n_nospot} count row(s) "
        f"without a spot; {n_kept} spots kept"
    )
    lost, unmatched = n_nospot / n_counts, n_nocount / n_spots
    if lost > DROP_ERROR_FRACTION:
        raise ValueError(
            f"counts, spots: {msg} — {lost:.0%} of the count rows have no spot. Are the count table and the spot "
            "file from the same section? Spot ids '<x>x<y>' of different sections overlap partly, so kept spots "
            "would sit at the wrong pixels."
        )
    if max(lost, unmatched) > DROP_WARN_FRACTION:
        warnings.warn(
            f"{msg} ({lost:.0%} of count rows, {unmatched:.0%} of spots unmatched, more than "
            f"{DROP_WARN_FRACTION:.0%}): check that the count table and the spot file are from the same section; "
            "kept spots may sit at the wrong pixels.",
            UserWarning,
            stacklevel=3,
        )
    else:
        logg.info(f"{msg}.")


def read_st(
    counts: str | os.PathLike | pd.DataFrame,
    spots: str | os.PathLike | pd.DataFrame,
    image: str | os.PathLike | None,
    *,
    sample: str,
    um_per_px: float | None = None,
    spot_diameter_um: float = 100.0,
    grid_step_um: float = 200.0,
    array_cols: Sequence[str] = ("x", "y"),
    pixel_cols: Sequence[str] = ("pixel_x", "pixel_y"),
    cache_dir: str | os.PathLike | None = None,
) -> SpatialData:
    """Read one Spatial Transcriptomics section (count table, spot file, H&E image) into SpatialData.

    Parameters
    ----------
    counts
        Spots × genes table of raw counts (TSV/CSV path, optionally compressed: the format is read from the
        suffix before ``.gz``/``.bz2``/``.zip``/``.xz``/``.zst``, ``.csv`` is comma-separated and anything else
        tab-separated; or a DataFrame, which is not modified). Its index holds the spot ids
        ``"<x>x<y>"`` (array column × array row), as in the ST pipeline's ``*_stdata`` files; a file's header may
        leave out the cell above the ids (as R's ``write.table`` does).
    spots
        Spot file (path: ``.tsv``/``.txt`` tab-, otherwise comma-separated, compression suffix ignored; or
        DataFrame) with integer array positions (``array_cols``, column then row; floats within rounding of an
        integer are rounded to it) and spot centres in full-resolution image pixels (``pixel_cols``, x = column
        then y = row). Rows with ``selected == 0`` are ignored (an optional ``selected`` column must hold 0 or 1 in
        every row).
    image
        Full-resolution H&E image (JPEG, PNG or TIFF) that ``pixel_cols`` refer to, or ``None`` for a table
        and shapes only. It is converted once to a multiscale zarr store and opened lazily.
    sample
        Section name: prefixes element keys and obs names, names the coordinate system (letters, digits, ``_``,
        ``-`` and ``.``, as SpatialData element names).
    um_per_px
        Micrometres per full-resolution pixel (finite, > 0). By default it is derived from the array geometry: an
        affine least-squares fit of the spot centres on the array indices gives the pixel vector of one column
        and of one row index; their lengths, divided by the grid steps one index spans, give the pitch in pixels
        per grid step, and ``um_per_px = grid_step_um / pitch`` (her2st: ≈ 290 px per 200 µm, 0.69 µm/px). The fit
        does not depend on the grid's rotation. On ST's square grid one index is one step; a hexagonal Visium grid
        (every spot has ``col + row`` of the same parity) has a column index of half a step and a row index of
        ``√3 / 2`` steps. Spots on a single array line are taken as a square grid. Nearest-neighbour distances are
        not used: detected spot positions jitter and the nearest of four neighbours runs ~6 % short.
    spot_diameter_um
        Physical spot diameter (finite, > 0; ST: 100 µm; Visium: 55 µm).
    grid_step_um
        Centre-to-centre distance of grid neighbours (finite, > 0; ST: 200 µm; Visium: 100 µm).
    array_cols, pixel_cols
        Column names in ``spots``.
    cache_dir
        Folder for the zarr image cache (default ``$SCST_CACHE_DIR/images``).

    Returns
    -------
    SpatialData with image ``f"{sample}_image"``, circle shapes ``f"{sample}_spots"`` (radius = physical spot
    radius in px) and table ``"table"``: raw counts as int32 CSR in ``X``; ``obs`` with ``section``,
    ``region``, ``spot_id``, ``array_row``, ``array_col``; ``obsm["spatial"]`` = (x, y) in full-resolution
    pixels; ``obsm["spatial_array"]`` = (array_col, array_row) for squidpy's grid graph;
    ``uns["scst"]["sections"][sample]`` = geometry (``um_per_px``, ``spot_diameter_um``, ``spot_diameter_px``,
    ``image_shape``, element keys, coordinate system).

    Notes
    -----
    Spots without a count row and count rows without a spot are dropped: up to 5 % of either is logged (ST
    sections lose a few selected spots that have no counts); more warns loudly, and losing more than half the
    count rows is an error (the count table and the spot file are from different sections). Spot centres that
    do not follow the array grid (RMS residual of an affine fit of pixels on array indices above 0.25 grid
    steps), pixel columns that run along the wrong array axis (``pixel_cols`` swapped) and spot centres outside
    the image are errors.
    """
    if not isinstance(sample, str) or not sample:
        raise ValueError(f"sample: expected a non-empty string, got {sample!r}.")
    _check_sample(sample)  # before the image is converted: spatialdata refuses such element names only at the end
    spot_diameter_um = _positive("spot_diameter_um", spot_diameter_um)
    grid_step_um = _positive("grid_step_um", grid_step_um)
    if um_per_px is not None:
        um_per_px = _positive("um_per_px", um_per_px)
    cdf = _read_counts(counts)
    sdf = _read_spots(spots, array_cols, pixel_cols)
    common = cdf.index.intersection(sdf.index, sort=False)
    if len(common) == 0:
        raise ValueError(
            f"No spot of counts matches a spot of spots (counts ids e.g. {cdf.index[:3].tolist()}, "
            f"spot ids e.g. {sdf.index[:3].tolist()}); expected ids '<x>x<y>' from columns {list(array_cols)}."
        )
    _check_drops(sample, len(cdf), len(sdf), len(common))
    cdf, sdf = cdf.loc[common], sdf.loc[common]
    xy = sdf[list(pixel_cols)].to_numpy(dtype=np.float64)
    col = np.rint(sdf[array_cols[0]].to_numpy()).astype(np.int64)
    row = np.rint(sdf[array_cols[1]].to_numpy()).astype(np.int64)
    pitch, weak = _fit_grid(xy, col, row, array_cols, pixel_cols)

    if um_per_px is None:
        if not np.isfinite(pitch) or pitch <= 0:
            raise ValueError("um_per_px: cannot derive the pixel size from a single spot; pass it.")
        um_per_px = grid_step_um / pitch
        if weak is not None:
            warnings.warn(
                f"read_st: section {sample!r}: µm/px ({um_per_px:.4g}) derived from {weak}; pass um_per_px= if "
                "it is known.",
                UserWarning,
                stacklevel=2,
            )
    spot_diameter_px = spot_diameter_um / um_per_px

    cs = sample
    image_key, shapes_key = f"{sample}_image", f"{sample}_spots"
    images = {}
    image_shape = None
    if image is not None:
        el = cached_image(image, cs, cache=cache_dir)
        h, w = (int(s) for s in el["scale0"]["image"].shape[1:])
        image_shape = [h, w]
        outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
        if outside.any():
            raise ValueError(
                f"spots: {int(outside.sum())} spot centre(s) lie outside the {w} × {h} px image, e.g. "
                f"{sdf.index[outside][:3].tolist()}; are {list(pixel_cols)} full-resolution pixels of this image?"
            )
        images[image_key] = el

    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(len(xy), spot_diameter_px / 2), index=pd.Index(common, name=INSTANCE_KEY),
        transformations={cs: Identity()},
    )  # fmt: skip

    X = sparse.csr_matrix(cdf.to_numpy(dtype=np.int32))
    obs = pd.DataFrame(
        {
            SECTION_KEY: pd.Categorical([sample] * len(common)),
            REGION_KEY: pd.Categorical([shapes_key] * len(common)),
            INSTANCE_KEY: common.to_numpy(),
            ARRAY_ROW: row,
            ARRAY_COL: col,
        },
        index=pd.Index([f"{sample}_{s}" for s in common]),
    )
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=cdf.columns.astype(str)))
    adata.obsm[SPATIAL_KEY] = xy
    # Integer grid as (x, y) = (column, row), so squidpy's grid graph can use it: spatial_key="spatial_array".
    adata.obsm[f"{SPATIAL_KEY}_array"] = np.column_stack([col, row]).astype(np.float64)
    adata.uns[UNS_KEY] = {
        "sections": {
            sample: {
                "image_key": image_key if image is not None else None,
                "shapes_key": shapes_key,
                "coordinate_system": cs,
                "um_per_px": float(um_per_px),
                "spot_diameter_um": float(spot_diameter_um),
                "spot_diameter_px": float(spot_diameter_px),
                "grid_step_um": float(grid_step_um),
                "image_shape": image_shape,
                "source": str(image) if image is not None else None,
            }
        }
    }
    table = TableModel.parse(adata, region=shapes_key, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    logg.info(f"Read section {sample!r}: {adata.n_obs} spots × {adata.n_vars} genes, {um_per_px:.3f} µm/px")
    return SpatialData(images=images, shapes={shapes_key: shapes}, tables={TABLE_KEY: table})


def concatenate_sections(sdatas: Sequence[SpatialData] | Mapping[str, SpatialData], join: str = "inner") -> SpatialData:
    """Combine single-section SpatialData objects from :func:`read_st` into one, with one table.

    Parameters
    ----------
    sdatas
        Objects to combine; their section names (``uns['scst']['sections']``) and their image and shapes element
        names must be distinct (an element name in two objects is an error: one element would replace the other).
    join
        ``"inner"`` keeps the genes measured in every section (the default: models need one gene space);
        ``"outer"`` keeps all genes and fills absent ones with zeros (counts were not measured there). ``obs``
        columns are kept either way (missing values where a section lacks the column); ``obsm`` and ``layers``
        follow ``join``.

    Returns
    -------
    SpatialData with all images and shapes, and one table whose ``obs["section"]`` tells sections apart and
    whose ``uns["scst"]["gene_alignment"]`` records ``join``. Obs names are kept when they are unique across
    sections (:func:`read_st` prefixes them with the section); sections that share obs names (Visium barcodes
    registered with :func:`register_sections`) get every name prefixed with its section, with a warning. ``X`` is
    CSR: int32 for raw counts; other values (sections normalised before) keep their float type.
    """
    if join not in {"inner", "outer"}:
        raise ValueError(f"join: expected 'inner' or 'outer', got {join!r}.")
    sdatas = list(sdatas.values()) if isinstance(sdatas, Mapping) else list(sdatas)
    if not sdatas:
        raise ValueError("sdatas: nothing to concatenate.")
    tables, sections = [], {}
    images, shapes = {}, {}
    for s in sdatas:
        t = s.tables[TABLE_KEY]
        for name, geo in t.uns[UNS_KEY]["sections"].items():
            if name in sections:
                raise ValueError(f"sdatas: section {name!r} appears twice.")
            sections[name] = geo
        tables.append(t)
        for kind, into, elements in (("image", images, s.images), ("shapes", shapes, s.shapes)):
            for key, el in elements.items():
                if key in into and into[key] is not el:  # update() would keep the last one for every section
                    raise ValueError(
                        f"sdatas: {kind} element {key!r} is in more than one object (sections "
                        f"{list(t.uns[UNS_KEY]['sections'])} and an earlier one); one would replace the other and "
                        "its sections would read the wrong one. Give each object's elements distinct names (e.g. "
                        f"prefixed with the section; for images then register_sections(sdata, image_keys=...))."
                    )
                into[key] = el
    adata = ad.concat(tables, join=join, merge="same", fill_value=0)
    if join == "inner":  # join is about genes: obs columns of some sections only (labels) are kept, NaN elsewhere
        adata.obs = ad.concat([ad.AnnData(obs=t.obs) for t in tables], join="outer").obs
    if adata.n_vars == 0 and any(t.n_vars for t in tables):
        warnings.warn(
            "concatenate_sections: no gene is measured in every section, so join='inner' keeps no gene; check the "
            "gene names (symbols vs ids) or pass join='outer'.",
            UserWarning,
            stacklevel=2,
        )
    X = sparse.csr_matrix(adata.X)
    # raw counts (read_st's int32, or floats holding them after ad.concat) as int32; anything else (normalised
    # sections) is kept as it is: the cast would truncate it to integers without a word
    if X.dtype.kind in "iub" or (np.isfinite(X.data).all() and np.array_equal(X.data, np.round(X.data))):
        X = X.astype(np.int32)
    adata.X = X
    adata.obs[SECTION_KEY] = pd.Categorical(adata.obs[SECTION_KEY].astype(str), categories=list(sections))
    adata.obs[REGION_KEY] = pd.Categorical(adata.obs[REGION_KEY].astype(str))
    if not adata.obs_names.is_unique:  # e.g. Visium barcodes, the same in every sample (read_st's are prefixed)
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:3].tolist()
        adata.obs_names = [f"{s}_{n}" for s, n in zip(adata.obs[SECTION_KEY].astype(str), adata.obs_names)]
        warnings.warn(
            f"concatenate_sections: sections share obs names (e.g. {dup}); every obs name is now prefixed with its "
            "section, '<section>_<name>', as read_st names spots.",
            UserWarning,
            stacklevel=2,
        )
    adata.uns[UNS_KEY] = {"sections": sections, "gene_alignment": "intersection" if join == "inner" else "union"}
    adata.uns.pop("spatialdata_attrs", None)
    regions = [geo["shapes_key"] for geo in sections.values()]
    table = TableModel.parse(adata, region=regions, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(images=images, shapes=shapes, tables={TABLE_KEY: table})
