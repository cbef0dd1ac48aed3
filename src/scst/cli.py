"""``scst`` console script for jobs run on a server without a notebook: train, predict, ligrec, shards, merge.

Thin wrappers over :mod:`scst.models`, :func:`scst.tl.predict_expression`, :func:`scst.tl.ligand_receptor`,
:func:`scst.tl.predict_shards` and :func:`scst.tl.merge_shards`.
Bad input ends with a one-line ``scst: error: ...`` on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Models the CLI can train: name → class name.
MODELS = {
    "mean": "MeanExpression",
    "ridge": "RidgeExpression",
    "hggep_head": "HGGEPHead",
    "mlp": "MLPExpression",
    "tcgn": "TCGN",
    "hggep": "HGGEP",
    "stnet": "STNet",
}
#: Fields of view (µm) of the hand-crafted features the heads train on (docs/benchmarks/expression.md).
HEAD_SCALES_UM = (80.0, 160.0, 320.0)


class CLIError(Exception):
    """Bad input: printed as one line, exit status 2."""


def _one_line(e: Exception) -> str:
    """The first line of an exception's message (a KeyError's own, not its quoted ``str``), else its type."""
    text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _load_data(data: str, sections: Sequence[str] | str | None) -> Any:
    """``her2st`` or a SpatialData zarr store.

    her2st: a subset of its sections, its default five (C2–C6) for None, or all 36 for ``"all"``.
    """
    import scst

    if data == "her2st":
        try:
            return scst.datasets.her2st(sections="all" if sections == "all" else (list(sections) if sections else None))
        except OSError as e:  # a section neither local nor downloadable (offline); the message says where to put it
            raise CLIError(f"--data her2st: {_one_line(e)}") from e
    path = Path(data)
    if not path.exists():
        raise CLIError(f"--data: {data!r} is neither 'her2st' nor an existing SpatialData zarr store.")
    import spatialdata as sd

    try:
        return sd.read_zarr(path)
    except Exception as e:  # noqa: BLE001  (any reader failure is bad input here)
        raise CLIError(f"--data: cannot read {data!r} as SpatialData zarr ({type(e).__name__}: {e}).") from e


def _table(sdata: Any, data: str) -> Any:
    """The table ``"table"`` of the data set ``--data``."""
    tables = getattr(sdata, "tables", {})
    if "table" not in tables:
        raise CLIError(f"--data: {data!r} has no table 'table' (tables: {sorted(tables)}).")
    return tables["table"]


def _check_sections(adata: Any, sections: Sequence[str] | None, command: str | None = None) -> None:
    """Every section of ``--sections`` is in ``obs["section"]`` of the table (which must then have that column).

    ``command`` (train, predict) needs the column whatever ``--sections`` is.
    """
    if command is not None and "section" not in adata.obs:
        raise CLIError(
            f"--data: scst {command} needs obs['section'] in the table (the section of every spot; "
            f"columns: {list(adata.obs.columns)[:20]})."
        )
    if not sections:
        return
    if "section" not in adata.obs:
        raise CLIError(
            f"--sections: the table has no obs['section'] column, so sections {list(sections)} cannot be selected; "
            "leave out --sections to use all spots."
        )
    present = set(adata.obs["section"].astype(str))
    missing = [s for s in sections if s not in present]
    if missing:
        raise CLIError(f"--sections: {missing} not in the data (sections: {sorted(present)}).")


def _model_class(model_dir: Path) -> Any:
    """The model class named in ``attr.json`` of ``--model-dir``, checked before any data are read."""
    import scst

    attr = model_dir / "attr.json"
    if not attr.is_file():
        raise CLIError(f"--model-dir: {str(model_dir)!r} has no attr.json (not a model saved by `scst train`).")
    try:
        attrs = json.loads(attr.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise CLIError(f"--model-dir: {str(attr)!r} is not valid JSON ({e}); not a model saved by `scst train`.") from e
    if not isinstance(attrs, dict):
        raise CLIError(
            f"--model-dir: {str(attr)!r} holds a JSON {type(attrs).__name__}, expected an object with a 'model' key "
            "(not a model saved by `scst train`)."
        )
    name = attrs.get("model")
    cls = getattr(scst.models, str(name), None)
    if not isinstance(cls, type) or not hasattr(cls, "load"):
        raise CLIError(f"--model-dir: unknown model class {name!r} in {attr}.")
    return cls


def _load_model(cls: Any, model_dir: Path) -> Any:
    """``cls.load(model_dir)`` without data; a broken model directory is a CLIError naming ``--model-dir``."""
    try:
        return cls.load(model_dir)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise CLIError(f"--model-dir: {_one_line(e)}") from e


def _image_only(path: str, um_per_px: float | None = None) -> Any:
    """SpatialData holding one H&E image (JPEG/PNG/TIFF, pyramidal or not, through the zarr cache; SVS/NDPI lazily)."""
    from spatialdata import SpatialData

    import scst

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--image: {path!r} is not a file.")
    from .io._read_st import _sample_from_file_name

    name = _sample_from_file_name(p.name.split(".")[0])  # 'patient 1.jpg' → 'patient_1' (a valid element name)
    if p.suffix.lower() in (".svs", ".ndpi", ".scn", ".bif"):  # pyramidal formats only read_wsi opens
        return scst.io.read_wsi(p, sample=name, um_per_px=um_per_px)
    try:
        return SpatialData(images={f"{name}_image": scst.io.cached_image(p, name)})
    except ValueError as e:
        raise CLIError(f"--image: {e}") from e


def _config(items: list[str]) -> dict:
    """``--config KEY=VALUE`` items → dict.

    Values are JSON (``6``, ``false``, ``null``, ``[1, 2]``) or Python's ``True``/``False``/``None``, else strings.
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--config: expected KEY=VALUE (e.g. n_programs=6), got {item!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = {"True": True, "False": False, "None": None}.get(value, value)
    return out


def _train(args: argparse.Namespace) -> None:
    import scst

    from .models._base import _check_model_dest

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out: {str(out)!r} exists; pass --overwrite to replace it.")
    try:  # before the data are read and the model trained: --overwrite never deletes a folder of other files
        _check_model_dest(out, True)
    except FileExistsError as e:
        raise CLIError(
            f"--out: {str(out)!r} exists and is not a saved model folder (no attr.json); --overwrite replaces only a "
            "model saved before or an empty folder, never other files. Choose another --out."
        ) from e
    cls = getattr(scst.models, MODELS[args.model])
    if args.max_epochs is not None:
        if args.model in ("mean", "ridge"):
            raise CLIError(f"--max-epochs: not used by --model {args.model} (closed form, no epochs).")
        if args.max_epochs < 1:
            raise CLIError(f"--max-epochs: expected a positive number of epochs, got {args.max_epochs}.")
    if args.n_genes < 1:
        raise CLIError(f"--n-genes: expected a positive number of genes, got {args.n_genes}.")
    try:  # unknown keys fail here, before the data are read and features computed
        config = {**cls.bench_config, **_config(args.config)}
        cls._merge_config(config)
    except ValueError as e:
        raise CLIError(f"--config: {e}") from e
    sdata = _load_data(args.data, "all" if args.all_sections else args.sections)
    adata = _table(sdata, args.data)
    _check_sections(adata, args.sections, "train")
    # The panel comes from the training sections only (a held-out section never chooses the genes).
    scst.pp.select_genes(adata, n_top=args.n_genes, sections=args.sections)
    if "highly_variable_scst" in adata.var and not adata.var["highly_variable_scst"].any():
        # said here, before the features are computed, and naming the option (the model would blame `genes`)
        raise CLIError(
            f"--n-genes: the gene panel is empty: none of the {args.n_genes} most variable genes of a training "
            "section is detected in at least half of the spots; pass a larger --n-genes (default 1000)."
        )

    def build(data):
        try:
            return cls(data, **config)
        except ValueError as e:
            raise CLIError(f"--config: {e}") from e

    if args.model == "ridge":
        n_train = len(args.sections) if args.sections else adata.obs["section"].nunique()
        if n_train < 2 and len(cls._merge_config(config)["alphas"]) > 1:  # said before the features are computed
            raise CLIError(
                "--sections: ridge chooses its penalty by a grouped CV over the training sections and needs >= 2; "
                "with one section pass a single penalty: --config 'alphas=[100.0]'."
            )
        scst.tl.embed_patches(sdata, "handcrafted", progress=False)
        cls.setup_sdata(sdata, embedding_key="X_handcrafted", sections=args.sections)
        model = build(sdata).train()
    elif args.model == "mean":
        cls.setup_sdata(sdata, sections=args.sections)
        model = build(sdata).train()
    elif args.model in ("hggep_head", "mlp"):
        scst.tl.embed_patches(sdata, "handcrafted", size_um=HEAD_SCALES_UM, out_px=112, key_added="X_hc_ms")
        scst.pp.scale_by_section(adata, "X_hc_ms")  # → X_hc_ms_scaled; remade the same way at predict time
        if args.model == "hggep_head":
            scst.pp.hypergraph(adata, use_rep="X_hc_ms_scaled", k=3)
        cls.setup_anndata(adata, use_rep="X_hc_ms_scaled", sections=args.sections)
        model = build(adata)
        model.train(**({"max_epochs": args.max_epochs} if args.max_epochs is not None else {}))
    else:
        cls.setup_sdata(sdata, sections=args.sections)
        model = build(sdata)
        model.train(**({"max_epochs": args.max_epochs} if args.max_epochs is not None else {}))
    model.save(out, overwrite=args.overwrite)
    print(f"scst train: {type(model).__name__} on {args.sections or 'all sections'}, {len(model.var_names)} panel "
          f"genes → {out}")  # fmt: skip


def _predict(args: argparse.Namespace) -> None:
    import scst

    model_dir = Path(args.model_dir)
    cls = _model_class(model_dir)
    name = cls.__name__
    # options of the other mode are errors, not silently ignored
    if args.image is not None:
        given = {"--data": args.data is not None, "--sections": bool(args.sections) or args.all_sections}
        unused = [opt for opt, present in given.items() if present]
        if unused:
            raise CLIError(f"{unused[0]}: not used with --image (an H&E image without spots); leave it out.")
    else:
        unused = [opt for opt, value in (("--um-per-px", args.um_per_px), ("--spacing-um", args.spacing_um))
                  if value is not None]  # fmt: skip
        if unused:
            raise CLIError(f"{unused[0]}: only used with --image (pseudo-spots on an H&E image); the spots of --data "
                           "have their own positions and pixel size.")  # fmt: skip
    out = Path(args.out)
    if out.suffix not in (".h5ad", ".zarr"):
        raise CLIError(f"--out: expected a path ending in .h5ad or .zarr, got {args.out!r}.")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out: {str(out)!r} exists; pass --overwrite to replace it.")
    if out.exists() and out.is_dir() != (out.suffix == ".zarr"):  # said before predicting, not when writing
        kind, ok = ("a folder", "a .h5ad file") if out.is_dir() else ("a file", "a .zarr folder")
        raise CLIError(f"--out: {str(out)!r} is {kind}; --overwrite replaces only {ok}. Choose another --out.")
    from ._utils import ZARR_MARKERS, _holds_other_files

    if _holds_other_files(out, ZARR_MARKERS):
        # a folder of other files named *.zarr would be deleted whole (as train refuses for non-model folders)
        raise CLIError(f"--out: {str(out)!r} is a folder but no zarr store; --overwrite replaces only a zarr store or "
                       "an empty folder, never other files. Choose another --out.")  # fmt: skip
    if args.num_workers < 0:  # said before the model and the data are read
        raise CLIError(f"--num-workers: expected an integer >= 0 (0: read patches in the main process), got "
                       f"{args.num_workers}.")  # fmt: skip
    opts = {"num_workers": args.num_workers, "precision": args.precision}
    if args.image is not None:  # an H&E image without spots: pseudo-spots on a grid over the tissue
        if args.um_per_px is None or not args.um_per_px > 0 or not math.isfinite(args.um_per_px):
            raise CLIError("--um-per-px: the pixel size of --image in µm is required (a positive, finite number).")
        if args.spacing_um is not None and not (args.spacing_um > 0 and math.isfinite(args.spacing_um)):
            raise CLIError(f"--spacing-um: expected a finite positive spacing in µm, got {args.spacing_um}.")
        model = _load_model(cls, model_dir)  # the model directory is checked before the image is read
        sdata = _image_only(args.image, args.um_per_px)
        scst.tl.predict_expression(sdata, model, um_per_px=args.um_per_px, spacing_um=args.spacing_um, **opts)
        table = sdata.tables["table_predicted"]
    else:
        data = "her2st" if args.data is None else args.data
        _load_model(cls, model_dir)  # the model directory is checked (loaded once) before the data set is read
        sdata = _load_data(data, "all" if args.all_sections else args.sections)
        _check_sections(_table(sdata, data), args.sections, "predict")
        model = cls.load(model_dir, sdata)
        scst.tl.predict_expression(sdata, model, sections=args.sections, **opts)  # embeddings recomputed as recorded
        table = sdata.tables["table"]
    from ._utils import _atomic_file, _write_zarr_atomic

    if out.suffix == ".h5ad":
        with _atomic_file(out) as tmp:
            table.write_h5ad(tmp)
    else:
        _write_zarr_atomic(sdata, out)
    where = f"{table.n_obs} pseudo-spots of {args.image}" if args.image else (args.sections or "all sections")
    print(f"scst predict: {name} → layers['predicted'] of {where} → {out}")


def _predict_shards(args: argparse.Namespace) -> None:
    from .tl._shards import ShardError, predict_shards

    # the options checked here, named as options, before any scheduler is contacted (the tool names its arguments)
    _model_class(Path(args.model_dir))
    if args.workers < 1:
        raise CLIError(f"--workers: expected a positive number of processes, got {args.workers}.")
    if args.um_per_px is not None and not (args.um_per_px > 0 and math.isfinite(args.um_per_px)):
        raise CLIError(f"--um-per-px: expected a finite positive pixel size in µm, got {args.um_per_px}.")
    if Path(args.out).suffix != ".zarr":
        raise CLIError(f"--out: expected a path ending in .zarr, got {args.out!r}.")
    _refuse_existing_out(args)
    client = None
    if args.scheduler:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout="30s")
        except (OSError, ValueError) as e:  # unreachable, or no valid address ("missing port number")
            raise CLIError(f"--scheduler: cannot connect to {args.scheduler!r} ({e}).") from e
    try:
        report = predict_shards(
            args.shards, args.model_dir, args.out, client=client, n_workers=args.workers, um_per_px=args.um_per_px,
            precision=args.precision, overwrite=args.overwrite,
        )  # fmt: skip
    except ShardError as e:  # not bad input: the shards ran; say which failed and why, exit status 1
        print(f"scst: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if client is not None:
            client.close()
    print(
        f"scst predict-shards: {len(report)} shards, {int(report['n_spots'].sum())} spots on "
        f"{report['worker'].nunique()} workers → {args.out}"
    )


def _refuse_existing_out(args: argparse.Namespace) -> None:
    """``--out`` exists without ``--overwrite``: said as the options (the tools name their keywords)."""
    if Path(args.out).exists() and not args.overwrite:
        raise CLIError(f"--out: {str(args.out)!r} exists; pass --overwrite to replace it.")


def _merge(args: argparse.Namespace) -> None:
    from .tl._shards import merge_shards

    missing = [p for p in args.stores if not Path(p).is_dir()]
    if missing:
        raise CLIError(f"stores: {missing} are not zarr stores written by `scst predict-shards`.")
    _refuse_existing_out(args)
    report = merge_shards(args.stores, args.out, overwrite=args.overwrite)
    print(f"scst merge: {len(args.stores)} stores ({len(report)} shards) → {args.out}")


def _ligrec(args: argparse.Namespace) -> None:
    import scst

    out = Path(args.out)
    if not out.name.endswith((".csv", ".csv.gz")):
        raise CLIError(f"--out: expected a path ending in .csv or .csv.gz, got {args.out!r}.")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out: {str(out)!r} exists; pass --overwrite to replace it.")
    if out.is_dir():  # said before the data are read, not when writing
        raise CLIError(f"--out: {str(out)!r} is a folder; --overwrite replaces only a file. Choose another --out.")
    if args.n_perms < 0:  # said before the data are read
        raise CLIError(f"--n-perms: expected an integer >= 0 (0: no p-values), got {args.n_perms}.")
    from .datasets._ligand_receptor import LR_RESOURCES, _liana_resource_names

    known = list(LR_RESOURCES)
    if args.pairs is not None and args.pairs not in known:  # also before the data are read
        liana = _liana_resource_names()
        if args.pairs not in liana:
            raise CLIError(
                f"--pairs: unknown ligand–receptor list {args.pairs!r}; expected one of {known}"
                + (f" or a liana resource {liana}." if liana else ".")
            )
    sdata = _load_data(args.data, "all" if args.all_sections else args.sections)
    adata = _table(sdata, args.data)
    _check_sections(adata, args.sections)
    if args.sections:
        adata = adata[adata.obs["section"].astype(str).isin(args.sections).to_numpy()].copy()
    if adata.n_obs == 0:
        raise CLIError(f"--data: the table of {args.data!r} has no spots.")
    # ST arrays: the 4-neighbour grid on the integer array indices, per section (see the README); the sections are
    # the first of obs["section"/"fov"/"library_id"/"sample"] (the column ligand_receptor permutes within too); a
    # table with none of them is one section: one graph over all its spots
    scst.pp.cell_graph(adata, grid=True, n_neighs=4, library_key="auto")  # squidpy's grid builder
    configs = {"bench": "bench_config", "fast": "fast_config", "pooled": "pooled_config", "paper": "_default_config"}
    gcng_config = dict(getattr(scst.models.GCNG, configs[args.gcng_config]))
    scst.tl.ligand_receptor(
        adata, method=args.method, n_perms=args.n_perms, pairs=args.pairs, seed=args.seed, gcng_config=gcng_config
    )
    from ._utils import _atomic_file

    with _atomic_file(out) as tmp:
        adata.uns["scst_ligrec"].to_csv(tmp, index=False, compression="gzip" if out.name.endswith(".gz") else None)
    n = len(adata.uns["scst_ligrec"])
    print(f"scst ligrec: {n} pairs × {args.method} on {adata.n_obs} spots → {out}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scst", description="Deep learning on spatial transcriptomics and histology.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an expression-from-histology model and save it")
    t.add_argument("--model", choices=sorted(MODELS), required=True, help="model to train")
    t.add_argument("--data", default="her2st", help="'her2st' or a SpatialData zarr store (default: her2st)")
    t.add_argument("--sections", nargs="+", help="training sections (default: every section of --data; for her2st "
                   "C2–C6, 'all' for its 36 sections, downloaded when not local)")  # fmt: skip
    t.add_argument("--n-genes", type=int, default=1000,
                   help="highly variable genes per training section (scst.pp.select_genes n_top); the panel is their "
                   "union detected in >= 50%% of spots, as in the benchmarks and the demo (default 1000)")  # fmt: skip
    t.add_argument("--max-epochs", type=int, help="epochs for the networks, at least 1 (default: the model's "
                   "bench_config; not for the closed-form mean and ridge)")  # fmt: skip
    t.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="model setting over its bench_config, value as JSON (e.g. n_programs=6, ridge_skip=false, "
                   'n_programs=null, n_programs=auto); repeatable')  # fmt: skip
    t.add_argument("--out", required=True, help="output model directory")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    t.set_defaults(func=_train)
    q = sub.add_parser("predict", help="predict expression with a saved model; write .h5ad or .zarr")
    q.add_argument("--model-dir", required=True, help="directory written by `scst train` / model.save")
    q.add_argument("--data", help="'her2st' or a SpatialData zarr store (default: her2st; not with --image)")
    q.add_argument("--image", help="an H&E image without spots (JPEG/PNG/TIFF/SVS/NDPI) instead of --data: "
                   "pseudo-spots on a grid over the tissue")  # fmt: skip
    q.add_argument("--um-per-px", type=float, help="pixel size of --image in µm (required with --image)")
    q.add_argument("--spacing-um", type=float, help="pseudo-spot spacing in µm, only with --image (default: the spot "
                   "grid step of the model's training sections, e.g. 200 µm for her2st; 200 µm, with a warning, only "
                   "for a model that records none: saved by an older scst, or trained on sections whose steps "
                   "differ)")  # fmt: skip
    q.add_argument("--sections", nargs="+", help="sections of --data to predict (default: every section of --data; "
                   "for her2st C2–C6, 'all' for its 36; not with --image)")  # fmt: skip
    q.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading patches (default: 0)")
    q.add_argument("--precision", default="32", choices=["32", "bf16", "16"], help="autocast (default: 32)")
    q.add_argument("--out", required=True, help="output: table as .h5ad, or the SpatialData as .zarr")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.set_defaults(func=_predict)
    f = sub.add_parser(
        "predict-shards",
        help="predict many sections/slides as independent shards with dask; merge into one SpatialData .zarr",
    )
    f.add_argument("--model-dir", required=True, help="directory written by `scst train` / model.save")
    f.add_argument("--shards", nargs="+", required=True, help="one source per shard: a SpatialData zarr store, "
                   "'her2st:<section>', or an H&E image (JPEG/PNG/TIFF/SVS/NDPI: a pseudo-spot grid)")  # fmt: skip
    f.add_argument("--workers", type=int, default=2, help="processes of the local dask cluster (default: 2)")
    f.add_argument("--scheduler", help="address of a running dask scheduler (e.g. started by dask-jobqueue) "
                   "instead of a local cluster")  # fmt: skip
    f.add_argument("--um-per-px", type=float, help="pixel size in µm of image shards")
    f.add_argument("--precision", default="32", choices=["32", "bf16", "16"], help="autocast (default: 32)")
    f.add_argument("--out", required=True, help="output SpatialData .zarr (table 'predicted' + spot shapes)")
    f.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    f.set_defaults(func=_predict_shards)
    m = sub.add_parser("merge", help="merge .zarr stores of `scst predict-shards` (e.g. one per job) into one")
    m.add_argument("stores", nargs="+", help="zarr stores written by `scst predict-shards`")
    m.add_argument("--out", required=True, help="output SpatialData .zarr")
    m.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    m.set_defaults(func=_merge)
    r = sub.add_parser("ligrec", help="score ligand-receptor pairs on the spot grid; write the LIANA-style table")
    r.add_argument("--data", default="her2st", help="'her2st' or a SpatialData zarr store (default: her2st)")
    r.add_argument("--sections", nargs="+", help="sections, from obs['section'] of the table (default: all spots; "
                   "graphs are built per obs['section'], else per 'fov'/'library_id'/'sample'; a table with none of "
                   "them is one graph over all spots)")  # fmt: skip
    r.add_argument(
        "--method",
        nargs="+",
        default=["spatial_pearson"],
        choices=["spatial_pearson", "bivariate", "pearson", "expression", "gcng"],
        help="scores",
    )
    r.add_argument("--pairs", default=None, help="resource name of scst.datasets.ligand_receptor (default: gcng)")
    r.add_argument(
        "--gcng-config",
        default="bench",
        choices=["bench", "fast", "pooled", "paper"],
        help="GCNG settings of the cross-fitting: GCNG.bench_config, .fast_config (4 epochs, for a quick look), "
        ".pooled_config or the paper's (default: bench)",
    )
    r.add_argument("--n-perms", type=int, default=100, help="permutations for p-values (0: none)")
    r.add_argument("--seed", type=int, default=0, help="random seed of the permutations")
    r.add_argument("--out", required=True, help="output table (.csv or .csv.gz)")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    r.set_defaults(func=_ligrec)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scst`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.all_sections = [str(s).lower() for s in getattr(args, "sections", None) or []] == ["all"]
    if args.all_sections:  # every section of --data (her2st: all 36 of the cohort), i.e. no selection
        args.sections = None
    try:
        with warnings.catch_warnings():
            # deprecation notices of dependencies (PyG's import, Lightning's internals), not of scst: kept off
            # stderr, where an error is one line (scst's own warnings still show)
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            args.func(args)
    except CLIError as e:
        print(f"scst: error: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, TypeError, OSError) as e:  # OSError: a missing file, an unwritable --out, ...
        print(f"scst: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
