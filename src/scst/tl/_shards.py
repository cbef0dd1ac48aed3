"""Batch prediction over many sections/slides as independent shards, fanned out with :mod:`dask.distributed`.

Each shard (one SpatialData zarr store, one section of the public her2st data, or one H&E image) is one task: the
worker loads the saved model, reads its shard lazily, runs :func:`scst.tl.predict_expression` and writes its own
small SpatialData zarr (table over the model's panel + the spot shapes). The coordinator then merges the shard
stores into one SpatialData zarr. Scheduling, retries and placement are dask's: any ``distributed.Client`` works
(a ``LocalCluster`` here, ``dask_jobqueue`` on an HPC queue, ``dask_kubernetes`` on a cluster).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._constants import INSTANCE_KEY, REGION_KEY, SECTION_KEY, SPATIAL_KEY, TABLE_KEY, UNS_KEY
from .._logging import logg
from .._utils import ZARR_MARKERS, _holds_other_files, _positive, _positive_int, _write_zarr_atomic

__all__ = ["predict_shards", "merge_shards", "ShardError"]

#: Table key of the prediction in a shard store and in the merged store.
SHARD_TABLE = "predicted"
#: ``obs`` column naming the shard each spot came from.
SHARD_KEY = "shard"
#: ``uns`` key of the per-shard report in the merged table.
SHARDS_UNS = "scst_shards"
HER2ST_PREFIX = "her2st:"
WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")  # scst.io.read_wsi; other TIFFs go through the zarr cache
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_OBSM_KEPT = (SPATIAL_KEY, "spatial_array")


class ShardError(RuntimeError):
    """One or more shards failed; ``failures`` maps each failed shard's name to its exception."""

    def __init__(self, message: str, failures: Mapping[str, BaseException]):
        super().__init__(message)
        self.failures = dict(failures)


def _shard_name(source: str) -> str:
    if source.startswith(HER2ST_PREFIX):
        return source[len(HER2ST_PREFIX) :]
    from ..io._read_st import _sample_from_file_name

    stem = Path(source).name.split(".")[0]  # an image shard's section name: 'patient 1.png' → 'patient_1'
    return _sample_from_file_name(stem) if stem else "shard"


def _check_source(name: str, source: str) -> None:
    """Cheap checks in the coordinator, so that a typo fails before any work is sent out."""
    if source.startswith(HER2ST_PREFIX):
        from ..datasets._her2st import HER2ST_ALL_SECTIONS

        if source[len(HER2ST_PREFIX) :] not in HER2ST_ALL_SECTIONS:
            raise ValueError(
                f"shards: shard {name!r} ({source!r}) names no her2st section; expected 'her2st:<S>' with <S> among "
                f"{list(HER2ST_ALL_SECTIONS)}."
            )
        return
    p = Path(source)
    if p.is_dir():
        return
    if p.is_file() and p.suffix.lower() in WSI_SUFFIXES + IMAGE_SUFFIXES:
        from ..io._read_st import _sample_from_file_name

        if _sample_from_file_name(name) != name:  # a name of a mapping: SpatialData refuses it in the worker
            raise ValueError(
                f"shards: shard {name!r} is an H&E image ({p.name}), whose shard name is its section and element "
                f"name: use letters, digits, '_', '-' and '.' only, e.g. {_sample_from_file_name(name)!r}."
            )
        return
    raise ValueError(
        f"shards: shard {name!r} ({source!r}) is neither an existing SpatialData zarr store, nor an H&E image file "
        f"({', '.join(IMAGE_SUFFIXES + WSI_SUFFIXES)}), nor 'her2st:<section>'."
    )


def _normalize_shards(shards: Any) -> dict[str, str]:
    if isinstance(shards, str | os.PathLike):
        shards = [shards]
    if isinstance(shards, Mapping):
        items = [(str(k), os.fspath(v)) for k, v in shards.items()]
    elif isinstance(shards, Sequence):
        items = [(_shard_name(os.fspath(s)), os.fspath(s)) for s in shards]
    else:
        raise TypeError(f"shards: expected a list of sources or a mapping name → source, got {type(shards).__name__}.")
    if not items:
        raise ValueError("shards: expected at least one shard, got none.")
    names = [n for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"shards: shard names {dup} occur more than once; pass a mapping name → source.")
    for name, source in items:
        _check_source(name, source)
    return dict(items)


