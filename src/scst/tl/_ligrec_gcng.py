"""GCNG scores for ``scst.tl.ligand_receptor``: cross-fitted for known pairs, with fit reports and permutation nulls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import roc_auc_score

from .._logging import logg
from ..models._gcng import GCNG, sample_negatives
from ._ligrec_cv import _quiet
from ._ligrec_scores import section_permutations, tie_tolerance

__all__ = ["GCNGScores", "gcng_scores"]


@dataclass
class GCNGScores:
    """GCNG scores of candidate pairs: ``score``, ``in_training`` and ``model`` (which model scored each pair)."""

    table: pd.DataFrame
    models: list[GCNG]
    fit: list[dict[str, Any]] = field(default_factory=list)


def _auroc(model: GCNG, table: pd.DataFrame | None) -> float:
    if table is None or table.empty or table["label"].nunique() < 2:
        return float("nan")
    pred = model.predict(table[["ligand", "receptor"]].drop_duplicates())
    look = dict(zip(zip(pred["ligand"], pred["receptor"]), pred["score"]))
    return float(roc_auc_score(table["label"], [look[p] for p in zip(table["ligand"], table["receptor"])]))


def _fit(adata: AnnData, graph_key: str, train: pd.DataFrame, pool: Sequence[str], known: pd.DataFrame,
         config: Mapping[str, Any], layer: str | None, normalize: bool, seed: int,
         train_kwargs: Mapping[str, Any]) -> GCNG:  # fmt: skip
    GCNG.setup_anndata(adata, graph_key=graph_key, layer=layer, normalize=normalize)
    model = GCNG(adata, **{**dict(config), "seed": seed})
    neg = sample_negatives(train, pool, known=known, seed=seed)
    table = pd.concat([train[["ligand", "receptor"]].assign(label=1), neg[["ligand", "receptor", "label"]]])
    kw = {"enable_progress_bar": False, "accelerator": "cpu", **dict(train_kwargs)}
    with _quiet():
        model.train(table.reset_index(drop=True), **kw)
    return model


def _report(model: GCNG, name: str, heldout: pd.DataFrame | None = None) -> dict[str, Any]:
    hist = model.history
    row: dict[str, Any] = {
        "model": name,
        "n_train_pairs": int(len(model._train_split)),
        "n_val_pairs": int(0 if model._val_split is None else len(model._val_split)),
        "train_auroc": _auroc(model, model._train_split),
        "val_auroc": _auroc(model, model._val_split),
        "epochs": int(len(hist)) if hist is not None else 0,
    }
    if heldout is not None:
        row["heldout_auroc"] = _auroc(model, heldout)
        row["n_heldout_pairs"] = int(len(heldout))
    return row


def gcng_scores(
    adata: AnnData,
    candidates: pd.DataFrame,
    known: pd.DataFrame,
    *,
    graph_key: str,
    config: Mapping[str, Any],
    n_folds: int = 5,
    layer: str | None = None,
    normalize: bool = True,
    seed: int = 0,
    train_kwargs: Mapping[str, Any] | None = None,
) -> GCNGScores:
    """Cross-fitted GCNG scores: no pair is scored by a model that was fit on it.

    Known pairs are split into ``n_folds`` folds *by ligand* (a ligand's pairs stay together, as GCNG's validation
    split). The model of fold ``k`` is trained on the known pairs of the other folds, each with one random negative
    ``(L, R')`` (``R'`` any receptor of the candidates or known pairs not known to bind ``L``), and scores the known
    pairs of fold ``k`` (out-of-fold); it is also scored on them against negatives drawn the same way
    (``heldout_auroc``). Candidate pairs that are not known are scored by a
    model trained on all known pairs. ``in_training`` is True only where the scoring model saw the pair (a
    candidate drawn as one of its random negatives). The folds and the negatives follow ``seed`` *and* the order of
    the pairs (ligands are dealt to folds in the order they first appear): the same pairs in another order are
    another draw, like another seed.

    Parameters
    ----------
    adata
        Data with ``obsp[graph_key]`` (set up for GCNG in place).
    candidates, known
        Pairs present in the data (``ligand``, ``receptor``); ``known`` are the positives.
    graph_key, config, layer, normalize, seed, train_kwargs
        GCNG setup, config, and :meth:`GCNG.train` arguments.
    n_folds
        Cross-fitting folds (>= 2).

    Returns
    -------
    :class:`GCNGScores`: ``table`` (``candidates`` with ``score``, ``in_training``, ``model``), the models (folds
    first, then the model on all known pairs) and one fit report per model (``train_auroc``, ``val_auroc`` on its
    early-stopping split, ``heldout_auroc`` for fold models, pair counts, epochs).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds: expected >= 2 for cross-fitting, got {n_folds}.")
    known = known[["ligand", "receptor"]].drop_duplicates().reset_index(drop=True)
    # Folds hold out ligands with all their pairs; a pair listed both ways, (A, B) and (B, A), is one gene pair whose
    # two GCNG inputs are the same signals with the channels swapped, so A's and B's pairs share a fold (otherwise a
    # held-out pair's reverse trained the model that scores it).
    import networkx as nx

    pairs = set(zip(known["ligand"], known["receptor"]))
    linked = nx.Graph([(lig, rec) for lig, rec in pairs if (rec, lig) in pairs])
    linked.add_nodes_from(known["ligand"])
    component = {g: i for i, genes in enumerate(nx.connected_components(linked)) for g in genes}
    lig_group = known["ligand"].map(component)
    groups_ = lig_group.unique()
    if len(groups_) < n_folds:
        raise ValueError(
            f"known pairs: {len(groups_)} ligands (ligands listed as each other's receptors counted once) cannot fill "
            f"{n_folds} cross-fitting folds; lower `n_folds` or pass more known pairs."
        )
    rng = np.random.default_rng(seed)
    fold_of_group = dict(zip(groups_[rng.permutation(len(groups_))], np.arange(len(groups_)) % n_folds))
    fold = lig_group.map(fold_of_group).to_numpy()
    kw = dict(train_kwargs or {})
    pool = list(dict.fromkeys([*known["receptor"], *candidates["receptor"]]))
    models, fit = [], []
    known_key = set(zip(known["ligand"], known["receptor"]))
    scores = pd.Series(np.nan, index=pd.MultiIndex.from_frame(candidates[["ligand", "receptor"]]))
    which = pd.Series(-1, index=scores.index)
    for k in range(n_folds):
        train, held = known[fold != k], known[fold == k]
        if train["receptor"].nunique() < 2:
            raise ValueError(f"cross-fitting fold {k}: fewer than 2 training receptors; pass more known pairs.")
        model = _fit(adata, graph_key, train, pool, known, config, layer, normalize, seed + k, kw)
        neg = sample_negatives(held, pool, known=known, seed=seed + 100 + k)
        heldout = pd.concat([held.assign(label=1), neg[["ligand", "receptor", "label"]]], ignore_index=True)
        fit.append(_report(model, f"fold {k}", heldout))
        models.append(model)
        mine = [p for p in zip(held["ligand"], held["receptor"]) if p in scores.index]
        if mine:
            scores.loc[mine] = model.predict(pd.DataFrame(mine, columns=["ligand", "receptor"]))["score"].to_numpy()
            which.loc[mine] = k
    full = _fit(adata, graph_key, known, pool, known, config, layer, normalize, seed + n_folds, kw)
    fit.append(_report(full, "all known pairs"))
    models.append(full)
    new = [p for p in scores.index if p not in known_key]
    if new:
        scores.loc[new] = full.predict(pd.DataFrame(new, columns=["ligand", "receptor"]))["score"].to_numpy()
        which.loc[new] = n_folds
    seen = [set(zip(m.training_pairs["ligand"], m.training_pairs["receptor"])) for m in models]
    in_training = [p in seen[w] for p, w in zip(scores.index, which.to_numpy())]
    table = candidates.assign(score=scores.to_numpy(), in_training=in_training, model=which.to_numpy())
    logg.info(
        f"gcng_scores: {len(known)} known pairs cross-fitted over {n_folds} folds, {len(new)} new pairs by the model "
        f"on all; held-out AUROC {np.nanmean([f['heldout_auroc'] for f in fit[:-1]]):.3f}"
    )
    return GCNGScores(table, models, fit)


def gcng_null_pvalues(
    result: GCNGScores,
    *,
    groups: Sequence[Any] | None,
    n_perms: int,
    seed: int = 0,
    n_obs: int,
    null: str = "positions",
) -> np.ndarray:
    """Permutation p-values of GCNG scores: each pair re-scored by its own model on positions shuffled in sections.

    ``null="positions"``: ligand and receptor rows permuted together; ``"ligand"``: the ligand's rows only.
    """
    table = result.table
    observed = table["score"].to_numpy(np.float64)
    if n_perms <= 0:
        return np.full(len(table), np.nan)
    exceed = np.zeros(len(table), dtype=np.int64)
    groups_idx = {m: np.flatnonzero(table["model"].to_numpy() == m) for m in np.unique(table["model"])}
    for perm in section_permutations(groups, n_obs, n_perms, seed):
        for m, idx in groups_idx.items():
            pred = result.models[m].predict(
                table.iloc[idx][["ligand", "receptor"]], cell_order=perm, ligand_only=null == "ligand"
            )
            exceed[idx] += pred["score"].to_numpy() >= observed[idx] - tie_tolerance(observed[idx])
    return (1.0 + exceed) / (1.0 + n_perms)
