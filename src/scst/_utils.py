"""Small helpers shared by several modules."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._constants import TABLE_KEY, UNS_EMBED_KEY


def cache_dir() -> Path:
    """Root of scst's caches (images, downloads): ``$SCST_CACHE_DIR`` or ``pooch.os_cache("scst")``."""
    import pooch

    env = os.environ.get("SCST_CACHE_DIR")
    return Path(env) if env else Path(pooch.os_cache("scst"))


def _get_table(data: Any, table: str | None = None) -> AnnData:
    """Return the AnnData behind ``data`` (AnnData itself, or ``sdata.tables[table]``)."""
    if isinstance(data, AnnData):
        return data
    tables = getattr(data, "tables", None)
    if tables is None:
        raise TypeError(f"Expected AnnData or SpatialData, got {type(data).__name__}.")
    key = TABLE_KEY if table is None else table
    if key not in tables:
        raise KeyError(f"Table {key!r} not found in SpatialData; available tables: {list(tables)}.")
    return tables[key]


def _check_key(mapping: Any, key: str, where: str) -> None:
    """Raise a KeyError naming ``where`` when ``key`` is missing."""
    if key not in mapping:
        avail = list(mapping.keys()) if hasattr(mapping, "keys") else list(mapping)
        raise KeyError(f"Key {key!r} not found in {where}; available: {avail[:20]}.")


#: Files that mark a folder as a zarr store (v2 / v3).
ZARR_MARKERS = (".zgroup", "zarr.json")


def _holds_other_files(path: Path, markers: Sequence[str]) -> bool:
    """Whether ``path`` is a non-empty folder holding none of ``markers``.

    Such a folder of other files is never deleted by an ``overwrite`` (a saved model holds ``attr.json``, a zarr
    store one of :data:`ZARR_MARKERS`).
    """
    return path.is_dir() and not any((path / m).is_file() for m in markers) and any(path.iterdir())


def _obsm_features(
    adata: Any,
    key: str,
    n_features: int | None = None,
    rows: np.ndarray | None = None,
    *,
    arg: str = "use_rep",
    hint: str = "run scst.tl.embed_patches first",
    fix: str = "re-run the embedding",
    dtype: Any = np.float32,
) -> np.ndarray:
    """``obsm[key]`` (dense, DataFrame or sparse) as ``dtype`` for ``rows``, checked.

    2-D, one row per spot, ``n_features`` columns, finite; errors name ``arg`` and the first bad spots by name.
    """
    from scipy import sparse

    _check_key(adata.obsm, key, f"adata.obsm (argument `{arg}`; {hint})")
    x = adata.obsm[key]
    x = x.to_numpy() if hasattr(x, "to_numpy") else x
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    if x.ndim != 2 or x.shape[0] != adata.n_obs or x.shape[1] == 0:
        raise ValueError(f"{arg}: obsm[{key!r}] must have shape (n_obs={adata.n_obs}, n_features), got {x.shape}.")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{arg}: obsm[{key!r}] has {x.shape[1]} features; the model was trained on {n_features}.")
    rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows)
    x = x[rows]
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise ValueError(
            f"{arg}: obsm[{key!r}] has NaN/inf in {int(bad.sum())} of {len(x)} spots (e.g. "
            f"{list(adata.obs_names[rows[bad][:5]])}); {fix} or drop those spots."
        )
    return x.astype(dtype)


