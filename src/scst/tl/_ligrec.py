"""``scst.tl.ligand_receptor``: LIANA-style long table of pair scores, permutation p-values and FDR in ``adata.uns``."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._logging import logg
from .._utils import _check_key, _get_table
from ..datasets._ligand_receptor import as_lr_table, lr_pairs_in_genes
from ..models._gcng import GCNG, _check_unique_var_names, entity_expression, normalized_expression
from ..pp._graph_matrix import _LIBRARY_KEYS, graph_matrix_from_adjacency
from ._ligrec_gcng import GCNGScores, gcng_null_pvalues, gcng_scores
from ._ligrec_scores import (
    BASELINES,
    _liana_local,
    _section_local,
    bh_fdr,
    lr_scores,
    permutation_pvalues,
    robust_rank_aggregate,
    score_function,
    spot_inclusive_weights,
)

__all__ = ["ligand_receptor", "lr_scores", "BASELINES", "LIGREC_METHODS"]

LIGREC_METHODS = ("gcng", "pearson", "spatial_pearson", "bivariate", "expression")
_SPATIAL = ("spatial_pearson", "bivariate")
_GROUP_KEYS = _LIBRARY_KEYS  # the same "auto" columns as scst.pp.cell_graph: graphs and nulls use one sectioning
#: Columns the tool writes; a resource's own columns of these names (e.g. a previous result re-scored) are dropped.
_RESULT_COLUMNS = frozenset(
    ["ligand_complex", "receptor_complex", "ligand_means", "ligand_props", "receptor_means", "receptor_props",
     "in_training", "magnitude_rank", "specificity_rank"]
    + [f"{m}_{c}" for m in LIGREC_METHODS for c in ("score", "pvals", "fdr")]
)  # fmt: skip


def _guess_organism(var_names: pd.Index) -> str:
    names = [str(v) for v in var_names[:2000] if str(v)[:1].isalpha()]
    upper = np.mean([v == v.upper() for v in names]) if names else 1.0
    return "human" if upper > 0.5 else "mouse"


def _groups(adata: AnnData, groups_key: str | None) -> tuple[np.ndarray | None, str | None]:
    if groups_key == "auto":
        groups_key = next((k for k in _GROUP_KEYS if k in adata.obs), None)
    if groups_key is None:
        return None, None
    _check_key(adata.obs, groups_key, "adata.obs (the sections within which positions are shuffled)")
    col = adata.obs[groups_key]
    if col.isna().any():  # as str they would be one section "nan", shuffled together
        raise ValueError(
            f"adata.obs[{groups_key!r}]: {int(col.isna().sum())} cells have no section; every cell needs one (the "
            "null shuffles positions within sections)."
        )
    return col.astype(str).to_numpy(), groups_key


def _check_graph(
    adj: Any, groups: np.ndarray | None, connectivity_key: str, groups_key: str | None = None, self_only: bool = False
) -> None:
    """Every section needs edges; edges that join cells of different sections are warned about.

    A section without a graph has no spatial score and no spatial null; edges across sections mix them (e.g. slides
    in overlapping pixel frames). ``self_only``: weights of each spot with itself alone are accepted (a proximity
    kernel of ``lr_kernel(max_neighbours=0)`` or a one-spot section: the within-spot score).
    """
    a = sp.coo_matrix(adj)
    # the entries that count as edges (a spot's weight with itself too, for a kernel; never across sections)
    off = (a.data != 0) if self_only else (a.row != a.col) & (a.data != 0)
    if groups is None:
        if not off.any():
            raise ValueError(f"adata.obsp[{connectivity_key!r}] has no edges; build the cell graph first.")
        return
    cross = off & (groups[a.row] != groups[a.col])
    if cross.any():
        where = f"obs[{groups_key!r}]" if groups_key else "the sections"
        warnings.warn(
            f"{int(cross.sum())} of {int(off.sum())} edges of adata.obsp[{connectivity_key!r}] join cells of different "
            f"sections ({where}): their spatial scores mix sections. Build the graph per section "
            f"(scst.pp.cell_graph(..., library_key={groups_key or '...'!r})) unless the sections share one frame.",
            stacklevel=3,
        )
    with_edges = set(groups[a.row[off & (groups[a.row] == groups[a.col])]])
    without = [g for g in pd.unique(groups) if g not in with_edges]
    if without:
        raise ValueError(
            f"Section(s) {without} have no edges in adata.obsp[{connectivity_key!r}]; build the graph per section "
            "(scst.pp.cell_graph(..., library_key=...)) or score them separately."
        )


def _prepare_pairs(pairs: Any, adata: AnnData, expr_prop: float, props: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    table = as_lr_table(pairs, organism=_guess_organism(adata.var_names))
    stale = [c for c in table.columns if c in _RESULT_COLUMNS]
    if stale:  # they were carried into the result over the fresh scores (a previous table re-scored kept its values)
        warnings.warn(
            f"pairs: column(s) {stale} have the names of result columns (a previous result?); they are dropped, "
            "not carried over the new scores.",
            stacklevel=3,
        )
        table = table.drop(columns=stale)
    # Genes are matched case-insensitively: pairs spelled in two cases are one pair, not one present and one absent.
    n_in = len(pd.DataFrame({c: table[c].str.lower() for c in ("ligand", "receptor")}).drop_duplicates())
    present = lr_pairs_in_genes(table, adata.var_names)
    missing_sub = present.attrs.get("missing_subunits", {})
    info: dict[str, Any] = {"n_pairs_input": int(n_in), "n_pairs_absent": int(n_in - len(present))}
    info["n_complexes_missing_subunit"] = len(missing_sub)
    if missing_sub:
        info["complexes_missing_subunit"] = {k: list(v) for k, v in list(missing_sub.items())[:100]}
        shown = ", ".join(f"{k} (no {'/'.join(v)})" for k, v in list(missing_sub.items())[:5])
        warnings.warn(
            f"{len(missing_sub)} complex(es) lack a measured subunit and their pairs are skipped: {shown}"
            + (" ..." if len(missing_sub) > 5 else ""),
            stacklevel=3,
        )
    if present.empty:
        raise ValueError(f"pairs: none of the {n_in} pairs has both genes (all complex subunits) in adata.var_names.")
    entities = pd.unique(pd.concat([present["ligand"], present["receptor"]]))
    prop = pd.Series(props(entities), index=entities)
    low = prop.index[prop < expr_prop]
    keep = ~(present["ligand"].isin(low) | present["receptor"].isin(low))
    info.update(
        expr_prop=float(expr_prop),
        n_entities_below_expr_prop=int(len(low)),
        n_pairs_below_expr_prop=int((~keep).sum()),
        entities_below_expr_prop=[str(e) for e in low[:200]],
    )
    present = present[keep].reset_index(drop=True)
    if present.empty:
        raise ValueError(
            f"pairs: no usable pair: all {int((~keep).sum())} pairs present in the data have a ligand or receptor "
            f"expressed in fewer than expr_prop={expr_prop} of the cells/spots."
        )
    return present, info


def ligand_receptor(
    adata: AnnData | Any,
    model: GCNG | None = None,
    *,
    pairs: pd.DataFrame | str | Sequence[tuple[str, str]] | None = None,
    method: str | Sequence[str] | None = None,
    expr_prop: float = 0.1,
    n_perms: int | None = 100,
    null: str = "auto",
    seed: int = 0,
    groups_key: str | None = "auto",
    connectivity_key: str = "spatial_connectivities",
    local_name: str = "cosine",
    kernel_key: str | None = None,
    known: pd.DataFrame | None = None,
    n_folds: int = 5,
    gcng_config: Mapping[str, Any] | None = None,
    graph_key: str = "gcng_autocrine_plus",
    train_kwargs: Mapping[str, Any] | None = None,
    key_added: str = "scst_ligrec",
    layer: str | None = None,
    normalize: bool = True,
    log1p: bool = True,
    local_scores: bool | int = False,
    copy: bool = False,
) -> AnnData | None:
    """Score ligand–receptor pairs: a LIANA-style long table with permutation p-values and FDR.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used; raw counts in ``layer`` (default ``X``).
    model
        A trained :class:`scst.models.GCNG` to score with: ``method`` left at ``None`` then means ``"gcng"``, and
        an explicit ``method`` must include ``"gcng"`` (else a ValueError: the model would go unused), and the
        cross-fitting settings ``known``, ``gcng_config`` and ``train_kwargs`` must be left unset. Its scores of
        pairs it was fit on are flagged ``in_training``. A paper GCNG (flatten readout) scores the cells it was
        trained on (the same ``obs_names`` in another order are scored in the model's order, so the scores do not
        depend on the row order); one with ``readout="pool"`` (:attr:`~scst.models.GCNG.pooled_config`) scores
        any section with the same graph key. Without it, ``"gcng"`` is cross-fitted here (see ``known``).
    pairs
        The resource: a DataFrame in liana's format (``ligand``, ``receptor``; complexes ``_``-joined, e.g.
        ``ITGA1_ITGB1``; extra columns kept), OmniPath columns (``source_genesymbol``, ``target_genesymbol``), a list
        of ``(ligand, receptor)`` tuples, or a resource name (:func:`scst.datasets.ligand_receptor`: ``"gcng"``,
        ``"liana"`` or any liana resource such as ``"consensus"``, ``"cellphonedb"``). Default: GCNG's list
        (Ramilowski 2015) in the data's organism. Pairs with an absent gene are skipped; a complex with a missing
        subunit is skipped with a warning naming it.
    method
        One or several of ``"spatial_pearson"`` (ligand in a cell vs receptor in its neighbours), ``"bivariate"``
        (liana's local bivariate metric ``local_name`` on the spot-inclusive graph ``A + I``, averaged over
        spots), ``"pearson"`` (within cells), ``"expression"`` (``mean(L)·mean(R)``, the abundance control) and
        ``"gcng"``. Default (``None``): ``"gcng"`` with a ``model``, else ``"spatial_pearson"``.
    expr_prop
        Minimum fraction of cells/spots expressing each entity (count > 0; a complex: all subunits), as LIANA's
        ``expr_prop`` / squidpy's ``threshold``; pairs under it are dropped and counted in the params.
    n_perms
        Permutations of the null (``0``/``None``: no p-values); ``p = (1 + #{null ≥ observed}) / (1 + n_perms)``,
        one-sided, then BH FDR over the pairs. The ``"expression"`` control changes under no permutation: NaN.
    null
        Positions shuffled within each section: ``"positions"`` (ligand and receptor rows permuted together:
        within-spot co-expression kept, only the arrangement of spots is random), ``"ligand"`` (the ligand's rows
        only: the ligand–receptor association broken, each gene's own pattern kept), or ``"auto"``:
        ``"positions"`` for ``spatial_pearson`` (its neighbour edges leave the spot out) and GCNG, ``"ligand"``
        for ``pearson`` (positions do not enter it) and ``bivariate`` (on the spot-inclusive graph it mostly
        measures co-expression in and around a spot, which a joint shuffle keeps). ``"positions"`` with
        ``"pearson"`` among the methods is a ValueError: permuting both genes' rows leaves the within-cell
        correlation unchanged, so every p-value would be 1 (use ``"auto"`` or ``"ligand"``).
    seed
        Seed of the permutations and of GCNG. Each method uses it as it is, so its p-values are the same whichever
        other methods are listed with it, in any order. The permutations are drawn over the cells in their order:
        the same cells in another order are another draw (scores are unchanged; p-values vary as with another
        seed).
    groups_key
        ``obs`` column of the sections within which positions are shuffled (``"auto"``: ``section``, ``fov``,
        ``library_id`` or ``sample`` when present; ``None``: all cells).
    connectivity_key
        ``obsp`` cell graph for the spatial methods (every section must have edges) and GCNG's graph matrix.
    local_name
        liana local metric of ``"bivariate"`` (``cosine``, ``pearson``, ``spearman``, ``jaccard``, ``product``,
        ``norm_product``, ``morans``). ``spearman``, ``norm_product`` and ``morans`` rank, scale or standardise
        over the spots they are given: they run on each section (``groups_key``) alone, as liana on one slide, so
        a section's values do not change with the other sections (unless the weights join sections).
    kernel_key
        ``obsp`` proximity weights of ``"bivariate"`` and the local scores instead of ``A + I``, e.g. a distance
        kernel in µm from :func:`scst.tl.lr_kernel` (spot-inclusive, per section); with neither, a ValueError.
    known
        GCNG's training positives when it is cross-fitted (default: the resource's pairs). They are split into
        ``n_folds`` folds by ligand; each known pair is scored by the model not trained on its fold
        (out-of-fold), other pairs by the model trained on all known pairs.
    n_folds, gcng_config, graph_key, train_kwargs
        GCNG cross-fitting folds, config (default ``GCNG.bench_config``: 300 epochs, the setting that fits its
        training pairs on HER2+; 2–4 min per fit on a ~185-spot section and one CPU thread — ``GCNG.fast_config``
        for a quick look; a given config replaces ``bench_config``, keys it lacks take the paper's defaults, so
        shorten the benchmark setting with ``{**GCNG.bench_config, "max_epochs": 10}``), graph matrix
        (``obsp[graph_key]``, built as autocrine+ from ``connectivity_key`` when absent; the default key holding
        another matrix than that, e.g. of an earlier call on another cell graph, is used with a warning) and
        :meth:`GCNG.train` arguments.
    key_added
        ``uns`` key of the results.
    layer, normalize, log1p
        Expression of the unsupervised methods: ``layer`` scaled to 10,000 per cell when ``normalize``, then
        ``log1p``. GCNG uses its own config.
    local_scores
        Also write per-spot scores of the top ``local_scores`` pairs (``True``: 50): liana's ``local_name`` metric
        on the spot-inclusive graph (the weights kept sparse from 10,000 cells up, as for ``"bivariate"``, whose
        score is their mean over spots; the same values up to float32 rounding).
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    - ``uns[key_added]``: one row per pair, best first (liana's ``liana_res`` columns): ``ligand_complex``,
      ``receptor_complex``, ``ligand_means``, ``ligand_props``, ``receptor_means``, ``receptor_props``, then per
      method ``{method}_score``, ``{method}_pvals``, ``{method}_fdr`` (BH over the pairs), ``in_training`` with
      ``"gcng"``, then ``magnitude_rank`` (RRA of the methods' score ranks; one method: the rank divided by the
      largest rank, ties sharing their average rank — rank / n when no score ties at the bottom) and, with
      p-values, ``specificity_rank`` (RRA of their p-value ranks), then the extra columns of ``pairs`` (not those
      named like these columns, e.g. of a previous result: dropped with a warning);
    - ``uns[f"{key_added}_params"]``: methods, nulls, ``n_perms``, seed, keys, normalisation, pair counts (input,
      absent, complexes missing a subunit, entities/pairs under ``expr_prop``, scored), and for GCNG its graph,
      config, ``n_in_training`` and ``gcng_fit`` (train/validation/held-out AUROC per model);
    - with ``local_scores``: ``obsm[f"{key_added}_local"]``, a cells × pairs DataFrame (``"LIGAND^RECEPTOR"``);
      without, an ``obsm[f"{key_added}_local"]`` of an earlier call is removed (it scored that call's pairs).
    """
    if method is None:
        method = "gcng" if model is not None else "spatial_pearson"
    methods = [method] if isinstance(method, str) else list(method)
    bad = [m for m in methods if m not in LIGREC_METHODS]
    if bad or not methods:
        raise ValueError(f"method: expected one or more of {list(LIGREC_METHODS)}, got {method!r}.")
    if len(set(methods)) < len(methods):  # a repeated method counted twice in the rank aggregates
        raise ValueError(f"method: each method at most once, got {method!r}.")
    if model is not None and "gcng" not in methods:
        raise ValueError(
            f"model: a GCNG model is given but method={method!r} does not include 'gcng', so the model would be "
            "ignored; add 'gcng' to `method` (or leave `method` unset) to score with it, or pass no `model`."
        )
    if not 0 <= expr_prop <= 1:
        raise ValueError(f"expr_prop: expected a fraction in [0, 1], got {expr_prop!r}.")
    if null not in ("auto", "positions", "ligand"):
        raise ValueError(f"null: expected 'auto', 'positions' or 'ligand', got {null!r}.")
    if null == "positions" and "pearson" in methods:
        raise ValueError(
            "null='positions' cannot test method 'pearson': permuting the ligand and receptor rows together leaves "
            "the within-cell correlation unchanged (every p-value would be 1). Use null='auto' (the ligand null for "
            "'pearson') or null='ligand'."
        )
    if not isinstance(local_scores, bool | numbers.Integral) or local_scores < 0:  # -k: head(-k), all but k pairs
        raise ValueError(f"local_scores: expected True/False or a number of pairs >= 0, got {local_scores!r}.")
    n_perms = int(n_perms or 0)
    if n_perms < 0:
        raise ValueError(f"n_perms: expected >= 0, got {n_perms}.")
    if "bivariate" in methods or local_scores:
        _liana_local(local_name)  # unknown metric / missing liana: fail before any work
    elif kernel_key is not None:  # it was checked, then silently unused: the other methods use the cell graph
        raise ValueError(
            f"kernel_key: the weights are used by method 'bivariate' and the local scores only, but method={method!r} "
            "and local_scores are neither; the other methods use the cell graph `connectivity_key`."
        )
    if model is not None:
        if not isinstance(model, GCNG):
            raise TypeError(f"`model` must be a scst.models.GCNG, got {type(model).__name__}.")
        if not model.is_trained:
            raise ValueError("`model` is not trained; call `model.train(pairs)` first (or pass no model to "
                             "cross-fit GCNG here).")  # fmt: skip
        unused = [
            k
            for k, v in (("known", known), ("gcng_config", gcng_config), ("train_kwargs", train_kwargs))
            if v is not None
        ]
        if unused:  # they configure the cross-fitting, which a given model replaces: they were silently ignored
            raise ValueError(
                f"{', '.join(unused)}: set how GCNG is cross-fitted here, but the trained `model` is used as it is; "
                "drop them, or pass no `model` to cross-fit GCNG with them."
            )
    adata = _get_table(adata)
    _check_unique_var_names(adata)
    if copy:
        adata = adata.copy()
    groups, gkey = _groups(adata, groups_key)
    norm = normalized_expression(adata, layer, normalize=normalize, log1p=log1p)
    detect = sp.csc_matrix(norm)

    def props(entities: Any) -> np.ndarray:
        return (entity_expression(detect, adata.var_names, entities) > 0).mean(axis=0)

    present, info = _prepare_pairs(
        _default_pairs(adata) if pairs is None else pairs, adata, expr_prop, props
    )  # fmt: skip
    if info["n_pairs_absent"]:  # a warning as GCNG's training gives, not only a log line filters and captures miss
        warnings.warn(
            f"ligand_receptor: skipped {info['n_pairs_absent']} of {info['n_pairs_input']} pairs with genes absent "
            f"from the data (the count is kept in uns[{key_added + '_params'!r}]['n_pairs_absent']).",
            stacklevel=2,
        )
    lig = entity_expression(norm, adata.var_names, present["ligand"])
    rec = entity_expression(norm, adata.var_names, present["receptor"])
    adj = weights = None
    if kernel_key is not None:
        _check_key(adata.obsp, kernel_key, "adata.obsp (compute the kernel with scst.tl.lr_kernel)")
        weights = adata.obsp[kernel_key]
        _check_graph(weights, groups, kernel_key, gkey, self_only=True)
    gcng_needs_graph = "gcng" in methods and model is None and graph_key not in adata.obsp
    needs_graph = "spatial_pearson" in methods or (kernel_key is None and ("bivariate" in methods or local_scores))
    if needs_graph or gcng_needs_graph:
        _check_key(adata.obsp, connectivity_key, "adata.obsp (build the cell graph with scst.pp.cell_graph)")
        adj = adata.obsp[connectivity_key]
        _check_graph(adj, groups, connectivity_key, gkey)
    if "gcng" in methods and model is None and not gcng_needs_graph:
        _warn_stale_graph(adata, graph_key, connectivity_key)
    params: dict[str, Any] = {
        "methods": methods,
        "n_perms": n_perms,
        "seed": int(seed),
        "groups_key": gkey,
        "connectivity_key": connectivity_key,
        "layer": layer,
        "normalize": normalize,
        "log1p": log1p,
        **info,
        "n_pairs_scored": int(len(present)),
    }
    res = pd.DataFrame(
        {
            "ligand_complex": present["ligand"].to_numpy(),
            "receptor_complex": present["receptor"].to_numpy(),
            "ligand_means": lig.mean(axis=0).astype(np.float64),
            "ligand_props": (lig > 0).mean(axis=0),
            "receptor_means": rec.mean(axis=0).astype(np.float64),
            "receptor_props": (rec > 0).mean(axis=0),
        }
    )
    nulls = {}
    for m in methods:
        if m == "gcng":
            nulls[m] = "positions" if null == "auto" else null
            score, pval, extra = _gcng(adata, model, present, known, n_folds, gcng_config, graph_key, adj,
                                       train_kwargs, layer, normalize, seed, groups, n_perms, nulls[m])  # fmt: skip
            res["gcng_score"], res["gcng_pvals"] = score, pval
            in_training = extra.pop("in_training")
            params.update(extra)
        else:
            fn, default = score_function(m, adj, local_name=local_name, weights=weights, groups=groups)
            nulls[m] = default if null == "auto" or default == "none" else null
            score = fn(lig, rec)
            # Every method draws from ``seed`` itself (as liana's aggregate does): a method's p-values do not depend
            # on which other methods are listed, or in which order.
            pval = permutation_pvalues(fn, lig, rec, score, null=nulls[m], groups=groups, n_perms=n_perms, seed=seed)
            res[f"{m}_score"], res[f"{m}_pvals"] = score, pval
        res[f"{m}_fdr"] = bh_fdr(res[f"{m}_pvals"].to_numpy())
        if m == "gcng":
            res["in_training"] = in_training
    params["nulls"] = nulls
    if "bivariate" in methods or local_scores:
        params.update(local_name=local_name, kernel_key=kernel_key or f"{connectivity_key} + I")
    score_cols = [f"{m}_score" for m in methods]
    res["magnitude_rank"] = robust_rank_aggregate(res[score_cols].to_numpy(), [False] * len(methods))
    pcols = [f"{m}_pvals" for m in methods if not res[f"{m}_pvals"].isna().all()]
    if pcols:
        res["specificity_rank"] = robust_rank_aggregate(res[pcols].to_numpy(), [True] * len(pcols))
    for c in present.columns:
        if c not in ("ligand", "receptor"):
            res[c] = present[c].to_numpy()
    order = ["magnitude_rank", *(["specificity_rank"] if pcols else []), "ligand_complex", "receptor_complex"]
    res = res.sort_values(order, kind="stable").reset_index(drop=True)
    adata.uns[key_added] = res
    # An earlier call's local scores under this key would be drawn beside this call's table (pl.ligand_receptor_spatial)
    adata.obsm.pop(f"{key_added}_local", None)
    if local_scores:
        n_top = 50 if local_scores is True else int(local_scores)
        top = res.head(n_top)
        col = {p: j for j, p in enumerate(zip(present["ligand"], present["receptor"]))}
        idx = [col[p] for p in zip(top["ligand_complex"], top["receptor_complex"])]
        fun = _liana_local(local_name)
        w = spot_inclusive_weights(adj) if weights is None else sp.csr_matrix(weights, dtype=np.float32)
        local = _section_local(fun, w, groups, local_name)(lig[:, idx], rec[:, idx])  # sparse from 10,000 cells up
        adata.obsm[f"{key_added}_local"] = pd.DataFrame(
            local.astype(np.float32),
            index=adata.obs_names,
            columns=[f"{lg}^{rc}" for lg, rc in zip(top["ligand_complex"], top["receptor_complex"])],
        )
        params["local_scores_key"] = f"{key_added}_local"
    adata.uns[f"{key_added}_params"] = params
    logg.info(f"ligand_receptor: scored {len(res)} pairs with {methods} → adata.uns[{key_added!r}]")
    return adata if copy else None


def _warn_stale_graph(adata: AnnData, graph_key: str, connectivity_key: str) -> None:
    """Warn when the default GCNG graph matrix is not the autocrine+ matrix of the cell graph.

    It is built from the cell graph only when absent: one left by an earlier call on another cell graph (e.g.
    rebuilt with another radius) was used as it is, without a word.
    """
    if graph_key != "gcng_autocrine_plus" or connectivity_key not in adata.obsp:
        return  # another key is the user's choice of graph matrix; without the cell graph there is nothing to compare
    have = sp.csr_matrix(adata.obsp[graph_key])
    want = graph_matrix_from_adjacency(adata.obsp[connectivity_key], "autocrine+")
    if have.shape != want.shape or (abs(have - want) > 1e-6).nnz:
        warnings.warn(
            f"adata.obsp[{graph_key!r}] is not the autocrine+ matrix of adata.obsp[{connectivity_key!r}] (left by an "
            "earlier call on another cell graph?); GCNG uses it as it is. Delete it to rebuild it from "
            f"{connectivity_key!r}, or pass a `graph_key` of its own.",
            stacklevel=3,
        )


def _default_pairs(adata: AnnData) -> pd.DataFrame:
    from ..datasets._ligand_receptor import ligand_receptor as resource

    return resource("gcng", organism=_guess_organism(adata.var_names))


def _gcng(
    adata: AnnData, model: GCNG | None, present: pd.DataFrame, known: pd.DataFrame | None, n_folds: int,
    config: Mapping[str, Any] | None, graph_key: str, adj: Any, train_kwargs: Mapping[str, Any] | None,
    layer: str | None, normalize: bool, seed: int, groups: np.ndarray | None, n_perms: int, null: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:  # fmt: skip
    """GCNG scores (given model, or cross-fitted), their permutation p-values, ``in_training`` and params."""
    cand = present[["ligand", "receptor"]]
    if model is not None:
        names = model.registry.get("obs_names")
        own = [str(o) for o in adata.obs_names]
        if (
            model.config.get("readout", "flatten") != "pool"
            and names is not None
            and own != list(names)
            and len(own) == len(names) == len(set(own))
            and set(own) == set(names)
        ):
            # the model's cells in another order: its flatten layer weights cells by position, so score them in the
            # model's order (scores are per pair; the null shuffles within the same sections)
            idx = pd.Index(own).get_indexer(list(names))
            adata = adata[idx].copy()
            groups = None if groups is None else np.asarray(groups)[idx]
        saved = (model.data, model.adata, getattr(model, "_expr_cache", None))
        try:
            if model.adata is not adata:  # score this AnnData without re-pointing the model for good
                model._attach(adata)
            pred = model.predict(cand)
            seen = set(zip(model.training_pairs["ligand"], model.training_pairs["receptor"]))
            table = cand.assign(score=pred["score"].to_numpy(), model=0)
            table["in_training"] = [p in seen for p in zip(cand["ligand"], cand["receptor"])]
            result = GCNGScores(table, [model])
            pval = gcng_null_pvalues(result, groups=groups, n_perms=n_perms, seed=seed, n_obs=adata.n_obs, null=null)
        finally:
            if model.adata is not saved[1]:
                model.data, model.adata = saved[0], saved[1]
                if saved[1] is not None:
                    model._set_graph()
                model._expr_cache = saved[2]
        n_in = int(table["in_training"].sum())
        if n_in:
            warnings.warn(
                f"{n_in} of {len(table)} GCNG scores are in-sample (pairs the model was fit on; "
                "`in_training=True`): they measure fit, not prediction. Pass no `model` to cross-fit.",
                stacklevel=3,
            )
        extra = {"graph_key": model.registry["graph_key"], "model_config": dict(model.config), "gcng_mode": "model"}
    else:
        config = dict(GCNG.bench_config if config is None else config)
        if known is None:
            known_t = present
        else:  # a resource name in the data's organism, as `pairs`; absent pairs are counted, not dropped silently
            known_in = as_lr_table(known, organism=_guess_organism(adata.var_names))
            known_t = lr_pairs_in_genes(known_in, adata.var_names)
            # counted as `pairs` are: genes match case-insensitively, so two spellings of a pair are one pair
            n_known = len(pd.DataFrame({c: known_in[c].str.lower() for c in ("ligand", "receptor")}).drop_duplicates())
            if 0 < len(known_t) < n_known:
                warnings.warn(
                    f"known: {n_known - len(known_t)} of {n_known} known pairs have a gene (or complex subunit) absent "
                    f"from adata.var_names; GCNG learns from the other {len(known_t)}.",
                    stacklevel=3,
                )
        if known_t.empty:
            raise ValueError("known: no known pair has both genes in adata.var_names; GCNG has nothing to learn.")
        added, uns_before = graph_key not in adata.obsp, set(adata.uns)
        if added:
            adata.obsp[graph_key] = graph_matrix_from_adjacency(adj, "autocrine+")
        try:
            result = gcng_scores(adata, cand, known_t, graph_key=graph_key, config=config, n_folds=n_folds,
                                 layer=layer, normalize=normalize, seed=seed, train_kwargs=train_kwargs)  # fmt: skip
        except BaseException:  # nothing half-written: a failed call leaves no graph matrix or model setup behind
            if added:
                del adata.obsp[graph_key]
            for k in set(adata.uns) - uns_before:
                del adata.uns[k]
            raise
        table = result.table
        pval = gcng_null_pvalues(result, groups=groups, n_perms=n_perms, seed=seed, n_obs=adata.n_obs, null=null)
        extra = {"graph_key": graph_key, "model_config": config, "gcng_mode": "cross-fitted", "n_folds": n_folds,
                 "n_known_used": int(len(known_t)), "gcng_fit": pd.DataFrame(result.fit)}  # fmt: skip
    extra["n_in_training"] = int(table["in_training"].sum())
    extra["in_training"] = table["in_training"].to_numpy(bool)
    return table["score"].to_numpy(np.float64), pval, extra
