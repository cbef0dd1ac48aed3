"""Predict spot expression from H&E with a trained model, and leave-one-section-out cross-validation."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._constants import INSTANCE_KEY, REGION_KEY, SECTION_KEY, SPATIAL_KEY, TABLE_KEY, UNS_KEY
from .._inference import check_inference_options
from .._logging import logg
from .._utils import _get_table, _positive_int, _store_prediction

__all__ = ["predict_expression", "cross_validate"]

UNITS = "log1p(normalize_total(counts, target_sum=1e4))"
PREDICT_KEY = "scst_predict"
#: var column of the per-fold panel written on each fold's copy of the table by :func:`cross_validate`.
FOLD_PANEL_KEY = "highly_variable_scst_fold"
#: Pseudo-spot spacing (µm, the ST grid) for a model that records no training grid step (``registry["grid_step_um"]``).
DEFAULT_SPACING_UM = 200.0
_DEFAULT_OPTS = {"num_workers": 0, "pin_memory": None, "precision": "32"}


def _check_model(model: Any) -> None:
    if not callable(getattr(model, "predict", None)) or not hasattr(model, "var_names"):
        raise TypeError(
            f"model: expected a trained scst expression model (HGGEP, TCGN, STNet, RidgeExpression, ...) with "
            f"`predict` and `var_names`, got {type(model).__name__}."
        )
    if hasattr(model, "is_trained") and not model.is_trained:
        raise ValueError(f"model: this {type(model).__name__} is not trained; call `model.train()` first.")


def _window_um(reg: Mapping[str, Any]) -> float:
    """Window edge (µm) of a pseudo-spot: the model's patch, that of its recorded embedding, else 80 µm.

    Image models record ``size_um``; a head on ``obsm`` features records how :func:`scst.tl.embed_patches` made them
    (``embedding["size_um"]``: one size, or the fields of view of a multi-scale embedding, whose smallest is the
    spot's own). The window screens the tissue and is the pseudo-spots' diameter; the embedding itself is recomputed
    at its recorded sizes whatever the window.
    """
    if reg.get("size_um") is not None:
        return float(reg["size_um"])
    emb = (reg.get("embedding") or {}).get("size_um")
    return float(np.min(emb)) if emb is not None else 80.0


def _grid_table(
    sdata: Any,
    model: Any,
    table: str,
    sections: Sequence[str] | None,
    spacing_um: float | None,
    min_tissue: float,
    um_per_px: float | Mapping[str, float] | None,
    inplace: bool,
):
    """Pseudo-spot table over the tissue of ``sections`` (``scst.pp.tile_grid``), var = the model's panel."""
    import anndata as ad
    from spatialdata.models import TableModel

    from ..pp._tissue import tile_grid

    has_table = table in sdata.tables
    if sections is None:
        if has_table:
            sections = list(dict.fromkeys(sdata.tables[table].obs[SECTION_KEY].astype(str)))
        else:
            sections = [k.removesuffix("_image") for k in sdata.images if k.endswith("_image")]
            if not sections:
                raise ValueError(
                    "sections: no table and no image named '<section>_image'; pass `sections` (and `um_per_px`)."
                )
    reg = getattr(model, "registry", None) or {}
    size_um = _window_um(reg)
    if spacing_um is None:
        spacing_um = reg.get("grid_step_um")
        if spacing_um is None:
            spacing_um = DEFAULT_SPACING_UM
            warnings.warn(
                f"spacing_um: {type(model).__name__} records no training grid step (saved before scst recorded it, or "
                f"its training sections' steps differ or are unrecorded); pseudo-spots are {DEFAULT_SPACING_UM:g} µm "
                "apart. Pass spacing_um to choose the spacing.",
                UserWarning,
                stacklevel=3,
            )
        spacing_um = float(spacing_um)
    tables, shapes = [], {}
    for s in sections:
        upp = um_per_px.get(s) if isinstance(um_per_px, Mapping) else um_per_px
        tab, shp = tile_grid(
            sdata, s, spacing_um=spacing_um, size_um=size_um, min_tissue=min_tissue, table_key=table,
            um_per_px=upp, inplace=False,
        )  # fmt: skip
        tables.append(tab)
        shapes[tab.uns[UNS_KEY]["sections"][s]["shapes_key"]] = shp
    geos = {s: t.uns[UNS_KEY]["sections"][s] for s, t in zip(sections, tables)}
    grid = ad.concat(tables, merge="same")
    grid.obs[SECTION_KEY] = pd.Categorical(grid.obs[SECTION_KEY].astype(str), categories=list(sections))
    grid.obs[REGION_KEY] = pd.Categorical(grid.obs[REGION_KEY].astype(str), categories=list(shapes))
    grid.uns[UNS_KEY] = {"sections": geos}
    if has_table:
        grid.uns[UNS_KEY]["gene_alignment"] = sdata.tables[table].uns.get(UNS_KEY, {}).get("gene_alignment")
    genes = list(model.var_names)
    out = ad.AnnData(
        X=np.zeros((grid.n_obs, len(genes)), dtype=np.float32),
        obs=grid.obs,
        var=pd.DataFrame(index=pd.Index(genes)),
        obsm=dict(grid.obsm),
        uns=grid.uns,
    )
    out = TableModel.parse(out, region=list(shapes), region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    if inplace:
        for k, v in shapes.items():
            sdata.shapes[k] = v
    return out, shapes


def predict_expression(
    sdata: Any,
    model: Any,
    *,
    layer: str = "predicted",
    table: str = TABLE_KEY,
    sections: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    tile_grid: bool = False,
    spacing_um: float | None = None,
    min_tissue: float = 0.5,
    um_per_px: float | Mapping[str, float] | None = None,
    table_added: str | None = None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    precision: str = "32",
    progress: bool = True,
    copy: bool = False,
) -> Any:
    """Predict spot expression from the H&E image with a trained model.

    Two modes:

    * **Spots of a table** (default): predict every spot of ``sections`` of ``sdata.tables[table]`` and write
      ``layers[layer]`` of that table as a sparse CSR float32 matrix that stores only the predicted block (spots of
      ``sections`` × the model's panel genes; memory ``n_spots × n_panel`` whatever ``n_vars`` is, no NaN), with
      boolean masks ``var[f"{layer}_mask"]`` (panel genes) and ``obs[f"{layer}_mask"]`` (predicted spots). Select
      the prediction with ``adata[adata.obs[f"{layer}_mask"], adata.var[f"{layer}_mask"]].layers[layer]``; it goes
      straight into ``sc.pp``/``sc.tl``. An existing layer of the same panel keeps its values for the other
      sections. A table lacking panel genes is an error that lists them; pass ``table_added`` to write a new
      table over the panel instead.
    * **H&E-only slide** (no table ``table``, or ``tile_grid=True``, or ``spacing_um`` given): pseudo-spots on a
      grid over the tissue (:func:`scst.pp.tile_grid`, ``spacing_um`` apart, windows of the model's patch size: an
      image model's ``size_um``, a head's embedding size — the smallest of a multi-scale one — else 80 µm),
      written as a new table ``table_added`` (default ``f"{table}_predicted"``) whose ``var`` is the model's panel,
      with the prediction in ``X`` and ``layers[layer]``; grid shapes ``f"{section}_grid"`` are added to ``sdata``.

    Predictions are in log1p(normalize_total(counts, 1e4)) units (as :func:`scst.tl.evaluate_expression` and
    ``scanpy.pp.normalize_total`` + ``log1p`` compute them), clipped at 0. Patches are read lazily from the image
    (zarr chunks) section by section, in batches, with a tqdm progress bar.

    Parameters
    ----------
    sdata
        SpatialData with the H&E images (``f"{section}_image"`` or as named in the table's
        ``uns["scst"]["sections"]``).
    model
        A trained scst expression model (:class:`scst.models.HGGEP`, :class:`scst.models.TCGN`, baselines), or a
        head on embeddings (:class:`scst.models.HGGEPHead`, :class:`scst.models.MLPExpression`): a table that lacks
        its ``obsm[use_rep]`` (e.g. the pseudo-spots of an H&E-only slide) gets the embedding recomputed as
        recorded at setup (:func:`scst.tl.embed_patches` arguments), and the hypergraph for HGGEPHead — written
        into the table when every section is predicted; for a subset (``sections``) only those sections' spots are
        featurised, on a copy that is not kept.
    layer
        Layer to write.
    table
        Table with the spots (and the section geometry for H&E-only grids).
    sections
        Sections to predict; default all sections of the table (H&E-only: all ``*_image`` elements).
    batch_size
        Spots per forward pass, a positive integer; default the model's (closed-form models have no batches).
    tile_grid
        Predict on pseudo-spots over the tissue instead of the table's spots.
    spacing_um
        Grid spacing of the pseudo-spots in µm (implies ``tile_grid``); default the spot grid step of the model's
        training sections (``model.registry["grid_step_um"]``, recorded at setup by every model that predicts on a
        grid). Only when the model records none (saved before it was recorded, or training sections whose steps
        differ or are unrecorded) 200 µm, with a warning.
    min_tissue
        Minimum tissue fraction of a pseudo-spot's window (:func:`scst.pp.tile_grid`).
    um_per_px
        Pixel size (one value or per section) when the table has no geometry for a section (H&E-only).
    table_added
        Write the prediction as a new table with this key (var = the model's panel) instead of a layer of
        ``table``; default ``f"{table}_predicted"`` for grids.
    num_workers, pin_memory, precision
        Inference options of the image models' ``predict`` and of the embedding recomputed for a head
        (:func:`scst.tl.embed_patches`): DataLoader workers reading patches while the model computes, pinned host
        batches (default: on CUDA), autocast ``"32"``/``"bf16"``/``"16"``. On a GPU e.g. ``num_workers=4,
        precision="bf16"``. A model that uses none of them (a closed-form model on stored features) warns when
        they are not the defaults.
    progress
        Show a progress bar.
    copy
        Return the AnnData with the prediction (a copy of ``table``, or the new table) instead of writing into
        ``sdata``.

    Returns
    -------
    ``None``, or with ``copy=True`` the AnnData. Writes ``layers[layer]`` (float32, log1p units; sparse with the
    two masks on a table's spots, dense over the panel in a new table) and
    ``uns["scst_predict"]`` (``model``, ``layer``, ``units``, ``n_genes``, ``sections``, ``seconds``,
    ``spots_per_second``) into the table written. That record describes this call; after calls on other sections
    of the same layer, ``obs[f"{layer}_mask"]`` marks every spot the layer holds.
    """
    _check_model(model)
    if not hasattr(sdata, "tables") or not hasattr(sdata, "images"):
        raise TypeError(f"sdata: expected a SpatialData object with images, got {type(sdata).__name__}.")
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer: expected a non-empty string, got {layer!r}.")
    if sections is not None:  # names as the table's str(section) values (ints, numpy strings, one name)
        sections = [str(s) for s in ([sections] if np.isscalar(sections) else sections)]
    grid = tile_grid or spacing_um is not None or table not in sdata.tables
    if table_added == table and table in sdata.tables:  # grids too: the spot table would be replaced
        raise ValueError(
            f"table_added: {table_added!r} is the table predicted from; leave it None to write "
            f"layers[{layer!r}] of that table (pseudo-spots: a new table {table + '_predicted'!r}), or give a new key "
            "for a new table."
        )
    genes = list(model.var_names)
    check_inference_options(num_workers, pin_memory, precision)  # before any work
    if batch_size is not None:  # also for models without batches, which drop it
        _positive_int("batch_size", batch_size)
    opts = {"num_workers": num_workers, "pin_memory": pin_memory, "precision": precision}
    t0 = time.perf_counter()
    if grid:
        key = table_added or f"{table}_predicted"
        new, _ = _grid_table(sdata, model, table, sections, spacing_um, min_tissue, um_per_px, inplace=not copy)
        # The model reads patches through a table of sdata: predict on a light view holding the new table.
        view = _with_table(sdata, key, new)
        embedded = _prepare_features(model, view, key, progress, opts)
        pred = _predict(model, view, None, key, batch_size, progress, opts, embedded)
        new.X = pred
        new.layers[layer] = pred.copy()
        out, sections = new, list(dict.fromkeys(new.obs[SECTION_KEY].astype(str)))
    else:
        adata = sdata.tables[table]
        if SECTION_KEY in adata.obs and adata.obs[SECTION_KEY].isna().any():
            raise ValueError(
                f"table {table!r}: obs[{SECTION_KEY!r}] is missing for {int(adata.obs[SECTION_KEY].isna().sum())} "
                "spots; every spot needs its section."
            )
        if copy:  # featurising (a head's embedding, hypergraph) must not write into the caller's table either
            adata = adata.copy()
            sdata = _with_table(sdata, table, adata)
        if sections is not None:  # before any featurising writes into the table
            have = list(dict.fromkeys(adata.obs[SECTION_KEY].astype(str))) if SECTION_KEY in adata.obs else []
            unknown = [s for s in sections if s not in have]
            if unknown:
                raise ValueError(f"sections: {unknown} have no spots in table {table!r} (sections with spots: {have}).")
        if table_added is not None and (REGION_KEY not in adata.obs or INSTANCE_KEY not in adata.obs):
            raise ValueError(
                f"table_added: a new table needs obs[{REGION_KEY!r}] and obs[{INSTANCE_KEY!r}] in table {table!r} "
                "(as scst.io.read_st writes them) to link its spots to their shapes; leave table_added None to "
                "write a layer of the table instead."
            )
        if table_added is None:  # check the panel before the (long) prediction, not after it
            missing = [g for g in genes if g not in adata.var_names]
            if missing:
                raise ValueError(
                    f"Table {table!r} lacks {len(missing)} of the model's {len(genes)} panel genes: {missing[:50]}"
                    + (" ..." if len(missing) > 50 else "")
                    + "; pass `table_added=...` to write the prediction as a new table over the model's panel."
                )
        sec_col = adata.obs[SECTION_KEY].astype(str).to_numpy()
        rows = np.flatnonzero(np.isin(sec_col, sections)) if sections is not None else np.arange(adata.n_obs)
        src = sdata
        by = ((getattr(model, "registry", None) or {}).get("embedding") or {}).get("scale_by_section")
        if len(rows) < adata.n_obs and _lacks_features(model, adata) and by in (None, SECTION_KEY):
            # a head's embedding (and hypergraph) is remade for the predicted sections only, on a copy of their spots
            # (not kept in the table): other sections are neither featurised nor need their images. Features scaled
            # by another column (e.g. a patient's sections together) are remade on the whole table instead: a subset
            # would standardise a group on some of its sections only.
            src = _with_table(sdata, table, adata[rows].copy())
        embedded = _prepare_features(model, src, table, progress, opts, sections)
        pred = _predict(model, src, sections, table, batch_size, progress, opts, embedded)
        sections = list(dict.fromkeys(sec_col)) if sections is None else list(sections)
        if np.shape(pred) != (len(rows), len(genes)):
            raise ValueError(
                f"model: {type(model).__name__}.predict returned shape {np.shape(pred)}; expected (spots of sections, "
                f"panel genes) = {(len(rows), len(genes))}."
            )
        if table_added is not None:
            import anndata as ad
            from spatialdata.models import TableModel

            sub = adata[rows]
            out = ad.AnnData(
                X=pred, obs=sub.obs.copy(), var=pd.DataFrame(index=pd.Index(genes)), obsm={k: np.asarray(v).copy()
                for k, v in sub.obsm.items()}, uns={UNS_KEY: dict(adata.uns.get(UNS_KEY, {}))},
            )  # fmt: skip
            out.layers[layer] = pred.copy()
            regions = list(dict.fromkeys(out.obs[REGION_KEY].astype(str)))
            out.obs[REGION_KEY] = pd.Categorical(out.obs[REGION_KEY].astype(str), categories=regions)
            out = TableModel.parse(out, region=regions, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
            key = table_added
        else:
            out = adata  # with copy=True already a copy
            _store_prediction(out, layer, rows, adata.var_names.get_indexer(genes), pred)
            key = table
    seconds = time.perf_counter() - t0
    out.uns[PREDICT_KEY] = {
        "model": type(model).__name__,
        "layer": layer,
        "units": UNITS,
        "n_genes": len(genes),
        "sections": list(sections),
        "seconds": float(seconds),
        "spots_per_second": float(len(pred) / seconds) if seconds > 0 else float("nan"),
    }
    logg.info(
        f"predict_expression: {len(pred)} spots × {len(genes)} genes with {type(model).__name__} in {seconds:.1f} s "
        f"→ {'new table ' + repr(key) if key != table else f'layers[{layer!r}] of table {key!r}'}"
    )
    if copy:
        return out
    if key != table or grid:
        old = sdata.tables[key] if key in sdata.tables else None
        if old is not None and SECTION_KEY in old.obs and SECTION_KEY in out.obs:
            out = _keep_other_sections(old, out, key, layer)
        sdata.tables[key] = out
    return None


def _keep_other_sections(old: Any, out: Any, key: str, layer: str) -> Any:
    """``out`` with the rows of the sections that ``old`` (the table ``key`` it replaces) holds and ``out`` does not.

    Predicting section by section into one new table keeps each section's predictions, as a layer does.
    """
    now = set(out.obs[SECTION_KEY].astype(str))
    keep = ~old.obs[SECTION_KEY].astype(str).isin(now).to_numpy()
    if not keep.any():
        return out
    lost = sorted(set(old.obs[SECTION_KEY][keep].astype(str)))
    if list(old.var_names) != list(out.var_names) or layer not in old.layers:
        warnings.warn(
            f"table_added: table {key!r} held the predictions of section(s) {lost} for another panel or layer; it is "
            "replaced. Pass another `table_added` to keep both.",
            UserWarning,
            stacklevel=3,
        )
        return out
    import anndata as ad
    from spatialdata.models import TableModel

    merged = ad.concat([old[keep], out], join="outer", merge="first")
    merged.uns = dict(out.uns)
    merged.uns.pop("spatialdata_attrs", None)  # parsed again below for the union of the regions
    if PREDICT_KEY in merged.uns:  # the record names every section the table holds
        merged.uns[PREDICT_KEY] = {**merged.uns[PREDICT_KEY], "sections": [*lost, *merged.uns[PREDICT_KEY]["sections"]]}
    geo_old, geo_new = (t.uns.get(UNS_KEY, {}).get("sections", {}) for t in (old, out))
    if geo_old:  # the earlier sections' geometry (pseudo-spot grids) stays with their rows
        merged.uns[UNS_KEY] = {**merged.uns.get(UNS_KEY, {}), "sections": {**geo_old, **geo_new}}
    regions = list(dict.fromkeys(merged.obs[REGION_KEY].astype(str)))
    merged.obs[REGION_KEY] = pd.Categorical(merged.obs[REGION_KEY].astype(str), categories=regions)
    logg.info(f"predict_expression: table {key!r} keeps the earlier predictions of section(s) {lost}")
    return TableModel.parse(merged, region=regions, region_key=REGION_KEY, instance_key=INSTANCE_KEY)


def _predict(
    model: Any,
    data: Any,
    sections: Any,
    table: str,
    batch_size: int | None,
    progress: bool,
    opts: Mapping[str, Any],
    embedded: bool,
) -> np.ndarray:
    kw = {k: v for k, v in (("batch_size", batch_size), ("progress", progress)) if _accepts(model.predict, k)}
    taken = {k: v for k, v in opts.items() if _accepts(model.predict, k)}
    unused = {k: v for k, v in opts.items() if k not in taken and v != _DEFAULT_OPTS[k]}
    if unused and not embedded:
        warnings.warn(
            f"{', '.join(f'{k}={v!r}' for k, v in unused.items())}: {type(model).__name__}.predict reads stored "
            "features (no images, no network), so these inference options have no effect.",
            stacklevel=3,
        )
    kw.update(taken)
    return _clip(model.predict(data, sections, table=table, **kw))


def _clip(pred: Any) -> np.ndarray:
    """Expression is non-negative: linear models (ridge) can extrapolate below 0; every prediction is clipped so."""
    return np.clip(np.asarray(pred, dtype=np.float32), 0.0, None)


def _prepare_features(
    model: Any, sdata: Any, table: str, progress: bool, opts: Mapping[str, Any], sections: Sequence[str] | None = None
) -> bool:
    """For a head on ``obsm`` embeddings: compute the embedding (and hypergraph) of a table that lacks it.

    Returns whether an embedding was computed (with the inference options ``opts``).

    The model's registry records how its embedding was made (:func:`scst.tl.embed_patches` arguments, and
    :func:`scst.pp.scale_by_section` when the features were standardised per section) and, for
    :class:`scst.models.HGGEPHead`, the hypergraph parameters; they are applied to the new table (pseudo-spots of
    an H&E-only slide, or another slide's spots) so that it is featurised exactly as the training spots were. A table
    that already has the embedding is used as it is, with a warning when the model expects per-section-scaled
    features and those of a predicted section (``sections``; None: all) are not centred.
    """
    reg = getattr(model, "registry", None) or {}
    key, hk = _feature_keys(reg)
    if key is None:
        return False
    adata = sdata.tables[table]
    emb = reg.get("embedding") or {}
    by = emb.get("scale_by_section")
    by = None if by is None else (by if by in adata.obs else SECTION_KEY)
    if key in adata.obsm:
        if by is not None:
            _warn_unscaled(adata, key, by, sections)
        if hk is not None and hk not in adata.obsp:  # the user's embedding is there, the head's hypergraph is not
            _build_hypergraph(adata, reg, key, hk, table)
        return False  # nothing embedded here: the inference options were not used
    weights = str(emb.get("weights", ""))
    if not emb or weights in ("given module", "random init") or weights.startswith("copied from"):
        why = (
            "the training embedding came from a randomly initialised encoder, which cannot be rebuilt with the same "
            "weights"
            if weights == "random init"
            else "the embedding was not made by scst.tl.embed_patches from a named encoder"
        )
        raise ValueError(
            f"model: {type(model).__name__} reads obsm[{key!r}], which table {table!r} lacks, and it cannot be "
            f"recomputed ({why}). Compute obsm[{key!r}] for this table with the encoder that made the training "
            "embedding, then predict."
        )
    from ._embed import embed_patches

    handcrafted = emb["encoder"] == "handcrafted"
    weights = None if handcrafted else emb.get("weights")
    embed_patches(
        sdata, emb["encoder"], weights=weights, encoder_kwargs=emb.get("encoder_kwargs"), size_um=emb["size_um"],
        out_px=int(emb["out_px"]), key_added=key, table=table, device=getattr(model, "device", "cpu"),
        normalize=None if emb.get("normalize") in (None, "none") else emb["normalize"], progress=progress, **opts,
    )  # fmt: skip
    if by is not None:  # trained on features standardised per section: the same here
        from ..pp._scale import scale_by_section

        scale_by_section(adata, key, library_key=by, key_added=key)
    if hk is not None and hk not in adata.obsp:
        _build_hypergraph(adata, reg, key, hk, table)
    return True


def _build_hypergraph(adata: Any, reg: Mapping[str, Any], key: str, hk: str, table: str) -> None:
    """HGGEPHead's hypergraph for ``adata`` with the training's recorded parameters, written under ``hk``."""
    from ..pp._hypergraph import hypergraph

    params = dict(reg.get("hypergraph_params") or {})
    rep = params.pop("use_rep", None) or key
    params.pop("library_key", None)
    params["spatial_key"] = reg.get("spatial_key", params.get("spatial_key", SPATIAL_KEY))
    if rep != key and rep not in adata.obsm:  # the training graph came from another representation
        warnings.warn(
            f"predict_expression: the model's hypergraph was built from obsm[{rep!r}], which table {table!r} "
            f"lacks; building it from obsm[{key!r}] instead (compute obsm[{rep!r}] and scst.pp.hypergraph for the "
            "exact graph).",
            UserWarning,
            stacklevel=4,
        )
        rep = key
    base = hk.removesuffix("_incidence")
    hypergraph(adata, use_rep=rep, library_key=SECTION_KEY, key_added=base, **params)
    if f"{base}_incidence" != hk:  # a key without the suffix: the graph goes where the model reads it
        adata.obsp[hk] = adata.obsp.pop(f"{base}_incidence")


def _feature_keys(reg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(obsm key, obsp hypergraph key)`` that a model on stored features reads, None for what it does not read.

    Heads read ``use_rep``, RidgeExpression ``embedding_key``; HGGEPHead also its hypergraph.
    """
    return reg.get("use_rep", reg.get("embedding_key")), reg.get("hypergraph_key")


def _lacks_features(model: Any, adata: Any) -> bool:
    """Whether ``model`` reads an ``obsm`` embedding (or a hypergraph) that ``adata`` lacks."""
    key, hk = _feature_keys(getattr(model, "registry", None) or {})
    return key is not None and (key not in adata.obsm or (hk is not None and hk not in adata.obsp))


def _warn_unscaled(adata: Any, key: str, by: str, sections: Sequence[str] | None) -> None:
    """Warn when per-section-scaled features are expected but ``obsm[key]`` is not centred in a predicted section.

    A user who computes a new slide's embedding under the model's key but skips :func:`scst.pp.scale_by_section`
    would otherwise get predictions from features on another scale, without any message.
    """
    sec_col = adata.obs[by].astype(str).to_numpy()
    if sections is not None:  # the scaling groups (``by``) the predicted sections' spots belong to
        predicted = np.isin(adata.obs[SECTION_KEY].astype(str).to_numpy(), list(sections))
        sections = list(dict.fromkeys(sec_col[predicted]))
    x = np.asarray(adata.obsm[key])
    off = []
    for s in dict.fromkeys(sec_col) if sections is None else sections:
        rows = sec_col == s
        if rows.sum() > 1 and np.abs(x[rows].mean(0)).max() > 1e-3:
            off.append(s)
    if off:
        warnings.warn(
            f"model: trained on obsm[{key!r}] standardised within each section (scst.pp.scale_by_section), but in "
            f"section(s) {off[:5]} these features are not centred; predictions from them are off scale. Run "
            f"`scst.pp.scale_by_section(adata, <raw key>, key_added={key!r})` first, or delete obsm[{key!r}] so that "
            "predict_expression remakes it.",
            UserWarning,
            stacklevel=4,
        )


def _with_table(sdata: Any, key: str, adata: Any) -> Any:
    import types

    tables = dict(sdata.tables)
    tables[key] = adata
    return types.SimpleNamespace(tables=tables, images=sdata.images)


# --------------------------------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------------------------------
def _fold_sdata(sdata: Any, table: str) -> Any:
    """SpatialData sharing ``sdata``'s images and shapes, with a copy of the table (setup writes only there)."""
    from spatialdata import SpatialData

    return SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={table: sdata.tables[table].copy()})


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


def cross_validate(
    model_cls: type,
    sdata: Any,
    *,
    by: str = SECTION_KEY,
    config: Mapping[str, Any] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    setup_kwargs: Mapping[str, Any] | None = None,
    genes: str | Sequence[str] | None = None,
    select_genes_kwargs: Mapping[str, Any] | None = None,
    validation: str | None = "auto",
    table: str = TABLE_KEY,
    layer: str | None = None,
    sections: Sequence[str] | None = None,
    test_sections: str | Sequence[str] | None = None,
    metrics: Sequence[str] = ("pearson", "spearman", "mse"),
    return_predictions: bool = False,
    progress: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Leave-one-section-out cross-validation of an expression model.

    For each fold one section is the test section; the model is set up on the other sections only
    (``model_cls.setup_sdata(..., sections=train)``), trained with validation drawn from those training sections
    (never the test section), and scored on the test section with :func:`scst.tl.evaluate_expression`.

    Parameters
    ----------
    model_cls
        An scst model class with ``setup_sdata(sdata, table=, layer=, genes=, sections=, ...)``, ``train`` and
        ``predict`` (:class:`~scst.models.HGGEP`, :class:`~scst.models.TCGN` and the baselines
        ``STNet``/``RidgeExpression``/``MeanExpression``).
    sdata
        SpatialData with raw counts, sections and images. It is not modified: each fold works on a copy of the
        table (images are shared, not copied).
    by
        ``obs`` column defining the folds (only ``"section"`` is supported: models and patches are per section).
    config
        Model configuration (e.g. ``HGGEP.bench_config``).
    train_kwargs
        Passed to ``model.train`` (e.g. ``max_epochs``, ``enable_progress_bar``). Closed-form models
        (``RidgeExpression``, ``MeanExpression``) take none: given for them, they are ignored with a warning.
    setup_kwargs
        Passed to ``setup_sdata`` (e.g. ``size_um``, ``patch_px``, ``encoder``).
    genes
        ``None`` (default): each fold chooses its own panel with :func:`scst.pp.select_genes` on its **training
        sections only** (``select_genes_kwargs``; the held-out section never influences the panel). A boolean var
        column or a list of genes: that fixed panel for every fold (make sure it was chosen without the test
        sections).
    select_genes_kwargs
        Arguments of :func:`scst.pp.select_genes` for the per-fold panel (default ``n_top=1000``,
        ``min_fraction=0.5``).
    validation
        ``"auto"``: the model's default, one training section held out (drawn with the seed); a section name
        (used in folds where it is a training section, else the default); ``None``: no validation. Closed-form
        models use none: a section name given for them is ignored with a warning.
    table, layer
        Table key; layer with raw counts (default ``X``).
    sections
        Sections to use as folds (default all sections of the table); other sections are ignored entirely.
    test_sections
        Run only the folds whose test section is in this list, or this one section (default: every section of
        ``sections``); e.g. to give each fold its own encoder (an embedding pretrained without the test section).
    metrics
        Passed to :func:`scst.tl.evaluate_expression`.
    return_predictions
        Also return ``{test_section: predictions (n_spots, n_genes)}``.
    progress
        Show progress bars.

    Returns
    -------
    Tidy :class:`pandas.DataFrame` with columns ``fold`` (int), ``section`` (test section), ``gene``, ``metric``,
    ``value``; ``attrs`` holds per-fold ``train_sections``, ``validation`` (the list of sections the model held out
    for early stopping; None for closed-form models), ``train_seconds``,
    ``predict_seconds``, ``n_spots``, ``n_genes``, ``epochs``, ``n_programs`` (expression programmes the model
    chose, None without) and ``genes``
    (the fold's panel: the columns of its predictions). With ``return_predictions``, ``(table, predictions)``.
    """
    import anndata as ad

    from ._expression import _METRICS, evaluate_expression

    if by != SECTION_KEY:
        raise ValueError(f"by: only {SECTION_KEY!r} is supported (image models work per section), got {by!r}.")
    if not isinstance(model_cls, type) or not hasattr(model_cls, "setup_sdata"):
        raise TypeError(f"model_cls: expected an scst model class with `setup_sdata`, got {model_cls!r}.")
    if not hasattr(sdata, "tables") or not hasattr(sdata, "images"):  # each fold is a SpatialData sharing its images
        raise TypeError(
            f"sdata: expected a SpatialData, got {type(sdata).__name__}; for models on obsm features alone (e.g. "
            "RidgeExpression) wrap an AnnData as `spatialdata.SpatialData(tables={'table': adata})`."
        )
    adata = _get_table(sdata, table)
    present = list(dict.fromkeys(adata.obs[SECTION_KEY].astype(str)))
    # one name as a str (not its characters), numbers as the str(section) values
    sections = present if sections is None else [str(s) for s in ([sections] if np.isscalar(sections) else sections)]
    bad = [s for s in sections if s not in present]
    if bad:
        raise ValueError(f"sections: {bad} have no spots (sections: {present}).")
    if len(sections) < 2:
        raise ValueError(f"sections: leave-one-section-out needs at least 2 sections, got {sections}.")
    if validation not in ("auto", None) and not isinstance(validation, str):
        raise ValueError(f"validation: expected 'auto', None or a section name, got {validation!r}.")
    if validation not in ("auto", None) and validation not in sections:
        raise ValueError(f"validation: {validation!r} is not among the sections {sections}.")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)  # checked now, not after the first fold
    if not metrics or any(m not in _METRICS for m in metrics):
        raise ValueError(f"metrics: expected a non-empty subset of {_METRICS}, got {metrics}.")
    if genes is not None and select_genes_kwargs:
        warnings.warn(
            "cross_validate: select_genes_kwargs are ignored when genes= is given (the panel is not chosen per fold).",
            UserWarning,
            stacklevel=2,
        )
    if not _accepts(model_cls.train, "validation"):  # closed-form baselines: train() takes no arguments
        unused = ([f"train_kwargs {sorted(train_kwargs)}"] if train_kwargs else []) + (
            [f"validation={validation!r}"] if validation not in ("auto", None) else []
        )
        if unused:
            warnings.warn(
                f"cross_validate: {model_cls.__name__} is fit in closed form (no epochs, no validation); "
                f"{' and '.join(unused)} are ignored.",
                UserWarning,
                stacklevel=2,
            )
    frames, preds, fold_info = [], {}, []
    train_kwargs = dict(train_kwargs or {})
    train_kwargs.setdefault("enable_progress_bar", progress)
    if test_sections is not None and np.isscalar(test_sections):
        test_sections = [test_sections]
    tests = sections if test_sections is None else [str(s) for s in test_sections]
    bad = [s for s in tests if s not in sections]
    if bad or not tests:
        raise ValueError(f"test_sections: {bad or tests} are not among the sections {sections}.")
    for fold, test in enumerate(sections):
        if test not in tests:
            continue
        train = [s for s in sections if s != test]
        fsd = _fold_sdata(sdata, table)
        fold_genes = genes
        if genes is None:
            from ..pp._genes import select_genes

            kw = {"n_top": 1000, "min_fraction": 0.5, **dict(select_genes_kwargs or {})}
            select_genes(fsd.tables[table], sections=train, layer=layer, key_added=FOLD_PANEL_KEY, **kw)
            fold_genes = FOLD_PANEL_KEY
        model_cls.setup_sdata(
            fsd, table=table, layer=layer, genes=fold_genes, sections=train, **dict(setup_kwargs or {})
        )
        model = model_cls(fsd, **dict(config or {}))
        if validation == "auto":
            val = None
        elif validation is None:
            val = False
        else:
            val = validation if validation in train else None
        t0 = time.perf_counter()
        if _accepts(model.train, "validation"):
            model.train(validation=val, **train_kwargs)
        else:  # closed-form baselines: no epochs, no validation
            model.train()
        t1 = time.perf_counter()
        kw = {"progress": progress} if _accepts(model.predict, "progress") else {}
        pred = _clip(model.predict(fsd, [test], table=table, **kw))  # as predict_expression stores it
        t2 = time.perf_counter()
        tab = fsd.tables[table]
        rows = np.flatnonzero(tab.obs[SECTION_KEY].astype(str).to_numpy() == test)
        panel = list(model.var_names)
        X = tab.X if layer is None else tab.layers[layer]
        ev = ad.AnnData(X=X[rows], obs=tab.obs.iloc[rows][[SECTION_KEY]].copy(), var=pd.DataFrame(index=tab.var_names))
        _store_prediction(ev, "predicted", np.arange(ev.n_obs), tab.var_names.get_indexer(panel), pred)
        evaluate_expression(ev, "predicted", genes=panel, by=SECTION_KEY, metrics=metrics)
        df = ev.uns["scst_eval"].copy()
        df.insert(0, "fold", fold)
        frames.append(df)
        preds[test] = pred
        hist = getattr(model, "history", None)
        fold_info.append(
            {
                "fold": fold,
                "section": test,
                "train_sections": train,
                # the section(s) the model held out (drawn by the model when "auto"); closed-form models: None
                "validation": getattr(model, "validation_sections_", None),
                "train_seconds": t1 - t0,
                "predict_seconds": t2 - t1,
                "n_spots": int(len(rows)),
                "n_genes": len(panel),
                "genes": panel,
                "epochs": int(len(hist)) if hist is not None else None,
                "n_programs": getattr(model, "n_programs_", None),
            }
        )
        r = df[df["metric"] == "pearson"]["value"]
        logg.info(f"cross_validate {model_cls.__name__} fold {fold} ({test}): mean PCC {r.mean():.3f}")
    out = pd.concat(frames, ignore_index=True)[["fold", "section", "gene", "metric", "value"]]
    out.attrs["folds"] = fold_info
    return (out, preds) if return_predictions else out
