"""Small helpers shared by several modules."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from ._constants import TABLE_KEY, UNS_KEY


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


def _section_geometry(adata: AnnData, section: str) -> dict:
    """Per-section geometry written by :func:`scst.io.read_st` (``uns['scst']['sections'][section]``)."""
    try:
        return adata.uns[UNS_KEY]["sections"][section]
    except KeyError as e:
        raise KeyError(
            f"No geometry for section {section!r} in adata.uns[{UNS_KEY!r}]['sections']; "
            "read the data with scst.io.read_st or scst.datasets.* first."
        ) from e


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


@contextmanager
def _atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest`` that is renamed to ``dest`` on success.

    An existing ``dest`` is replaced in one atomic swap where the OS has one (Linux), so a process killed at
    any moment leaves either the old or the new directory at ``dest``; elsewhere the old one is first renamed
    aside (``.<name>.old-*``) and removed after the new one is in place.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
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


@contextmanager
def _atomic_file(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``dest`` that is renamed to ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
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
    rec = adata.uns.get("scst_embed", {}).get(key)
    return None if rec is None else _plain(dict(rec))