def _model_class(model_dir: str | os.PathLike) -> type:
    """Class of the model saved in ``model_dir`` (``attr.json`` names it)."""
    import scst

    attr = Path(model_dir) / "attr.json"
    if not attr.is_file():
        raise FileNotFoundError(f"model_dir: {str(model_dir)!r} has no attr.json (not a model saved by `model.save`).")
    try:
        name = json.loads(attr.read_text()).get("model")
    except ValueError as e:
        raise ValueError(f"model_dir: {attr} is not valid JSON ({e}).") from e
    cls = getattr(scst.models, str(name), None)
    if cls is None:
        raise ValueError(f"model_dir: unknown model class {name!r} in {attr}.")
    return cls


def _read_shard(name: str, source: str, um_per_px: float | None) -> tuple[Any, float | None]:
    """SpatialData of one shard (images lazy) and the pixel size to use for an image without a table."""
    from spatialdata import SpatialData

    if source.startswith(HER2ST_PREFIX):
        from ..datasets import her2st

        return her2st(sections=source[len(HER2ST_PREFIX) :]), um_per_px
    p = Path(source)
    if p.is_dir():
        import spatialdata as sd

        return sd.read_zarr(p), um_per_px
    from ..io import cached_image, read_wsi

    if p.suffix.lower() in WSI_SUFFIXES:
        sdata = read_wsi(p, sample=name, um_per_px=um_per_px)
        um_per_px = sdata.attrs["scst"]["um_per_px"]
    else:
        sdata = SpatialData(images={f"{name}_image": cached_image(p, name)})
    if um_per_px is None:
        raise ValueError(f"um_per_px: shard {name!r} is an H&E image ({p.name}); its pixel size in µm is needed.")
    return sdata, um_per_px


def _dense(x: Any) -> np.ndarray:
    from scipy import sparse

    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


