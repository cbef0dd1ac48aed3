"""GCNG's evaluation: gene-disjoint 10-fold CV over ligand–receptor pairs, metrics, and function assignment."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import average_precision_score, roc_auc_score

from .._logging import logg
from .._utils import _check_key, _get_table
from ..datasets._ligand_receptor import _check_lr_table, complex_subunits, lr_pairs_in_genes
from ..models._gcng import GCNG, _check_unique_var_names, entity_expression, normalized_expression, sample_negatives
from ..pp._graph_matrix import GRAPH_KINDS, graph_matrix_from_adjacency
from ._ligrec_scores import BASELINES, lr_scores, section_permutations

__all__ = [
    "LRFold",
    "lr_folds",
    "gene_features",
    "ligrec_cv",
    "ligrec_metrics",
    "gene_function_cv",
    "read_gmt",
    "shuffle_graph",
]


# ---------------------------------------------------------------------------------------------- folds
@dataclass(eq=False)
class LRFold:
    """One gene-disjoint fold: labelled training and test pairs (``ligand``, ``receptor``, ``label``, ``group``)."""

    fold: int
    train: pd.DataFrame
    test: pd.DataFrame
    test_genes: frozenset[str] = field(default_factory=frozenset)

    @property
    def n_test_positives(self) -> int:
        """Known pairs in the test split."""
        return int((self.test["label"] == 1).sum())


def _genes_of(entities: Iterable[str]) -> set[str]:
    return {g for e in entities for g in complex_subunits(e)}


def _touches(entities: pd.Series, genes: set[str]) -> np.ndarray:
    return np.array([bool(set(complex_subunits(e)) & genes) for e in entities], dtype=bool)


def lr_folds(
    pairs: pd.DataFrame,
    *,
    n_folds: int = 10,
    task: Literal["interaction", "direction"] = "interaction",
    negatives: Literal["random", "expression_matched"] = "random",
    expression: Mapping[str, float] | pd.Series | None = None,
    negatives_per_positive: int = 1,
    n_bins: int = 10,
    permute_labels: bool = False,
    seed: int = 0,
) -> list[LRFold]:
    """GCNG's gene-disjoint folds over known ligand–receptor pairs.

    In fold ``k`` a ``1/n_folds`` share of the ligands and of the receptors (shuffled once, then cut into
    ``n_folds`` blocks) are test genes, the rest training genes. Known pairs between training genes are training
    positives, pairs between test genes test positives; pairs that mix the two are dropped, and so is any training
    pair that touches a gene (or complex subunit) of the test set, so no test gene is ever seen in training.
    With 10 folds about 1 % of the pairs are test pairs in each fold (≈ 10 % over all folds); folds without test
    positives are normal on small gene panels. The gene split follows ``seed`` and the gene *names* (ligands and
    receptors are sorted, then shuffled): the order of the pairs does not change it, but consistently renamed
    genes are another draw, like another seed (on small panels the AUROC varies markedly between draws).

    Negatives (label 0), drawn within each split:

    - ``task="interaction"``: ``(L, R')`` with ``R'`` a receptor of the same split not known to bind ``L``;
      ``negatives="random"`` (uniform; the paper) or ``"expression_matched"`` (``R'`` from the expression quantile
      bin of the true partner, see :func:`scst.models._gcng.sample_negatives`);
    - ``task="direction"``: the reversed pair ``(R, L)`` (pairs listed in both directions are dropped).

    Parameters
    ----------
    pairs
        Known pairs present in the data (``ligand``, ``receptor``, spelled as in the data).
    n_folds
        Number of folds (paper: 10).
    task
        ``"interaction"`` or ``"direction"``.
    negatives
        Negative sampling for ``task="interaction"``.
    expression
        Mean expression per receptor entity (needed for ``"expression_matched"``).
    negatives_per_positive
        Negatives per positive (paper: 1).
    n_bins
        Expression quantile bins.
    permute_labels
        Control: replace the known pairs by a random re-pairing of the same ligands and receptors (the receptor
        column shuffled), so labels carry no biology; performance must drop to chance (up to what the degree and
        expression of the listed genes give away, which expression-matched negatives remove).
    seed
        Seed of the gene split, the permutation and the negatives.

    Returns
    -------
    ``n_folds`` :class:`LRFold` objects.
    """
    _check_lr_table(pairs)
    if n_folds < 2:
        raise ValueError(f"n_folds: expected >= 2, got {n_folds}.")
    if task not in ("interaction", "direction"):
        raise ValueError(f"task: expected 'interaction' or 'direction', got {task!r}.")
    if negatives not in ("random", "expression_matched"):
        raise ValueError(f"negatives: expected 'random' or 'expression_matched', got {negatives!r}.")
    if negatives == "expression_matched" and task == "interaction" and expression is None:
        raise ValueError("negatives='expression_matched' needs `expression` (mean expression per receptor).")
    known = pairs[["ligand", "receptor"]].dropna().astype(str).drop_duplicates().reset_index(drop=True)
    if known.empty:
        raise ValueError("pairs: no usable ligand–receptor pair (the table is empty); folds need known pairs.")
    rng = np.random.default_rng(seed)
    if permute_labels:
        perm = known.assign(receptor=rng.permutation(known["receptor"].to_numpy()))
        known = perm.drop_duplicates().reset_index(drop=True)
    if task == "direction":
        fwd = set(zip(known["ligand"], known["receptor"]))
        both = np.array([(r, lg) in fwd for lg, r in zip(known["ligand"], known["receptor"])], dtype=bool)
        known = known[~both].reset_index(drop=True)
        if known.empty:
            raise ValueError(
                "pairs: no usable pair for task='direction' (every pair is listed in both directions, so no pair "
                "has a known orientation)."
            )
    ligands = np.array(sorted(known["ligand"].unique()), dtype=object)
    receptors = np.array(sorted(known["receptor"].unique()), dtype=object)
    lig_blocks = np.array_split(ligands[rng.permutation(len(ligands))], n_folds)
    rec_blocks = np.array_split(receptors[rng.permutation(len(receptors))], n_folds)
    folds = []
    for k in range(n_folds):
        test_l, test_r = set(lig_blocks[k]), set(rec_blocks[k])
        test_genes = _genes_of(test_l | test_r)
        in_test = known["ligand"].isin(test_l).to_numpy() & known["receptor"].isin(test_r).to_numpy()
        in_train = (~known["ligand"].isin(test_l).to_numpy()) & (~known["receptor"].isin(test_r).to_numpy())
        in_train &= ~(_touches(known["ligand"], test_genes) | _touches(known["receptor"], test_genes))
        splits = {}
        for name, mask, pool in (
            ("train", in_train, [r for r in receptors if r not in test_r]),
            ("test", in_test, [r for r in receptors if r in test_r]),
        ):
            pos = known[mask]
            if name == "train":
                pool = [r for r in pool if not set(complex_subunits(r)) & test_genes]
            if task == "direction":
                neg = pd.DataFrame({"ligand": pos["receptor"].to_numpy(), "receptor": pos["ligand"].to_numpy()})
            elif len(pos):
                neg = sample_negatives(
                    pos,
                    pool,
                    known=known,
                    n_per_positive=negatives_per_positive,
                    expression=expression if negatives == "expression_matched" else None,
                    n_bins=n_bins,
                    seed=seed * 1000 + k * 2 + (name == "test"),
                )[["ligand", "receptor"]]
            else:
                neg = pd.DataFrame(columns=["ligand", "receptor"])
            # `group`: the ligand whose pairs a per-ligand AUROC compares (for a reversed pair, its true ligand).
            neg_group = neg["receptor"] if task == "direction" else neg["ligand"]
            splits[name] = pd.concat(
                [pos.assign(label=1, group=pos["ligand"]), neg.assign(label=0, group=neg_group.to_numpy())],
                ignore_index=True,
            ).astype({"label": int})
        folds.append(LRFold(k, splits["train"], splits["test"], frozenset(test_genes)))
    n_test = sum(f.n_test_positives for f in folds)
    logg.info(
        f"lr_folds: {len(known)} known pairs, {len(ligands)} ligands, {len(receptors)} receptors; "
        f"{n_test} test positives over {n_folds} folds ({sum(f.n_test_positives == 0 for f in folds)} folds without)"
    )
    return folds


# ---------------------------------------------------------------------------------------------- graphs
def shuffle_graph(matrix: Any, groups: Sequence[Any] | None = None, seed: int = 0) -> sp.csr_matrix:
    """The graph of shuffled cell positions: cells permuted within each group (field of view / section).

    ``P M Pᵀ`` for a random permutation ``P`` that keeps every cell in its group: the graph's shape is kept but
    who neighbours whom, relative to the expression, is random — GCNG's "permuted neighbourhood" control.

    Parameters
    ----------
    matrix
        Square ``(n_cells, n_cells)`` graph (dense or sparse), e.g. ``obsp["spatial_connectivities"]``.
    groups
        Group of each cell (length ``n_cells``); cells are only permuted within their group. None: one group. A
        missing (NaN) group is an error.
    seed
        Seed of the permutation.

    Returns
    -------
    The permuted graph as CSR, same shape and number of edges as ``matrix``.
    """
    m = sp.csr_matrix(matrix)
    # the permutation nulls' within-group shuffle (which checks ``groups``: one label per cell, none missing)
    perm = next(section_permutations(groups, m.shape[0], 1, seed))
    return sp.csr_matrix(m[perm][:, perm])


# ---------------------------------------------------------------------------------------------- metrics
def _auc(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    if len(np.unique(y)) < 2:
        return np.nan, np.nan
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


#: Fewer scored positives or negatives than this in a group of :func:`ligrec_metrics`: warned as unstable.
MIN_PAIRS_PER_CLASS = 10


def ligrec_metrics(
    predictions: pd.DataFrame,
    *,
    by: str | Sequence[str] = "method",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Pooled, per-fold and per-ligand AUROC/AUPRC of CV predictions.

    Parameters
    ----------
    predictions
        Columns ``fold``, ``ligand``, ``receptor``, ``label`` (0/1), ``score`` and the ``by`` columns (from
        :func:`ligrec_cv`); per-ligand values group by ``group`` when present (the true ligand of a reversed pair
        in the direction task), else by ``ligand``.
    by
        Column(s) to group by (e.g. ``"method"``, or ``["method", "section"]``).
    n_boot
        Bootstrap resamples for the pooled confidence intervals (pairs resampled within each class).
    ci
        Confidence level.
    seed
        Bootstrap seed.

    Returns
    -------
    One row per group: ``n_pos``, ``n_neg``, ``auroc``/``auprc`` over all folds' test pairs pooled with
    bootstrap ``[ci]`` bounds (``auroc_lo``, ``auroc_hi``, ``auprc_lo``, ``auprc_hi``); the mean/median over folds
    with both classes (``fold_auroc_mean``, ``fold_auroc_median``, ``fold_auprc_mean``, ``fold_auprc_median``,
    ``n_folds_scored``) and over ligands with both classes (``ligand_auroc_mean``/``_median``,
    ``ligand_auprc_mean``/``_median``, ``n_ligands_scored``) — the paper's per-ligand summary. With one negative
    per positive most ligands score 0, 0.5 or 1, so per-ligand medians are coarse.

    Pairs with a NaN ``score`` (unscored) are left out of every value and count, with a warning, as
    :func:`scst.pl.ligrec_roc` leaves them out of its curves; a group without scored pairs gets NaN metrics.
    A group with fewer than :data:`MIN_PAIRS_PER_CLASS` (10) scored positives or negatives is named in a warning:
    its AUROC/AUPRC move by large steps from one pair to the next (GCNG's gene-disjoint folds on a small panel
    hold a handful of test pairs). Where a class has a single pair, resampling cannot vary it, so the bootstrap
    bounds would show none of its uncertainty: they are NaN.
    """
    by = [by] if isinstance(by, str) else list(by)
    need = {"fold", "ligand", "label", "score", *by}
    missing = need - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions: missing column(s) {sorted(missing)}.")
    unscored = predictions["score"].isna()
    if unscored.any():  # sklearn's metrics failed on them ("Input contains NaN") while pl.ligrec_roc drops them
        warnings.warn(
            f"predictions: {int(unscored.sum())} of {len(predictions)} pairs have a NaN score; they are left out "
            "of the metrics and counts (as in scst.pl.ligrec_roc).",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    rows, few, single = [], [], False
    for key, g in predictions.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g[g["score"].notna()]
        y, s = g["label"].to_numpy(int), g["score"].to_numpy(float)
        row: dict[str, Any] = dict(zip(by, key))
        row.update(n_pos=int(y.sum()), n_neg=int((1 - y).sum()))
        row["auroc"], row["auprc"] = _auc(y, s)
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        if 0 < min(len(pos), len(neg)) < MIN_PAIRS_PER_CLASS:
            few.append(f"{'/'.join(map(str, key))}: {len(pos)} positive(s), {len(neg)} negative(s)")
            single = single or min(len(pos), len(neg)) == 1
        if len(pos) > 1 and len(neg) > 1 and n_boot:
            boots = np.array(
                [
                    _auc(
                        np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                        np.r_[s[rng.choice(pos, len(pos))], s[rng.choice(neg, len(neg))]],
                    )
                    for _ in range(n_boot)
                ]
            )
            lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
            row["auroc_lo"], row["auroc_hi"] = np.percentile(boots[:, 0], [lo, hi])
            row["auprc_lo"], row["auprc_hi"] = np.percentile(boots[:, 1], [lo, hi])
        else:
            row["auroc_lo"] = row["auroc_hi"] = row["auprc_lo"] = row["auprc_hi"] = np.nan
        lig_col = "group" if "group" in g else "ligand"  # reversed pairs (direction) belong to their true ligand
        for level, col in (("fold", "fold"), ("ligand", ["fold", lig_col])):
            vals = np.array([_auc(h["label"].to_numpy(int), h["score"].to_numpy(float)) for _, h in g.groupby(col)])
            vals = vals[~np.isnan(vals[:, 0])] if len(vals) else np.empty((0, 2))
            for j, m in enumerate(("auroc", "auprc")):
                row[f"{level}_{m}_mean"] = float(vals[:, j].mean()) if len(vals) else np.nan
                row[f"{level}_{m}_median"] = float(np.median(vals[:, j])) if len(vals) else np.nan
            row[f"n_{level}s_scored"] = len(vals)
        rows.append(row)
    if few:
        warnings.warn(
            f"ligrec_metrics: {len(few)} group(s) scored on fewer than {MIN_PAIRS_PER_CLASS} pairs of a class, so "
            f"their AUROC/AUPRC are unstable ({'; '.join(few[:5])}{' ...' if len(few) > 5 else ''})"
            + ("; no bootstrap interval where a class has a single pair." if single else "."),
            stacklevel=2,
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- CV
@contextmanager
def _quiet() -> Iterator[None]:
    # Lightning announces devices on every fit; a CV runs hundreds of fits.
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    old = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lvl in zip(names, old):
            logging.getLogger(n).setLevel(lvl)


#: Per-gene summaries of the non-spatial control (``{"method": "gene_features"}``), in this order per entity.
GENE_FEATURES = ("mean", "detection", "sd")


def gene_features(norm: sp.spmatrix, var_names: Iterable[str], entities: Iterable[str]) -> np.ndarray:
    """Non-spatial per-entity summaries: mean, detected fraction (> 0) and sd over cells of the expression.

    Complexes are the minimum over their subunits (:func:`scst.models._gcng.entity_expression`). Positions do
    not enter: a classifier on these features is the non-spatial control of GCNG.

    Returns
    -------
    ``(n_entities, 3)`` array, columns :data:`GENE_FEATURES`.
    """
    x = entity_expression(norm, var_names, entities).astype(np.float64)
    return np.column_stack([x.mean(axis=0), (x > 0).mean(axis=0), x.std(axis=0)])


def _pair_features(norm: sp.spmatrix, var_names: Iterable[str], table: pd.DataFrame) -> np.ndarray:
    # Order-aware: the ligand's summaries, then the receptor's (the direction task swaps them).
    return np.hstack(
        [gene_features(norm, var_names, table["ligand"]), gene_features(norm, var_names, table["receptor"])]
    )


def _gene_feature_classifier(kind: str, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        clf = LogisticRegression(max_iter=2000)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(32,), alpha=1e-3, max_iter=1000, random_state=seed)
    else:
        raise ValueError(f"classifier: expected 'logistic' or 'mlp', got {kind!r}.")
    return make_pipeline(StandardScaler(), clf)


def _default_methods() -> dict[str, dict[str, Any]]:
    return {
        "GCNG autocrine+": {"method": "gcng", "kind": "autocrine+"},
        "GCNG exocrine": {"method": "gcng", "kind": "exocrine"},
        "GCNG diagonal": {"method": "gcng", "kind": "diagonal"},
        "single-cell Pearson": {"method": "pearson"},
        "spatial Pearson": {"method": "spatial_pearson"},
        "expression mean(L)·mean(R)": {"method": "expression"},
    }


def _fit_gcng(
    adata: AnnData, graph_key: str, train: pd.DataFrame, config: Mapping[str, Any], layer: str | None,
    normalize: bool, seed: int, train_kwargs: Mapping[str, Any], norm: sp.csc_matrix | None = None,
) -> GCNG:  # fmt: skip
    GCNG.setup_anndata(adata, graph_key=graph_key, layer=layer, normalize=normalize)
    model = GCNG(adata, **{**dict(config), "seed": seed})
    if norm is not None:  # the CV normalises once for all its models (same layer, normalize and log1p)
        model._expr_cache = (norm, pd.Index(map(str, adata.var_names)))
    with _quiet():
        model.train(train, enable_progress_bar=False, accelerator=train_kwargs.get("accelerator", "cpu"),
                    **{k: v for k, v in train_kwargs.items() if k != "accelerator"})  # fmt: skip
    return model


def _check_fold_genes(folds: Sequence[LRFold], var_names: Iterable[str]) -> None:
    """Every gene (complex subunit) of the folds' training and test pairs must be measured, spelled as in the data."""
    if isinstance(folds, LRFold):
        raise TypeError("folds: expected a sequence of LRFold (the output of scst.tl.lr_folds), got one; pass [fold].")
    genes: set[str] = set()
    for f in folds:
        if not all(isinstance(getattr(f, k, None), pd.DataFrame) for k in ("train", "test")):
            raise TypeError(f"folds: expected a sequence of LRFold (the output of scst.tl.lr_folds), got {f!r:.80}.")
        for table in (f.train, f.test):
            genes |= _genes_of(pd.concat([table["ligand"], table["receptor"]]).astype(str))
    missing = sorted(genes - {str(g) for g in var_names})
    if missing:
        raise ValueError(
            f"folds: {len(missing)} gene(s) of the folds' pairs (complex subunits included) are not in "
            f"adata.var_names: {missing[:10]}{' ...' if len(missing) > 10 else ''}. Build the folds from pairs mapped "
            "to this data (scst.datasets.lr_pairs_in_genes(pairs, adata.var_names)) or score data with those genes."
        )


def ligrec_cv(
    adata: AnnData | Any,
    pairs: pd.DataFrame | None = None,
    *,
    folds: Sequence[LRFold] | None = None,
    methods: Mapping[str, Mapping[str, Any]] | None = None,
    connectivity_key: str = "spatial_connectivities",
    n_folds: int = 10,
    task: Literal["interaction", "direction"] = "interaction",
    negatives: Literal["random", "expression_matched"] = "random",
    permute_labels: bool = False,
    config: Mapping[str, Any] | None = None,
    layer: str | None = None,
    normalize: bool = True,
    log1p: bool | None = None,
    seed: int = 0,
    train_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Gene-disjoint cross-validation of GCNG variants and baselines on the same folds.

    Parameters
    ----------
    adata
        AnnData (or SpatialData table) with the cell graph ``obsp[connectivity_key]``.
    pairs
        Known pairs (``ligand``, ``receptor``); mapped to the data's symbols, missing genes dropped. Ignored when
        ``folds`` is given.
    folds
        Precomputed :func:`lr_folds` (to evaluate several settings on the same folds). Every gene of their pairs
        (each subunit of a complex) must be in ``adata.var_names``, spelled as there (build them from
        :func:`scst.datasets.lr_pairs_in_genes` of this data); otherwise a ValueError names the missing genes.
    methods
        Name → spec. Specs: ``{"method": "gcng", "kind": "autocrine+" | "exocrine" | "diagonal" | "laplacian"}``
        (graph matrix built from ``connectivity_key``) or ``{"method": "gcng", "graph_key": ...}`` (an ``obsp``
        matrix), optionally ``"config"`` (GCNG config overrides), ``"shuffle_positions": groups_column`` (cells
        permuted within ``obs[groups_column]``, or ``True`` for all cells; applied to the graph) and
        ``"connectivity_key"``; ``{"method": "pearson" | "spatial_pearson" | "expression"}``;
        ``{"method": "gene_features", "classifier": "logistic" | "mlp"}``: the supervised *non-spatial* control, a
        classifier trained on each fold's training pairs from per-gene mean, detected fraction and sd of the ligand
        then the receptor (order-aware; :func:`gene_features`). Default: autocrine+,
        exocrine and diagonal GCNG, single-cell Pearson, spatial Pearson and the expression-level control.
    connectivity_key
        ``obsp`` cell graph (binary adjacency).
    n_folds, task, negatives, permute_labels
        See :func:`lr_folds` (used when ``folds`` is None).
    config
        GCNG config (default ``GCNG.bench_config``).
    layer, normalize, log1p
        Expression of the baselines and of the expression-matched negatives (``log1p`` default: the GCNG config's).
    seed
        Seed of folds and models.
    train_kwargs
        Extra :meth:`GCNG.train` arguments (``accelerator="gpu"``...).
    progress
        Log each fold.

    Returns
    -------
    Long DataFrame of test predictions: ``method``, ``fold``, ``ligand``, ``receptor``, ``label``, ``score`` and
    ``group`` (the ligand a pair is evaluated with; folds from :func:`lr_folds` provide it);
    ``attrs["folds"]`` holds the folds, ``attrs["n_pairs"]`` the number of usable known pairs and
    ``attrs["fit"]`` one row per trained model as a dict of columns (``pd.DataFrame(result.attrs["fit"])``:
    ``method``, ``fold``, ``train_auroc`` on the pairs it was fit on, ``val_auroc`` on its early-stopping split —
    both from the training folds only —, ``test_auroc`` on the fold's test pairs, ``epochs``, pair counts).
    Summarise with :func:`ligrec_metrics`; results of several calls concatenate with ``pd.concat``.
    """
    adata = _get_table(adata)
    _check_unique_var_names(adata)
    if folds is not None:
        _check_fold_genes(folds, adata.var_names)
    config = dict(GCNG.bench_config if config is None else config)
    log1p = bool(config.get("log1p", GCNG._default_config["log1p"])) if log1p is None else log1p
    methods = _default_methods() if methods is None else dict(methods)
    norm = normalized_expression(adata, layer, normalize=normalize, log1p=log1p)
    if folds is None:
        if pairs is None:
            raise ValueError("Pass `pairs` (known ligand–receptor pairs) or precomputed `folds`.")
        present = lr_pairs_in_genes(pairs, adata.var_names)
        if present.empty:
            raise ValueError("pairs: no pair has both genes (all subunits) in adata.var_names.")
        expr = None
        if negatives == "expression_matched":
            recs = present["receptor"].unique()
            expr = pd.Series(entity_expression(norm, adata.var_names, recs).mean(axis=0), index=recs)
        folds = lr_folds(present, n_folds=n_folds, task=task, negatives=negatives, expression=expr,
                         permute_labels=permute_labels, seed=seed)  # fmt: skip
        n_pairs = len(present)
    else:
        n_pairs = None
    if all(f.n_test_positives == 0 for f in folds):
        warnings.warn(
            "ligrec_cv: no fold has a test positive (known pair); AUROC/AUPRC will be undefined.",
            UserWarning,
            stacklevel=2,
        )
    from ._ligrec import _check_graph, _groups  # (those modules import this one)
    from ._ligrec_gcng import _report  # fit reports shared with tl.ligand_receptor

    work = adata.copy()  # graph matrices and setups of the variants go to a private copy
    results, fit = [], []
    for name, spec in methods.items():
        kind = spec.get("method")
        if kind not in ("gcng", "gene_features", *BASELINES):
            raise ValueError(
                f"methods[{name!r}]: unknown method {kind!r}; expected 'gcng', 'gene_features' or one of {BASELINES}."
            )
        if kind == "gene_features":
            _gene_feature_classifier(spec.get("classifier", "logistic"), seed)  # bad classifier: fail before work
        ckey = spec.get("connectivity_key", connectivity_key)
        adj = None
        if kind == "spatial_pearson" or (kind == "gcng" and "graph_key" not in spec and spec.get("kind") != "diagonal"):
            _check_key(work.obsp, ckey, "adata.obsp (build the cell graph with scst.pp.cell_graph)")
            adj = work.obsp[ckey]
            sections, skey = _groups(work, "auto")
            _check_graph(adj, sections, ckey, skey)  # every section (obs section/fov...) needs edges, none crosses
        shuffle = spec.get("shuffle_positions")
        if shuffle:
            if shuffle is not True:
                _check_key(work.obs, shuffle, f"adata.obs (methods[{name!r}]['shuffle_positions'])")
            groups = None if shuffle is True else work.obs[shuffle].to_numpy()
            adj = shuffle_graph(adj, groups, seed=seed + 1) if adj is not None else None
        if kind == "gcng":
            if "graph_key" in spec:
                gkey = spec["graph_key"]
                _check_key(work.obsp, gkey, "adata.obsp")
                if shuffle:
                    work.obsp[f"_cv_{name}"] = shuffle_graph(work.obsp[gkey], groups, seed=seed + 1)
                    gkey = f"_cv_{name}"
            else:
                gk = spec.get("kind", "autocrine+")
                if gk not in GRAPH_KINDS:
                    raise ValueError(f"methods[{name!r}]['kind']: expected one of {list(GRAPH_KINDS)}, got {gk!r}.")
                gkey = f"_cv_{name}"
                base = adj if adj is not None else sp.csr_matrix((work.n_obs, work.n_obs))
                work.obsp[gkey] = graph_matrix_from_adjacency(base, gk)
            cfg = {**config, **spec.get("config", {})}
        for fold in folds:
            test = fold.test
            if test.empty:
                continue
            if kind in ("gcng", "gene_features") and fold.train["label"].nunique() < 2:  # nothing to learn from
                warnings.warn(
                    f"ligrec_cv: fold {fold.fold} has a single training class (only positives or only negatives); "
                    f"{name!r} is not scored on its {len(test)} test pairs, so its metrics cover fewer pairs than the "
                    "other methods'.",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            if kind == "gcng":
                model_norm = (
                    norm if bool(cfg.get("log1p", False)) == log1p and cfg.get("target_sum", 1e4) == 1e4 else None
                )
                model = _fit_gcng(work, gkey, fold.train, cfg, layer, normalize, seed + fold.fold, train_kwargs or {},
                                  model_norm)  # fmt: skip
                pred = model.predict(test[["ligand", "receptor"]].drop_duplicates())
                lookup = dict(zip(zip(pred["ligand"], pred["receptor"]), pred["score"]))
                score = np.array([lookup[p] for p in zip(test["ligand"], test["receptor"])])
                rep = _report(model, name, test)
                fit.append({"method": name, "fold": fold.fold, **{k: v for k, v in rep.items() if k != "model"}})
            elif kind == "gene_features":
                clf = _gene_feature_classifier(spec.get("classifier", "logistic"), seed + fold.fold)
                x_train = _pair_features(norm, adata.var_names, fold.train)
                clf.fit(x_train, fold.train["label"].to_numpy(int))
                score = clf.predict_proba(_pair_features(norm, adata.var_names, test))[:, 1]
                fit.append({"method": name, "fold": fold.fold, "n_train_pairs": len(fold.train), "n_val_pairs": 0,
                            "train_auroc": _auc(fold.train["label"].to_numpy(int), clf.predict_proba(x_train)[:, 1])[0],
                            "val_auroc": np.nan, "epochs": 0, "heldout_auroc": _auc(test["label"].to_numpy(int),
                            score)[0], "n_heldout_pairs": len(test)})  # fmt: skip
            else:
                lig = entity_expression(norm, adata.var_names, test["ligand"])
                rec = entity_expression(norm, adata.var_names, test["receptor"])
                score = lr_scores(lig, rec, kind, adj)
            results.append(test.assign(method=name, fold=fold.fold, score=score))
            if progress:
                logg.info(f"ligrec_cv: {name}, fold {fold.fold}: {len(test)} test pairs")
    out = pd.concat(results, ignore_index=True) if results else pd.DataFrame(
        columns=["ligand", "receptor", "label", "method", "fold", "score"]
    )  # fmt: skip
    out = out[["method", "fold", "ligand", "receptor", "label", "score", *(["group"] if "group" in out else [])]]
    out.attrs["folds"] = list(folds)
    out.attrs["n_pairs"] = n_pairs
    renames = {"heldout_auroc": "test_auroc", "n_heldout_pairs": "n_test_pairs"}
    # Plain lists, not a DataFrame: pandas compares attrs when concatenating, and DataFrames cannot be compared so.
    out.attrs["fit"] = pd.DataFrame(fit).rename(columns=renames).to_dict("list")
    return out


# ---------------------------------------------------------------------------------------------- function assignment
def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Gene sets from a GMT file (``name<TAB>description<TAB>gene1<TAB>gene2...``), e.g. MSigDB's.

    Parameters
    ----------
    path
        The GMT file; blank lines are skipped, a line with fewer than three tab-separated fields is a ValueError.

    Returns
    -------
    Gene set name → its genes (in file order): what :func:`gene_function_cv` and :func:`scst.pp.gene_groups`
    (``method="pathway"``) take as ``gene_sets``.
    """
    sets: dict[str, list[str]] = {}
    with open(path) as fh:
        for i, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not parts[0]:
                continue
            if len(parts) < 3:
                raise ValueError(f"{path}: line {i} has fewer than 3 tab-separated fields (name, description, genes).")
            sets[parts[0]] = [g for g in parts[2:] if g]
    return sets


def _as_sets(gene_sets: Any) -> dict[str, list[str]]:
    if isinstance(gene_sets, str | os.PathLike):  # a path; a missing file was "expected ... a GMT file path"
        if not os.path.exists(gene_sets):
            raise FileNotFoundError(f"gene_sets: no GMT file at {os.fspath(gene_sets)!r}.")
        return read_gmt(gene_sets)
    if isinstance(gene_sets, Mapping):
        return {str(k): [str(g) for g in v] for k, v in gene_sets.items()}
    if isinstance(gene_sets, Iterable) and not isinstance(gene_sets, str):
        return {"gene_set": [str(g) for g in gene_sets]}
    raise TypeError("gene_sets: expected a list of genes, a dict name → genes, or a GMT file path.")


def gene_function_cv(
    adata: AnnData | Any,
    gene_sets: Any,
    *,
    graph_key: str = "gcng_autocrine_plus",
    n_folds: int = 5,
    background_ratio: float = 4.0,
    top_fraction: float = 0.2,
    min_cells: int = 1,
    max_train_pairs: int | None = None,
    config: Mapping[str, Any] | None = None,
    layer: str | None = None,
    normalize: bool = True,
    seed: int = 0,
    train_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """GCNG function assignment versus guilt-by-association, with the paper's 5-fold CV.

    For each gene set ``S`` (genes present and detected in ``min_cells`` cells) and a background ``N`` of
    ``background_ratio × |S|`` random non-set detected genes, set and background genes are split into
    ``n_folds`` folds. In fold ``k``:

    - GCNG is trained on pairs of training set genes (positives, both orders) versus (training set gene,
      training background gene) pairs (negatives, one per positive);
    - every held-out candidate ``c`` (held-out set and background genes) is scored by its mean GCNG probability
      with the training set genes, ``mean_s GCNG(s, c)``; guilt-by-association (GBA) scores it by its mean Pearson
      correlation with them (on the same normalised expression);
    - the result is the fraction of held-out set genes ranked in the top ``top_fraction`` of the candidates
      (chance ≈ ``top_fraction``; 1 is reachable when set genes make up at most that share of the candidates).

    Parameters
    ----------
    adata
        AnnData with ``obsp[graph_key]``.
    gene_sets
        Genes (list), name → genes (dict), or a GMT file path (:func:`read_gmt`).
    graph_key
        GCNG graph matrix.
    n_folds
        Folds (paper: 5).
    background_ratio
        Non-set candidate genes per set gene.
    top_fraction
        Share of candidates counted as assigned (paper: 20 %).
    min_cells
        Genes must be detected in at least this many cells.
    max_train_pairs
        Use at most this many positive training pairs per fold (a random subset; ``None``: all ordered pairs of
        training set genes, as in the paper). Large sets give ``|S|²`` pairs; this bounds CPU time.
    config
        GCNG config (default ``GCNG.bench_config``).
    layer, normalize
        Expression (raw counts in ``layer`` scaled to 10,000 per cell).
    seed
        Seed.
    train_kwargs
        Extra :meth:`GCNG.train` arguments.

    Returns
    -------
    One row per gene set, fold and method (``"GCNG"``, ``"GBA"``): ``n_set_train``, ``n_set_test``,
    ``n_candidates``, ``n_top``, ``hits`` and ``fraction`` (held-out set genes in the top share / held-out set
    genes).
    """
    adata = _get_table(adata)
    config = dict(GCNG.bench_config if config is None else config)
    _check_key(adata.obsp, graph_key, "adata.obsp (compute it with scst.pp.graph_matrix)")
    sets = _as_sets(gene_sets)
    if layer is not None:
        _check_key(adata.layers, layer, "adata.layers (argument `layer`)")
    x = adata.X if layer is None else adata.layers[layer]
    detected = np.asarray((x > 0).sum(axis=0)).ravel() >= min_cells
    genes = pd.Index(map(str, adata.var_names))
    usable = set(genes[detected])
    norm = normalized_expression(adata, layer, normalize=normalize, log1p=bool(config.get("log1p", False)))
    rng = np.random.default_rng(seed)
    work = adata.copy()
    rows = []
    for set_name, members in sets.items():
        mapped = lr_pairs_in_genes(pd.DataFrame({"ligand": members, "receptor": members}), genes)["ligand"]
        s_genes = sorted(set(mapped) & usable)
        if len(s_genes) < 2 * n_folds:
            raise ValueError(
                f"gene_sets[{set_name!r}]: {len(s_genes)} genes are present and detected; need at least {2 * n_folds}."
            )
        others = np.array(sorted(usable - set(s_genes)), dtype=object)
        n_bg = min(len(others), int(round(background_ratio * len(s_genes))))
        bg = others[rng.choice(len(others), n_bg, replace=False)]
        s_fold = np.array_split(np.array(s_genes, dtype=object)[rng.permutation(len(s_genes))], n_folds)
        b_fold = np.array_split(bg[rng.permutation(len(bg))], n_folds)
        for k in range(n_folds):
            s_test, b_test = list(s_fold[k]), list(b_fold[k])
            s_train = [g for j in range(n_folds) if j != k for g in s_fold[j]]
            b_train = [g for j in range(n_folds) if j != k for g in b_fold[j]]
            pos = [(a, b) for i, a in enumerate(s_train) for b in s_train[i + 1 :]]
            pos += [(b, a) for a, b in pos]
            if max_train_pairs is not None and len(pos) > max_train_pairs:
                pos = [pos[i] for i in sorted(rng.choice(len(pos), max_train_pairs, replace=False))]
            neg_partner = rng.choice(np.array(b_train, dtype=object), len(pos))
            neg = [(a, str(n)) if rng.random() < 0.5 else (str(n), a) for (a, _), n in zip(pos, neg_partner)]
            train = pd.DataFrame(pos + neg, columns=["ligand", "receptor"]).assign(
                label=[1] * len(pos) + [0] * len(neg)
            )
            model = _fit_gcng(work, graph_key, train, config, layer, normalize, seed + k, train_kwargs or {}, norm)
            cands = s_test + b_test
            grid = pd.DataFrame([(s, c) for c in cands for s in s_train], columns=["ligand", "receptor"])
            pred = model.predict(grid)
            gcng_score = pred.groupby("receptor")["score"].mean().reindex(cands).to_numpy()
            es = entity_expression(norm, genes, s_train)
            ec = entity_expression(norm, genes, cands)
            corr = _zscore_cols(ec).T @ _zscore_cols(es) / es.shape[0]
            gba_score = corr.mean(axis=1)
            n_top = max(1, int(round(top_fraction * len(cands))))
            for method, score in (("GCNG", gcng_score), ("GBA", gba_score)):
                order = np.argsort(-score, kind="stable")[:n_top]
                hits = int(sum(cands[i] in set(s_test) for i in order))
                rows.append(
                    {
                        "gene_set": set_name,
                        "fold": k,
                        "method": method,
                        "n_set_train": len(s_train),
                        "n_set_test": len(s_test),
                        "n_candidates": len(cands),
                        "n_top": n_top,
                        "hits": hits,
                        "fraction": hits / len(s_test),
                    }
                )
    return pd.DataFrame(rows)


def _zscore_cols(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0, keepdims=True)
    return np.divide(x - x.mean(axis=0, keepdims=True), sd, out=np.zeros_like(x), where=sd > 0)