def _positive(name: str, value: Any, what: str = "number", where: str = "") -> float:
    """``value`` as a finite positive float, or a ValueError naming the argument (``where``: where it came from)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = np.nan
    if isinstance(value, bool) or not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a finite positive {what}, got {value!r}{where}.")
    return v


def _positive_int(
    name: str,
    value: Any,
    minimum: int = 1,
    *,
    floats: bool = False,
    maximum: int | None = None,
    what: str | None = None,
) -> int:
    """``value`` as a Python int in ``[minimum, maximum]`` (numpy integers too), or a ValueError naming the argument.

    For counts such as ``batch_size``: 0, negatives, floats and booleans are refused, not replaced by a default.
    ``floats=True`` also takes an integral float such as ``32.0`` (sizes in pixels that come out of arithmetic);
    NaN, inf and fractional values are refused. ``what`` replaces the expectation in the message.
    """
    ok = not isinstance(value, bool | np.bool_) and (
        isinstance(value, int | np.integer)
        or (
            floats and isinstance(value, float | np.floating) and bool(np.isfinite(value)) and float(value).is_integer()
        )
    )
    if not ok or value < minimum or (maximum is not None and value > maximum):
        if what is None:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            what = what if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected {what}, got {value!r}.")
    return int(value)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once (not thread-safe, hence the /proc read first)
    os.umask(mask)
    return mask


@contextmanager
def _atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest`` that is renamed to ``dest`` on success.

    An existing ``dest`` is replaced in one atomic swap where the OS has one (Linux), so a process killed at
    any moment leaves either the old or the new directory at ``dest``; elsewhere the old one is first renamed
    aside (``.<name>.old-*``) and removed after the new one is in place. The directory gets the mode a plain
    ``mkdir`` would give (``0o777`` less the umask), not ``mkdtemp``'s private ``0o700``, so a cache shared
    between users stays readable. A ``dest`` that is a symbolic link is written where it points (the link stays).
    """
    dest = Path(dest)
    if dest.is_symlink():  # swapping the link itself left it a stray entry and the linked folder unchanged
        dest = Path(os.path.realpath(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if dest.exists() and _exchange(tmp, dest):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
            return
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_zarr(obj: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """``obj.write(path, **kwargs)`` for a SpatialData (zarr) with anndata's table arrays unsharded, stated.

    anndata ≥ 0.12 warns on every zarr v3 table write that sharded arrays ("autosharding") become its default in
    its next release, unless ``anndata.settings.auto_shard_zarr_v3`` is set. scst's stores keep today's layout
    (one chunked array per field) whatever that release does; a user's own setting is kept.
    """
    import anndata as ad

    s = ad.settings
    unset = getattr(s, "auto_shard_zarr_v3", False) is None and hasattr(s, "override")
    with s.override(auto_shard_zarr_v3=False) if unset else nullcontext():
        obj.write(path, **kwargs)


def _write_zarr_atomic(obj: Any, dest: str | os.PathLike) -> None:
    """:func:`_write_zarr` of a SpatialData to ``dest`` via :func:`_atomic_dir`: the store appears whole or not at all.

    An existing store is replaced. SpatialData writes only into a path that does not exist yet, so the temporary
    directory is removed again and the store written at its name.
    """
    with _atomic_dir(dest) as tmp:
        tmp.rmdir()
        _write_zarr(obj, tmp)


@contextmanager
def _atomic_file(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``dest`` that is renamed to ``dest`` on success.

    The file gets the mode a plain ``open(dest, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s
    private ``0o600``, so files of a cache shared between users stay readable; the mode is set after the writer
    is done, as some writers (safetensors) replace the file with a private one of their own.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plain(d: Any) -> Any:
    """JSON-able copy of a (nested) value from ``uns``: numpy scalars/arrays → Python; None stays None."""
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, np.ndarray | list | tuple):
        return [_plain(v) for v in d]
    return d.item() if isinstance(d, np.generic) else d


def _embedding_record(adata: Any, key: str) -> dict[str, Any] | None:
    """How ``obsm[key]`` was made (``uns["scst_embed"][key]`` of :func:`scst.tl.embed_patches`), or None."""
    rec = adata.uns.get(UNS_EMBED_KEY, {}).get(key)
    return None if rec is None else _plain(dict(rec))


# ----------------------------------------------------------------------------------------------------------------
# Prediction layers: sparse values + masks (scst.tl.predict_expression)
# ----------------------------------------------------------------------------------------------------------------
def _mask_key(layer: str) -> str:
    """``var``/``obs`` column marking the genes/spots that ``layers[layer]`` holds a prediction for."""
    return f"{layer}_mask"


def _store_prediction(adata: AnnData, layer: str, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` (``len(rows) × len(cols)``) into ``layers[layer]`` as CSR, with ``var``/``obs`` masks.

    Only the predicted block is stored (explicit zeros kept), so memory is ``n_predicted_spots × n_panel`` whatever
    ``n_vars`` is, and the layer has no NaN. A previous prediction in the same layer (with its masks) keeps its
    other spots when the gene panel is the same; one of another panel is replaced with a warning, since its spots
    would otherwise read as zero for the new genes.
    """
    import warnings

    from scipy import sparse

    n_obs, n_vars = adata.shape
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    key = _mask_key(layer)
    gmask = np.zeros(n_vars, dtype=bool)
    gmask[cols] = True
    smask = np.zeros(n_obs, dtype=bool)
    smask[rows] = True
    old = adata.layers.get(layer)
    keep = None
    if old is not None and key in adata.var and key in adata.obs and sparse.issparse(old) and old.shape == adata.shape:
        old_g, old_s = adata.var[key].to_numpy(bool), adata.obs[key].to_numpy(bool)
        others = old_s & ~smask
        if others.any() and np.array_equal(old_g, gmask):
            keep = sparse.coo_matrix(sparse.csr_matrix(old)[np.flatnonzero(others)])
            keep_rows = np.flatnonzero(others)[keep.row]
            smask |= others
        elif others.any():
            warnings.warn(
                f"layers[{layer!r}] held predictions of another gene panel for {int(others.sum())} other spot(s); "
                "they are replaced (use another `layer` to keep both).",
                UserWarning,
                stacklevel=3,
            )
    r = np.repeat(rows, len(cols))
    c = np.tile(cols, len(rows))
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if keep is not None:
        r, c = np.concatenate([keep_rows, r]), np.concatenate([keep.col, c])
        v = np.concatenate([keep.data.astype(np.float32), v])
    M = sparse.csr_matrix((v, (r, c)), shape=(n_obs, n_vars), dtype=np.float32)
    M.sort_indices()
    adata.layers[layer] = M
    adata.var[key] = gmask
    adata.obs[key] = smask


def _prediction_block(adata: AnnData, layer: str, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense float64 ``layers[layer][:, cols]`` with NaN where the layer holds no prediction; and ``cols``.

    The predicted genes and spots come from the masks :func:`_store_prediction` writes; a layer without masks
    (e.g. written by hand) is taken as stored, with NaN marking what is not predicted. ``cols=None``: the predicted
    genes (every gene with a finite value, without masks).
    """
    from scipy import sparse

    P = adata.layers[layer]
    key = _mask_key(layer)
    gmask = adata.var[key].to_numpy(bool) if key in adata.var else None
    smask = adata.obs[key].to_numpy(bool) if key in adata.obs else None
    if cols is None:
        if gmask is not None:
            cols = np.flatnonzero(gmask)
        else:
            finite = np.isfinite(P.toarray() if sparse.issparse(P) else np.asarray(P))
            cols = np.flatnonzero(finite.any(0))
    cols = np.asarray(cols, dtype=np.int64)
    X = P[:, cols]
    X = (X.toarray() if sparse.issparse(X) else np.asarray(X)).astype(np.float64)
    if gmask is not None:
        X[:, ~gmask[cols]] = np.nan
    if smask is not None:
        X[~smask] = np.nan
    return X, cols


def _labels(values: Any) -> pd.Series:
    """Group labels as strings (missing values stay missing), equal numbers written alike.

    An integral float is written as an int: pandas holds an integer column with missing values as floats, and its
    ``1.0`` must be the same label as ``1`` of an integer column elsewhere (``"1.0"`` vs ``"1"`` otherwise).
    """

    def one(v: Any) -> Any:
        if pd.isna(v):
            return np.nan
        if isinstance(v, float | np.floating) and np.isfinite(v) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return pd.Series([one(v) for v in values], index=getattr(values, "index", None), dtype=object)


# A vector is constant when its standard deviation is below this fraction of its scale (float round-off).
_CONST_RTOL = 1e-6


def _is_constant(x: np.ndarray) -> np.ndarray:
    """Per column: True when the column is constant up to float round-off."""
    scale = np.maximum(np.abs(x).max(0), 1.0)
    return x.std(0) <= _CONST_RTOL * scale


def _colwise_pearson(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r per column; NaN where the truth is constant, 0 where only the prediction is."""
    p = pred - pred.mean(0)
    t = truth - truth.mean(0)
    const_t, const_p = _is_constant(truth), _is_constant(pred)
    denom = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / denom
    r = np.clip(r, -1.0, 1.0)
    r[const_p] = 0.0
    r[const_t] = np.nan
    return r