@dataclass(frozen=True)
class ShardPredictor:
    """One shard → one SpatialData zarr store; pickled to the dask workers (holds paths and settings only).

    Attributes
    ----------
    model_dir
        Folder written by ``model.save``; loaded inside the worker.
    predict_kwargs
        Passed to :func:`scst.tl.predict_expression` (``table``, ``batch_size``, ``tile_grid``, ``spacing_um``,
        ``min_tissue``).
    um_per_px
        Pixel size of image shards (one value or per shard name).
    accelerator
        Where the worker puts a network's weights (``BaseModel.load``); closed-form baselines run on the CPU.
    """

    model_dir: str
    predict_kwargs: dict[str, Any] = field(default_factory=dict)
    um_per_px: float | Mapping[str, float] | None = None
    accelerator: str = "cpu"

    def __call__(self, name: str, source: str, dest: str) -> dict[str, Any]:
        """Predict shard ``name`` read from ``source`` and write it to the zarr store ``dest``; return a report."""
        import socket

        from spatialdata import SpatialData
        from spatialdata.models import TableModel

        from ._predict import _accepts, predict_expression

        t0 = time.perf_counter()
        cls = _model_class(self.model_dir)
        kw_load = {"accelerator": self.accelerator} if _accepts(cls.load, "accelerator") else {}
        model = cls.load(self.model_dir, **kw_load)
        upp = self.um_per_px.get(name) if isinstance(self.um_per_px, Mapping) else self.um_per_px
        sdata, upp = _read_shard(name, source, upp)
        kw = dict(self.predict_kwargs)
        if upp is not None:  # used only for sections without geometry (pseudo-spots over an image)
            kw["um_per_px"] = upp
        key = "_scst_shard_prediction"
        # Without copy: a grid prediction (H&E-only) also adds its pseudo-spot shapes to this private sdata.
        predict_expression(sdata, model, layer="predicted", table_added=key, progress=False, **kw)
        pred = sdata.tables[key]
        regions = list(dict.fromkeys(pred.obs[REGION_KEY].astype(str)))
        import anndata as ad

        obs = pred.obs.copy()
        obs[SHARD_KEY] = name
        values = pred.layers["predicted"] if "predicted" in pred.layers else pred.X
        tab = ad.AnnData(
            X=_dense(values), obs=obs, var=pd.DataFrame(index=pred.var_names.copy()),
            obsm={k: np.asarray(pred.obsm[k]) for k in _OBSM_KEPT if k in pred.obsm},
            uns={UNS_KEY: {"sections": dict(pred.uns.get(UNS_KEY, {}).get("sections", {}))}},
        )  # fmt: skip
        tab.obs[REGION_KEY] = pd.Categorical(tab.obs[REGION_KEY].astype(str), categories=regions)
        tab = TableModel.parse(tab, region=regions, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
        shapes = {r: sdata.shapes[r] for r in regions if r in sdata.shapes}
        seconds = time.perf_counter() - t0
        report = {
            "shard": name,
            "source": source,
            "sections": list(dict.fromkeys(tab.obs[SECTION_KEY].astype(str))),
            "n_spots": int(tab.n_obs),
            "model": type(model).__name__,
            "predict_seconds": float(pred.uns["scst_predict"]["seconds"]),
            "seconds": float(seconds),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        tab.uns[SHARDS_UNS] = {"json": json.dumps([report])}
        _write_zarr_atomic(SpatialData(shapes=shapes, tables={SHARD_TABLE: tab}), dest)
        return report


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _shard_reports(tab: Any) -> list[dict[str, Any]]:
    return json.loads(str(tab.uns.get(SHARDS_UNS, {}).get("json", "[]")))


def merge_shards(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> pd.DataFrame:
    """Concatenate shard stores (or earlier merged stores) into one SpatialData zarr store.

    Parameters
    ----------
    paths
        SpatialData zarr stores written by :func:`predict_shards` (one shard each, or merged ones): a table
        ``"predicted"`` over the same gene panel and the shapes its ``region`` column names. Sections and
        regions (shapes element names) must not repeat across stores.
    out
        Output ``.zarr`` store, written to a temporary folder beside it and renamed (never half-written).
    overwrite
        Replace an existing ``out`` store (a folder; a file of that name is an error).

    Returns
    -------
    The per-shard report (one row per shard: ``shard``, ``source``, ``sections``, ``n_spots``, ``model``,
    ``predict_seconds``, ``seconds``, ``worker``), also stored in the merged table's ``uns["scst_shards"]``.
    """
    import anndata as ad
    import spatialdata as sd
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    paths = [Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    out = _check_out(out, overwrite, paths)
    if not paths:
        raise ValueError("paths: expected at least one shard store, got none.")
    tables, shapes, reports, geos, owner, region_owner = [], {}, [], {}, {}, {}
    panel = None
    for p in paths:
        try:
            part = sd.read_zarr(p)
        except Exception as e:  # noqa: BLE001  (any reader failure: name the store)
            raise ValueError(
                f"paths: cannot read {str(p)!r} as a SpatialData zarr store ({type(e).__name__}: {e})."
            ) from e
        if SHARD_TABLE not in part.tables:
            raise ValueError(f"paths: {str(p)!r} has no table {SHARD_TABLE!r} (not written by scst.tl.predict_shards).")
        tab = part.tables[SHARD_TABLE]
        lacking = [c for c in (SECTION_KEY, REGION_KEY) if c not in tab.obs]
        if lacking:
            raise ValueError(
                f"paths: table {SHARD_TABLE!r} of {str(p)!r} has no obs column(s) {lacking} "
                "(not written by scst.tl.predict_shards)."
            )
        if panel is None:
            panel = tab.var_names
        elif not tab.var_names.equals(panel):
            raise ValueError(f"paths: {str(p)!r} predicts another gene panel than {str(paths[0])!r} (other model?).")
        for s in dict.fromkeys(tab.obs[SECTION_KEY].astype(str)):
            if s in owner:
                raise ValueError(f"paths: section {s!r} is in both {str(owner[s])!r} and {str(p)!r}.")
            owner[s] = p
        for r in dict.fromkeys(tab.obs[REGION_KEY].astype(str)):
            if r in region_owner:  # two shapes elements of one name: one would silently take the other's place
                raise ValueError(
                    f"paths: region (shapes element) {r!r} is in both {str(region_owner[r])!r} and {str(p)!r}; "
                    "the spots of different sections need region names of their own (e.g. '<section>_spots')."
                )
            region_owner[r] = p
            if r in part.shapes:
                shapes[r] = part.shapes[r]
        geos.update(tab.uns.get(UNS_KEY, {}).get("sections", {}))
        reports += _shard_reports(tab)
        tables.append(tab)
    sections, regions = list(owner), list(dict.fromkeys(r for t in tables for r in t.obs[REGION_KEY].astype(str)))
    merged = ad.concat(tables, join="outer", merge="same")  # same panel; obs columns of every shard kept
    if not merged.obs_names.is_unique:
        warnings.warn("merge_shards: spot names repeat across shards; made unique with a numeric suffix.", stacklevel=2)
        merged.obs_names_make_unique()
    merged.obs[SECTION_KEY] = pd.Categorical(merged.obs[SECTION_KEY].astype(str), categories=sections)
    merged.obs[REGION_KEY] = pd.Categorical(merged.obs[REGION_KEY].astype(str), categories=regions)
    merged.obs[SHARD_KEY] = pd.Categorical(merged.obs[SHARD_KEY].astype(str))
    merged.uns = {UNS_KEY: {"sections": geos}, SHARDS_UNS: {"json": json.dumps(reports)}}
    merged = TableModel.parse(merged, region=regions, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    _write_zarr_atomic(SpatialData(shapes=shapes, tables={SHARD_TABLE: merged}), out)
    logg.info(f"merge_shards: {len(paths)} stores, {merged.n_obs} spots of {len(sections)} sections → {str(out)!r}")
    return pd.DataFrame.from_records(reports)


def _check_out(out: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """``out`` as a Path, checked before any work.

    A ``.zarr`` path that is none of ``inputs`` and, when it exists, a zarr store (or an empty folder) that
    ``overwrite`` allows to replace — never a folder of other files.
    """
    out = Path(out)
    if out.suffix != ".zarr":
        raise ValueError(f"out: expected a path ending in .zarr, got {str(out)!r}.")
    same = [str(p) for p in inputs if Path(p).exists() and out.exists() and Path(p).resolve() == out.resolve()]
    if same:  # replacing it would delete the images and tables being read
        raise ValueError(f"out: {str(out)!r} is also an input ({same[0]!r}); write the result to another path.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"out: {str(out)!r} exists; pass `overwrite=True` to replace it.")
    if out.exists() and not out.is_dir():  # the file was swapped aside and left as a hidden file beside out
        raise ValueError(f"out: {str(out)!r} is a file; `overwrite=True` replaces only a .zarr folder.")
    if _holds_other_files(out, ZARR_MARKERS):
        raise ValueError(
            f"out: {str(out)!r} is a folder but no zarr store; `overwrite=True` replaces only a zarr store or an empty "
            "folder, never other files."
        )
    return out


def predict_shards(
    shards: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    client: Any = None,
    n_workers: int = 2,
    table: str = TABLE_KEY,
    batch_size: int | None = None,
    tile_grid: bool = False,
    spacing_um: float | None = None,
    min_tissue: float = 0.5,
    um_per_px: float | Mapping[str, float] | None = None,
    accelerator: str = "cpu",
    precision: str = "32",
    overwrite: bool = False,
) -> pd.DataFrame:
    """Predict expression on many sections/slides as independent shards with dask, merged into one zarr store.

    Each shard is one task, ``client.submit``-ed to dask: the worker loads the model saved in ``model_dir``, reads
    its shard lazily, runs :func:`scst.tl.predict_expression` and writes a shard store; the shard stores are then
    merged with :func:`merge_shards` into ``out``. Any ``distributed.Client`` can be passed: a ``LocalCluster``,
    ``dask_jobqueue`` (SLURM, PBS, ...) or ``dask_kubernetes``; workers then need ``model_dir``, the shard
    sources and the folder of ``out`` on a shared file system. A shard that fails fails the call with a
    :class:`ShardError` naming every failed shard and its error (one line each; the exceptions are in
    ``ShardError.failures``), after the other shards finish; ``out`` is then
    not written (an existing ``out`` is left as it was).

    Parameters
    ----------
    shards
        Sources, one per shard, or a mapping shard name → source. A source is a SpatialData zarr store (all its
        sections; the spots of its table ``table``, or pseudo-spots over the tissue when it has no table),
        ``"her2st:<section>"`` (a section of :func:`scst.datasets.her2st`), or an H&E image file (JPEG, PNG,
        TIFF, SVS, NDPI, ...: pseudo-spots on a grid over the tissue, see ``um_per_px``). The shard name defaults
        to the file name without suffix (the section name for her2st; characters other than letters, digits,
        ``_``, ``-`` and ``.`` replaced by ``_``); image shards use it as section name (a name given for an image
        must consist of those characters).
        Sections must not repeat across shards. Relative paths (of sources, ``model_dir`` and ``out``) are taken
        from the working folder of this process and handed to the workers as absolute paths (the report's
        ``source``), so workers started in another folder read and write the same files.
    model_dir
        Folder written by ``model.save`` (or ``scst train``) of a trained expression model.
    out
        Output SpatialData ``.zarr`` store: table ``"predicted"`` (spots × the model's panel, float32 ``X`` in
        log1p(normalize_total 1e4) units; ``obs`` of the source spots plus ``obs["shard"]``; ``obsm["spatial"]``)
        and the spot (or pseudo-spot) shapes. Images stay in the sources.
    client
        A ``distributed.Client``; default a ``LocalCluster`` of ``n_workers`` processes with one thread each,
        closed afterwards.
    n_workers
        Worker processes of the default ``LocalCluster`` (ignored with ``client``).
    table, batch_size, tile_grid, spacing_um, min_tissue
        Passed to :func:`scst.tl.predict_expression`.
    um_per_px
        Pixel size in µm of image shards (one value, or a mapping shard name → value); whole-slide images that
        record it may omit it. Values, ``spacing_um`` and ``min_tissue`` are checked before any shard is sent out.
    accelerator
        Where each worker puts a network's weights: ``"cpu"`` (default), ``"gpu"``/``"auto"`` (the worker's GPU,
        e.g. one per worker with ``dask_cuda.LocalCUDACluster``; not tested here) or ``"mps"``.
    precision
        Autocast of the forward pass in each worker (``"32"``, ``"bf16"``, ``"16"``; see
        :func:`scst.tl.predict_expression`). DataLoader workers are not used inside dask workers (daemonic
        processes cannot start children): scale out with more dask workers instead.
    overwrite
        Replace an existing ``out`` store (a folder; a file of that name is an error).

    Returns
    -------
    Per-shard report, one row per shard in the order given: ``shard``, ``source``, ``sections``, ``n_spots``,
    ``model``, ``predict_seconds`` (:func:`~scst.tl.predict_expression` alone), ``seconds`` (the task up to
    the write of its shard store: model load, read, features, predict) and ``worker``; also stored as JSON in
    ``uns["scst_shards"]`` of the table.
    """
    from .._inference import check_inference_options

    check_inference_options(0, None, precision)  # checked here, not in every worker after the cluster started
    if batch_size is not None:
        _positive_int("batch_size", batch_size)
    # also checked here, not in every worker after the cluster started (nor ignored by the shards with spots)
    for name, upp in um_per_px.items() if isinstance(um_per_px, Mapping) else [(None, um_per_px)]:
        if upp is not None:
            _positive("um_per_px", upp, "pixel size in µm", "" if name is None else f" for shard {name!r}")
    if spacing_um is not None:
        _positive("spacing_um", spacing_um, "pseudo-spot spacing in µm")
    if (
        isinstance(min_tissue, bool)
        or not isinstance(min_tissue, int | float | np.integer | np.floating)
        or not 0.0 <= min_tissue <= 1.0
    ):
        raise ValueError(f"min_tissue: expected a fraction in [0, 1], got {min_tissue!r}.")
    sources = _normalize_shards(shards)
    out = _check_out(out, overwrite, list(sources.values()))
    _model_class(model_dir)  # checked here; loaded in each worker
    if client is None:  # True is no worker count (it started one worker)
        _positive_int("n_workers", n_workers)
    if client is not None and not all(callable(getattr(client, m, None)) for m in ("submit", "gather")):
        raise TypeError(f"client: expected a dask.distributed.Client, got {type(client).__name__}.")
    if isinstance(um_per_px, Mapping):
        unknown = [k for k in um_per_px if k not in sources]
        if unknown:
            raise ValueError(f"um_per_px: {unknown} are not shard names ({list(sources)}).")
    job = ShardPredictor(
        model_dir=str(Path(model_dir).resolve()),
        predict_kwargs={"table": table, "batch_size": batch_size, "tile_grid": tile_grid, "spacing_um": spacing_um,
                        "min_tissue": min_tissue, "precision": precision},
        um_per_px=dict(um_per_px) if isinstance(um_per_px, Mapping) else um_per_px,
        accelerator=accelerator,
    )  # fmt: skip
    # Absolute paths for the workers, as model_dir: they may run in another folder than this process (a scheduler
    # started elsewhere, dask-jobqueue), where a relative path names another file or none.
    paths = {n: s if s.startswith(HER2ST_PREFIX) else str(Path(s).resolve()) for n, s in sources.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.shards-", dir=out.parent.resolve()))
    own = client is None
    cluster = None
    try:
        if own:
            from distributed import Client, LocalCluster

            # worker logs off: a failed shard is reported once, by the ShardError naming it (the workers' own
            # "Compute Failed" tracebacks repeated it on stderr)
            cluster = LocalCluster(
                n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=":0",
                silence_logs=logging.CRITICAL,
            )  # fmt: skip
            client = Client(cluster)
        dests = {n: str(scratch / f"{i:05d}_{n}.zarr") for i, n in enumerate(sources)}
        run = uuid.uuid4().hex[:12]  # keys unique per call: dask would hand back an earlier call's result
        futures = {
            n: client.submit(job, n, src, dests[n], key=f"scst-shard-{n}-{run}", pure=False) for n, src in paths.items()
        }
        from distributed import wait

        with client.as_current():  # `wait` uses the current client; the given one need not be dask's default
            wait(list(futures.values()))
        failures = {n: f.exception() for n, f in futures.items() if f.status != "finished"}
        if failures:
            lines = [f"  shard {n!r} ({sources[n]}): {type(e).__name__}: {_first_line(e)}" for n, e in failures.items()]
            err = ShardError(
                f"{len(failures)} of {len(sources)} shards failed; {str(out)!r} was not written:\n" + "\n".join(lines),
                failures,
            )
            raise err from next(iter(failures.values()))
        reports = client.gather([futures[n] for n in sources])
        seen: dict[str, str] = {}
        for r in reports:
            for s in r["sections"]:
                if s in seen:
                    raise ValueError(f"shards: section {s!r} is in both shard {seen[s]!r} and shard {r['shard']!r}.")
                seen[s] = r["shard"]
        logg.info(
            f"predict_shards: {len(sources)} shards, {sum(r['n_spots'] for r in reports)} spots on "
            f"{len({r['worker'] for r in reports})} workers"
        )
        merge_shards([dests[n] for n in sources], out, overwrite=overwrite)
        return pd.DataFrame.from_records(reports)
    finally:
        if own:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)
