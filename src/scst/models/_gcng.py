"""GCNG (Yuan & Bar-Joseph, Genome Biology 2020): supervised ligand–receptor inference on a cell graph."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch.utils.data import DataLoader

from .._utils import _check_key, _positive_int
from ..datasets._ligand_receptor import _check_lr_table, complex_subunits, lr_pairs_in_genes
from ..nn._gcng import GCNGNet, _quiet_csr_notice
from ._base import BaseModel, _refuse_dataloader_kwargs

__all__ = ["GCNG", "normalized_expression", "entity_expression", "sample_negatives"]

#: GCNG's library size: counts are scaled to this total per cell.
TARGET_SUM = 1e4


# ---------------------------------------------------------------------------------------------- expression
def _matrix(adata: AnnData, layer: str | None) -> Any:
    if layer is None:
        return adata.X
    _check_key(adata.layers, layer, "adata.layers")
    return adata.layers[layer]


def _check_unique_var_names(adata: Any, where: str = "adata") -> None:
    """Genes are looked up by symbol: duplicated ``var_names`` are ambiguous, so reject them with the fix."""
    names = pd.Index(adata.var_names)
    if not names.is_unique:
        dup = names[names.duplicated()].unique()
        raise ValueError(
            f"{where}.var_names: {len(dup)} gene name(s) occur more than once (e.g. {list(map(str, dup[:5]))}); "
            f"genes are looked up by name. Make them unique first, e.g. `{where}.var_names_make_unique()`."
        )


def _check_values(x: Any, where: str, normalize: bool) -> None:
    """Reject negative/non-finite values; warn when data to be used as-is look like raw counts."""
    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size == 0:
        return
    if not np.isfinite(data).all():
        raise ValueError(f"{where} has NaN or infinite values; expected non-negative expression.")
    if data.min() < 0:
        raise ValueError(
            f"{where} has negative values (min {data.min():.3g}); GCNG expects counts or counts scaled per cell "
            "(not z-scores or scaled data)."
        )
    integer = np.array_equal(data[:100_000], np.round(data[:100_000]))
    if normalize and not integer:
        warnings.warn(
            f"{where} is not integer counts; it is still scaled to {TARGET_SUM:g} per cell. Pass the raw counts "
            "layer, or `normalize=False` for data that are already normalised.",
            stacklevel=3,
        )
    if not normalize and integer and data.max() > 50:
        warnings.warn(
            f"{where} looks like unnormalised counts (integers up to {data.max():.0f}) but `normalize=False`; "
            "GCNG scales counts to 10,000 per cell (`normalize=True`).",
            stacklevel=3,
        )


def normalized_expression(
    adata: AnnData,
    layer: str | None = None,
    *,
    normalize: bool = True,
    target_sum: float = TARGET_SUM,
    log1p: bool = False,
) -> sp.csc_matrix:
    r"""GCNG's expression: counts scaled to ``target_sum`` per cell (paper: 10,000), optionally ``log1p``.

    The paper uses :math:`x_{ij} = c_{ij} / \sum_j c_{ij} \cdot 10^4` without a log; ``log1p=True`` adds
    :math:`\log(1 + x)`, which keeps inputs in a range where a learning rate of 1e-3 trains (``bench_config``).
    The library size is taken over all genes of ``adata``. Cells with no counts stay 0.

    Parameters
    ----------
    adata
        Cells/spots × genes.
    layer
        Layer with raw counts (default ``X``).
    normalize
        Scale to ``target_sum`` per cell; ``False`` uses the values as they are (already normalised).
    target_sum
        Library size after scaling.
    log1p
        Apply ``log1p`` after scaling.

    Returns
    -------
    ``(n_obs, n_vars)`` :class:`scipy.sparse.csc_matrix` (float32), column slicing is cheap.
    """
    x = _matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    _check_values(x, where, normalize)
    x = sp.csr_matrix(x, dtype=np.float64)
    if normalize:
        tot = np.asarray(x.sum(axis=1)).ravel()
        scale = np.zeros_like(tot)
        np.divide(target_sum, tot, out=scale, where=tot > 0)
        x = sp.csr_matrix(sp.diags(scale) @ x)
    if log1p:
        x = x.log1p()
    return sp.csc_matrix(x, dtype=np.float32)


def entity_expression(norm: sp.spmatrix, var_names: Iterable[str], entities: Iterable[str]) -> np.ndarray:
    """Per-cell expression of ligand/receptor entities; a complex (``A_B``) is the minimum over its subunits.

    The minimum is liana's rule for complexes: a complex is only as available as its scarcest subunit.

    Parameters
    ----------
    norm
        ``(n_obs, n_vars)`` normalised expression (see :func:`normalized_expression`).
    var_names
        Gene symbols of ``norm``'s columns.
    entities
        Gene symbols or ``_``-joined complexes, spelled as in ``var_names``.

    Returns
    -------
    ``(n_obs, n_entities)`` float32 array.
    """
    index = pd.Index([str(v) for v in var_names])
    entities = [str(e) for e in entities]
    subunits = [complex_subunits(e) for e in entities]
    genes = list(dict.fromkeys(g for subs in subunits for g in subs))
    cols = index.get_indexer(genes)
    if (cols < 0).any():
        missing = [g for g, c in zip(genes, cols) if c < 0]
        raise KeyError(f"Entity subunit(s) not in var_names: {missing[:10]}.")
    # One column gather for all genes (per-entity sparse slicing dominates otherwise).
    block = sp.csc_matrix(norm)[:, cols].toarray().astype(np.float32, copy=False)
    pos = {g: i for i, g in enumerate(genes)}
    if all(len(subs) == 1 for subs in subunits):
        return np.ascontiguousarray(block[:, [pos[subs[0]] for subs in subunits]])
    out = np.empty((block.shape[0], len(entities)), dtype=np.float32)
    for j, subs in enumerate(subunits):
        out[:, j] = block[:, [pos[g] for g in subs]].min(axis=1)
    return out


# ---------------------------------------------------------------------------------------------- negatives
def _known_partners(known: pd.DataFrame | None) -> dict[str, set[str]]:
    partners: dict[str, set[str]] = {}
    if known is not None:
        for lig, rec in zip(known["ligand"].astype(str), known["receptor"].astype(str)):
            partners.setdefault(lig, set()).add(rec)
    return partners


def sample_negatives(
    positives: pd.DataFrame,
    receptors: Iterable[str],
    *,
    known: pd.DataFrame | None = None,
    n_per_positive: int = 1,
    expression: Mapping[str, float] | pd.Series | None = None,
    n_bins: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """GCNG's negatives: for each known pair ``(L, R)``, pairs ``(L, R')`` with ``R'`` not known to bind ``L``.

    Parameters
    ----------
    positives
        Known pairs (``ligand``, ``receptor``).
    receptors
        Pool of candidate receptors (GCNG: the receptors of the same fold's genes).
    known
        All known pairs; ``(L, R')`` in it is never a negative (default: ``positives``).
    n_per_positive
        Negatives per positive (paper: 1).
    expression
        Mean expression of each receptor. When given, ``R'`` is drawn from the same expression quantile bin
        (``n_bins`` bins over the pool) as ``R`` — *expression-matched* negatives, which remove the shortcut that
        random receptors are less expressed than real ones. When a bin has no valid candidate, the candidates
        nearest to ``R`` in expression rank are used.
    n_bins
        Quantile bins for ``expression``.
    seed
        Random seed.

    Returns
    -------
    DataFrame with ``ligand``, ``receptor``, ``label`` (0) and ``partner`` (the positive's receptor); a ligand
    receives distinct negatives while the pool allows. Positives without any valid candidate get none.
    """
    _check_lr_table(positives, "positives")
    pool = list(dict.fromkeys(str(r) for r in receptors))
    partners = _known_partners(positives if known is None else pd.concat([known, positives]))
    rng = np.random.default_rng(seed)
    rank = bins = None
    if expression is not None:
        expr = pd.Series(expression, dtype=float).reindex(pool)
        if expr.isna().any():
            raise KeyError(f"expression: no value for receptor(s) {list(expr.index[expr.isna()][:10])}.")
        rank = expr.rank(method="first").to_numpy() - 1
        bins = np.floor(rank * n_bins / max(len(pool), 1)).astype(int)
    index = {r: i for i, r in enumerate(pool)}
    used: dict[str, set[str]] = {}
    rows = []
    pool_arr = np.array(pool, dtype=object)
    for lig, rec in zip(positives["ligand"].astype(str), positives["receptor"].astype(str)):
        ok = np.ones(len(pool), dtype=bool)
        for r in partners.get(lig, set()) | {rec}:
            if r in index:
                ok[index[r]] = False
        if not ok.any():
            continue
        for _ in range(n_per_positive):
            cand = ok.copy()
            for r in used.get(lig, ()):
                cand[index[r]] = False
            if not cand.any():
                cand = ok
            if rank is not None:
                if rec in index:
                    r_rank, r_bin = rank[index[rec]], bins[index[rec]]
                else:  # partner outside the pool: place it by expression among the pool
                    v = float(pd.Series(expression)[rec])
                    r_rank = float((expr.to_numpy() < v).sum())
                    r_bin = int(np.floor(r_rank * n_bins / max(len(pool), 1)))
                same = cand & (bins == r_bin)
                if same.any():
                    cand = same
                else:  # nearest ranks among the valid candidates
                    dist = np.where(cand, np.abs(rank - r_rank), np.inf)
                    k = max(1, int(np.ceil(len(pool) / n_bins)))
                    cand = dist <= np.sort(dist)[min(k, int(cand.sum())) - 1]
            choice = str(rng.choice(pool_arr[cand]))
            used.setdefault(lig, set()).add(choice)
            rows.append((lig, choice, 0, rec))
    return pd.DataFrame(rows, columns=["ligand", "receptor", "label", "partner"])


# ---------------------------------------------------------------------------------------------- model
def _to_torch_sparse(m: sp.spmatrix) -> torch.Tensor:
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    with _quiet_csr_notice():
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data),
            size=m.shape,
            check_invariants=True,
        )


class _PairCollate:
    """Gather the ``(B, n_cells, 2)`` expression of a batch of pairs from one ``(n_cells, n_entities)`` matrix."""

    def __init__(
        self, expr: torch.Tensor, idx: torch.Tensor, y: torch.Tensor | None, ligand_order: torch.Tensor | None = None
    ) -> None:
        self.expr, self.idx, self.y, self.ligand_order = expr, idx, y, ligand_order

    def __call__(self, rows: list[int]) -> Any:
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        x = self.expr[:, self.idx[rows_t]].permute(1, 0, 2)  # (B, n, 2)
        if self.ligand_order is not None:  # the ligand's cells permuted, the receptor's kept
            x = torch.stack([x[:, self.ligand_order, 0], x[..., 1]], dim=-1)
        return x if self.y is None else (x, self.y[rows_t])


class GCNG(BaseModel):
    r"""GCNG: a graph convolutional network that scores gene pairs on a fixed cell graph.

    Input per pair: the cell graph matrix :math:`L` (``adata.obsp[graph_key]``, see
    :func:`scst.pp.graph_matrix`) and the ``cells × 2`` normalised expression of its ligand and receptor.
    Network (paper defaults): two 32-channel graph convolutions :math:`Z = \mathrm{elu}(L X W + b)`, flatten,
    a 512-unit ReLU layer, a sigmoid output; binary cross-entropy; early stopping on validation accuracy with
    patience half the epochs; Adam with learning rate 1e-6 and L2 ≈ 5e-7 (``weight_decay=1e-6``), batch 32,
    100 epochs, raw 10,000-scaled expression. Pairs are batched as one sparse graph times a batch of pair
    matrices. The flatten layer ties a trained model to its cells: predict on the same AnnData (cells), unless
    ``readout="pool"``.

    ``bench_config`` (CPU): 16 channels, a 128-unit dense layer, log1p features, Adam 1e-3, batch 64, 300 epochs
    without an early-stopping split (``validation=0``: the last epoch's weights are kept). Chosen on HER2+ training
    pairs by a fixed rule (the cheapest candidate whose training AUROC reaches 0.8; docs/benchmarks/ligrec_her2st.md,
    section 1): the network fits its training pairs (training AUROC 0.98 on C2), which the earlier 4-epoch setting
    did not. It still scores held-out genes at chance on HER2+ (docs/gcng.md). ``fast_config`` is that earlier
    setting (16 channels, dense 32, 4 epochs, patience 2 on the 20 % split; ~17× cheaper per fit): for smoke runs
    and tutorials; it does not fit HER2+'s interaction labels (training AUROC ≈ 0.51).

    ``pooled_config`` (scst's deviation from the paper): the flatten layer replaced by the mean and max of each
    channel over the cells (``readout="pool"``) and each pair's input standardised over the cells
    (``standardize=True``); 32 channels, a 128-unit dense layer, Adam 3e-3, batch 16, 200 epochs. The flatten
    layer gives every cell its own weights, so the paper's network learns *where* its training pairs interact and
    cannot transfer to pairs whose signal sits in other cells; the pooled network learns *how* ligand and
    receptor are arranged, and is not tied to a cell set (train on one section, score another). Chosen on a
    second simulated tissue (docs/benchmarks/ligrec.md): held-out AUROC 0.95 on juxtacrine pairs where the
    paper's network stays at 0.50–0.55.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    **config
        ``hidden_channels``, ``n_layers``, ``dense_units``, ``dropout``, ``readout`` (``"flatten"``/``"pool"``),
        ``standardize``, ``log1p``, ``target_sum`` and the training
        settings ``max_epochs``, ``patience``, ``batch_size``, ``lr``, ``weight_decay``, ``validation`` (fraction of
        the training ligands held out for early stopping, see :meth:`train`), ``seed``.

    Examples
    --------
    >>> scst.pp.cell_graph(adata, grid=True)  # ST spots; or radius=... for cells
    >>> scst.pp.graph_matrix(adata, "autocrine+")
    >>> scst.models.GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    >>> model = scst.models.GCNG(adata, **scst.models.GCNG.bench_config)
    >>> model.train(pairs)  # known pairs; one random negative per positive is drawn
    >>> scores = model.predict(candidates)
    """

    _module_cls = GCNGNet
    _default_config: ClassVar[dict[str, Any]] = {
        "hidden_channels": 32,
        "n_layers": 2,
        "dense_units": 512,
        "dropout": 0.0,
        "readout": "flatten",
        "standardize": False,
        "log1p": False,
        "target_sum": TARGET_SUM,
        "max_epochs": 100,
        "patience": 50,
        "batch_size": 32,
        "lr": 1e-6,
        "weight_decay": 1e-6,
        "validation": 0.2,
    }
    bench_config: ClassVar[dict[str, Any]] = {
        "hidden_channels": 16,
        "dense_units": 128,
        "log1p": True,
        "max_epochs": 300,
        "patience": 300,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "validation": 0.0,
    }
    fast_config: ClassVar[dict[str, Any]] = {
        "hidden_channels": 16,
        "dense_units": 32,
        "log1p": True,
        "max_epochs": 4,
        "patience": 2,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }
    pooled_config: ClassVar[dict[str, Any]] = {
        "hidden_channels": 32,
        "dense_units": 128,
        "readout": "pool",
        "standardize": True,
        "log1p": True,
        "max_epochs": 200,
        "patience": 100,
        "batch_size": 16,
        "lr": 3e-3,
        "weight_decay": 0.0,
    }
    _monitor = "val_accuracy"
    _monitor_mode = "max"

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        graph_key: str = "gcng_autocrine_plus",
        layer: str | None = None,
        *,
        normalize: bool = True,
    ) -> None:
        """Register the graph matrix and the expression layer.

        Parameters
        ----------
        adata
            Cells/spots × genes.
        graph_key
            ``adata.obsp`` key of the graph matrix (:func:`scst.pp.graph_matrix`: ``gcng_autocrine_plus``,
            ``gcng_exocrine``, ``gcng_diagonal``, ``gcng_laplacian``).
        layer
            Layer with raw counts (default ``X``).
        normalize
            Scale counts to 10,000 per cell (the paper); ``False`` for data normalised already.
        """
        if not isinstance(adata, AnnData):
            raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
        _check_unique_var_names(adata)
        _check_key(adata.obsp, graph_key, "adata.obsp (compute it with scst.pp.graph_matrix)")
        g = adata.obsp[graph_key]
        if g.shape != (adata.n_obs, adata.n_obs):
            raise ValueError(f"adata.obsp[{graph_key!r}] has shape {g.shape}; expected ({adata.n_obs}, {adata.n_obs}).")
        _check_values(_matrix(adata, layer), "adata.X" if layer is None else f"adata.layers[{layer!r}]", normalize)
        cls._register(
            adata,
            {
                "graph_key": graph_key,
                "layer": layer,
                "normalize": bool(normalize),
                "n_obs": int(adata.n_obs),
                "obs_names": [str(o) for o in adata.obs_names],
            },
        )

    def __init__(self, adata: AnnData, **config: Any) -> None:
        found = self._find_adata(adata)
        if self._read_registry(found) is not None:  # a copy or subset of set-up data carries its parent's cells
            self._register_cells(found)
        super().__init__(adata, **config)
        self._set_graph()

    @classmethod
    def _register_cells(cls, adata: AnnData) -> None:
        """Make the registry on ``adata`` name *its* cells (count and order), as ``setup_anndata`` would.

        ``adata[perm].copy()`` or a subset keeps the parent's ``uns`` and so a registry naming the parent's cells:
        a flatten model built on it recorded the wrong cell order (loading it on the parent passed silently, on its
        own data warned), a subset failed on the graph shape.
        """
        reg = cls._read_registry(adata)
        names = [str(o) for o in adata.obs_names]
        if reg.get("n_obs") != adata.n_obs or reg.get("obs_names") != names:
            cls._register(adata, {**reg, "n_obs": int(adata.n_obs), "obs_names": names})

    # -------------------------------------------------------------------------------- hooks
    def _module_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {
            "n_nodes": self.registry["n_obs"],
            "in_channels": 2,
            "hidden_channels": c["hidden_channels"],
            "n_layers": c["n_layers"],
            "dense_units": c["dense_units"],
            "dropout": c["dropout"],
            "readout": c["readout"],
            "standardize": c["standardize"],
        }

    def _validate_data(self, adata: Any) -> None:
        _check_unique_var_names(adata, "data")
        _check_key(adata.obsp, self.registry["graph_key"], "adata.obsp")
        if self.config.get("readout", "flatten") == "pool":  # not tied to the cells: any section with the graph
            return
        if adata.n_obs != self.registry["n_obs"]:
            raise ValueError(
                f"`data` has {adata.n_obs} cells; this GCNG was built for {self.registry['n_obs']} (its flatten layer "
                "is tied to the cell set; `readout='pool'` is not)."
            )
        if list(map(str, adata.obs_names)) != self.registry["obs_names"]:
            warnings.warn("`data` has other obs_names than the data GCNG was set up with.", stacklevel=3)

    def _attach(self, data: Any) -> None:
        super()._attach(data)
        # the saved registry written to another cell set (or to these cells in another order): its own cells
        self._register_cells(self.adata)
        self._set_graph()

    def _extra_state(self) -> dict[str, Any]:
        # The labelled pairs the weights were fit on (training and validation split), so that scores of those
        # pairs can be flagged as in-sample after `load` (``scst.tl.ligand_receptor``'s ``in_training``).
        table = getattr(self, "_fit_table", None)
        if table is None:
            return dict(getattr(self, "extra", {}) or {})
        tables = [table] + ([self._val_table] if getattr(self, "_val_table", None) is not None else [])
        t = pd.concat(tables, ignore_index=True)
        return {"fit_pairs": [[str(a), str(b), int(c)] for a, b, c in zip(t["ligand"], t["receptor"], t["label"])]}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        super()._set_extra_state(state)
        if state.get("fit_pairs"):
            self._fit_table = pd.DataFrame(state["fit_pairs"], columns=["ligand", "receptor", "label"])
            self._val_table = None

    @property
    def training_pairs(self) -> pd.DataFrame:
        """The labelled pairs the model was fit on; empty before training.

        ``ligand``, ``receptor``, ``label``: training and validation split, positives and drawn negatives.
        """
        table = getattr(self, "_fit_table", None)
        if table is None:
            return pd.DataFrame(columns=["ligand", "receptor", "label"])
        val = getattr(self, "_val_table", None)
        return pd.concat([table] + ([val] if val is not None else []), ignore_index=True)

    def _set_graph(self) -> None:
        self._expr_cache = None
        self.module.set_graph(_to_torch_sparse(self.adata.obsp[self.registry["graph_key"]]))

    # -------------------------------------------------------------------------------- expression
    def _normalized(self) -> tuple[sp.csc_matrix, pd.Index]:
        if getattr(self, "_expr_cache", None) is None:
            norm = normalized_expression(
                self.adata,
                self.registry["layer"],
                normalize=self.registry["normalize"],
                target_sum=float(self.config["target_sum"]),
                log1p=bool(self.config["log1p"]),
            )
            self._expr_cache = (norm, pd.Index(map(str, self.adata.var_names)))
        return self._expr_cache

    def _present(self, pairs: pd.DataFrame, what: str, arg: str = "pairs") -> pd.DataFrame:
        """Pairs measured in the data (renamed to its symbols); report skipped pairs, error when none remain."""
        _check_lr_table(pairs, arg)
        present = lr_pairs_in_genes(pairs, self.adata.var_names)
        # Genes match case-insensitively: pairs spelled in two cases are one pair, not one present and one skipped.
        lower = pd.DataFrame({c: pairs[c].astype(str).str.lower() for c in ("ligand", "receptor")})
        n_skip = len(lower.drop_duplicates()) - len(present)
        if len(present) == 0:
            raise ValueError(
                f"None of the {len(pairs)} {what} pairs (`{arg}`) has both genes (all subunits) in adata.var_names."
            )
        if n_skip:
            warnings.warn(f"GCNG: skipped {n_skip} {what} pair(s) with genes absent from the data.", stacklevel=3)
        return present

    def _pair_tensors(self, table: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        entities = list(dict.fromkeys([*table["ligand"], *table["receptor"]]))
        norm, var = self._normalized()
        expr = torch.from_numpy(entity_expression(norm, var, entities))
        col = {e: i for i, e in enumerate(entities)}
        idx = torch.as_tensor(np.column_stack([table["ligand"].map(col), table["receptor"].map(col)]), dtype=torch.long)
        return expr, idx

    # -------------------------------------------------------------------------------- training
    def training_table(
        self,
        pairs: pd.DataFrame,
        *,
        negatives_per_positive: int = 1,
        receptors: Iterable[str] | None = None,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Labelled training pairs: ``pairs`` with a ``label`` column as given, else positives plus negatives.

        Without ``label``, every pair is a positive and :func:`sample_negatives` draws
        ``negatives_per_positive`` random receptors (from ``receptors``, default the pairs' receptors) not known to
        bind the ligand. A pair given more than once keeps its first row; one labelled both 1 and 0 is an error.
        """
        return self._labelled(pairs, "pairs", negatives_per_positive, receptors, seed)

    def _labelled(
        self, pairs: pd.DataFrame, arg: str, negatives_per_positive: int, receptors: Iterable[str] | None,
        seed: int | None,
    ) -> pd.DataFrame:  # fmt: skip
        """:meth:`training_table` of ``arg`` of :meth:`train` (``pairs`` or ``validation``), named in its errors."""
        present = self._present(pairs, "training" if arg == "pairs" else arg, arg)
        if "label" in present:
            # a pair given twice (genes match case-insensitively) with both labels: not one of them kept silently
            key = [pairs[c].astype(str).str.lower() for c in ("ligand", "receptor")]
            n_labels = pd.to_numeric(pairs["label"], errors="coerce").groupby(key).nunique()
            clash = n_labels[n_labels > 1]
            if len(clash):
                raise ValueError(
                    f"{arg}['label']: {len(clash)} pair(s) are labelled both 1 and 0 (e.g. {list(clash.index[:5])}); "
                    "give each pair one label."
                )
            lab = pd.to_numeric(present["label"], errors="coerce")
            if lab.isna().any() or not lab.isin([0, 1]).all():
                raise ValueError(f"{arg}['label'] must be 0 or 1.")
            if lab.nunique() < 2:
                raise ValueError(f"{arg}['label'] has a single class; GCNG needs positives and negatives.")
            return present.assign(label=lab.astype(int))[["ligand", "receptor", "label"]]
        pool = present["receptor"] if receptors is None else lr_pairs_in_genes(
            pd.DataFrame({"ligand": list(receptors), "receptor": list(receptors)}), self.adata.var_names
        )["receptor"]  # fmt: skip
        seed = int(self.config["seed"] if seed is None else seed)
        neg = sample_negatives(present, pool, n_per_positive=negatives_per_positive, seed=seed)
        if neg.empty:
            raise ValueError(f"{arg}: no negative pair could be drawn: every candidate receptor is a known partner.")
        pos = present[["ligand", "receptor"]].assign(label=1)
        return pd.concat([pos, neg[["ligand", "receptor", "label"]]], ignore_index=True)

    def train(
        self,
        pairs: pd.DataFrame,
        *,
        validation: float | pd.DataFrame | None | str = "config",
        negatives_per_positive: int = 1,
        max_epochs: int | None = None,
        patience: int | None = None,
        **kwargs: Any,
    ) -> GCNG:
        """Train on labelled gene pairs.

        Parameters
        ----------
        pairs
            ``ligand``, ``receptor`` and optionally ``label`` (1 interacting, 0 not). Without ``label`` all pairs
            are positives and random negatives are added (see :meth:`training_table`). Pairs whose genes are not
            in the data are skipped with a warning. The minibatches and the validation draw follow ``seed`` and the
            order of the rows: the same pairs in another order train like another seed.
        validation
            Fraction of the *ligands* whose pairs form the validation set (early stopping on validation accuracy;
            grouping by ligand mimics GCNG's split, which took the first 20 % of its ligand-ordered pairs), a
            labelled DataFrame of validation pairs (a warning when some are also training pairs), or ``None``/0
            for none. ``"config"`` (default): the model's ``validation`` setting (0.2, the paper's; 0 in
            ``bench_config``). Pairs of a single ligand cannot be split: they train without validation, with a
            warning.
        negatives_per_positive
            Negatives per positive when ``pairs`` has no ``label``.
        max_epochs, patience
            When ``max_epochs`` is given without ``patience``, patience is half of it (the paper's rule).
        **kwargs
            Passed to :meth:`scst.models.BaseModel.train` (``batch_size``, ``lr``, ``accelerator``, ``seed``...).

        Returns
        -------
        ``self``.
        """
        seed = kwargs.get("seed")
        self._fit_table = self.training_table(pairs, negatives_per_positive=negatives_per_positive, seed=seed)
        self._val_table = None
        if isinstance(validation, str) and validation == "config":
            validation = self.config.get("validation", 0.2)
        if isinstance(validation, pd.DataFrame):
            self._val_table = self._labelled(validation, "validation", negatives_per_positive, None, seed)
            fit = set(zip(self._fit_table["ligand"], self._fit_table["receptor"]))
            n_both = sum(p in fit for p in zip(self._val_table["ligand"], self._val_table["receptor"]))
            if n_both:  # early stopping on pairs the weights are fit on: it selects fit, not prediction
                warnings.warn(
                    f"validation: {n_both} of its {len(self._val_table)} pairs are also training pairs; early stopping "
                    "on them measures fit, not prediction. Give validation pairs that are not in `pairs`.",
                    stacklevel=2,
                )
            validation = -1.0
        elif validation is None:
            validation = 0.0
        elif isinstance(validation, str) or not 0 <= float(validation) < 1:
            raise ValueError(f"validation: expected a fraction in [0, 1) or a DataFrame, got {validation!r}.")
        if max_epochs is not None and patience is None:
            patience = max(1, int(max_epochs) // 2)
        return super().train(max_epochs=max_epochs, patience=patience, validation=float(validation), **kwargs)

    def _split(self, table: pd.DataFrame, frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        ligands = table["ligand"].unique()
        rng = np.random.default_rng(seed)
        ligands = ligands[rng.permutation(len(ligands))]
        counts = table["ligand"].value_counts().reindex(ligands).to_numpy()
        n_val = int(np.searchsorted(np.cumsum(counts), frac * len(table)) + 1)
        val_lig = set(ligands[: min(n_val, len(ligands) - 1)])
        is_val = table["ligand"].isin(val_lig)
        return table[~is_val], table[is_val]

    def _loader(
        self, table: pd.DataFrame, batch_size: int, shuffle: bool, seed: int, labels: bool, cell_order: Any = None,
        ligand_only: bool = False,
    ) -> DataLoader:  # fmt: skip
        expr, idx = self._pair_tensors(table)
        lig_order = None
        if cell_order is not None:
            order = torch.as_tensor(np.asarray(cell_order), dtype=torch.long)
            if ligand_only:
                lig_order = order
            else:
                expr = expr[order]
        y = torch.as_tensor(table["label"].to_numpy(), dtype=torch.float32) if labels else None
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            range(len(table)),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=gen,
            collate_fn=_PairCollate(expr, idx, y, lig_order),
        )

    def _dataloaders(
        self, batch_size: int, validation: Any, seed: int, **kwargs: Any
    ) -> tuple[DataLoader, DataLoader | None]:
        _refuse_dataloader_kwargs(self, kwargs)  # the loaders batch in-memory pair tensors here
        table = getattr(self, "_fit_table", None)
        if table is None:
            raise RuntimeError("Call `GCNG.train(pairs)`: the training pairs are given to `train`.")
        frac = 0.2 if validation is None else float(validation)
        if frac < 0:
            train_t, val_t = table, self._val_table
        elif frac > 0 and table["ligand"].nunique() > 1:
            train_t, val_t = self._split(table, frac, seed)
        else:
            if frac > 0:  # asked for early stopping, which holds out whole ligands
                warnings.warn(
                    f"validation: the training pairs have a single ligand ({table['ligand'].iloc[0]!r}) and the "
                    f"validation split holds out whole ligands; training on all pairs without validation (no early "
                    f"stopping, the last epoch's weights are kept). Pass `validation=0` to silence this.",
                    stacklevel=3,
                )
            train_t, val_t = table, None
        if train_t["label"].nunique() < 2:
            raise ValueError("The training split has a single class; use more pairs or a smaller `validation`.")
        self._train_split, self._val_split = train_t, val_t  # for fit reports (scst.tl.ligand_receptor)
        train_dl = self._loader(train_t, batch_size, True, seed, True)
        val_dl = None if val_t is None or val_t.empty else self._loader(val_t, batch_size, False, seed, True)
        return train_dl, val_dl

    # -------------------------------------------------------------------------------- inference
    def predict(
        self, pairs: pd.DataFrame, batch_size: int = 256, cell_order: Any = None, ligand_only: bool = False
    ) -> pd.DataFrame:
        """Interaction probability of each gene pair.

        Parameters
        ----------
        pairs
            ``ligand`` and ``receptor`` columns (other columns are kept). Pairs with genes absent from the data are
            skipped with a warning; an error is raised when none remain.
        batch_size
            Pairs per forward pass.
        cell_order
            A permutation of the cells: cell ``i`` gets the expression of cell ``cell_order[i]`` (the graph stays),
            i.e. positions shuffled — the permutation null of :func:`scst.tl.ligand_receptor`.
        ligand_only
            Apply ``cell_order`` to the ligand's expression only (the receptor stays): ligand–receptor association
            broken, each gene's own arrangement kept. Requires ``cell_order``.

        Returns
        -------
        The present pairs (symbols as in ``adata.var_names``) with a ``score`` column in [0, 1]. An untrained
        model is an error (its scores would come from random weights).
        """
        if self.adata is None:
            raise ValueError("This GCNG has no data; load it with `GCNG.load(dir, data=adata)`.")
        if not self.is_trained:
            raise RuntimeError(
                "This GCNG is not trained: its scores would come from random weights. Call `model.train(pairs)` "
                "first (or load a trained model)."
            )
        batch_size = _positive_int("batch_size", batch_size)
        present = self._present(pairs, "candidate")
        if ligand_only and cell_order is None:  # nothing would be shuffled: the plain scores, not a null
            raise ValueError("ligand_only: applies `cell_order` to the ligand; pass `cell_order` too.")
        if cell_order is not None and sorted(np.asarray(cell_order).tolist()) != list(range(self.adata.n_obs)):
            raise ValueError(f"cell_order: expected a permutation of the {self.adata.n_obs} cells.")
        loader = self._loader(present, batch_size, False, 0, False, cell_order, ligand_only)
        out = self._inference(loader, lambda m, x: m.predict_proba(x))
        return present.assign(score=torch.cat(out).numpy().astype(np.float64))
