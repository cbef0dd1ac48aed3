"""Honest baselines for histology → expression: training mean, ridge on patch features, ST-Net (end-to-end CNN).

All three follow the surface of :class:`scst.models.HGGEP` / :class:`scst.models.TCGN`, so one
leave-one-section-out loop serves every model::

    Model.setup_sdata(sdata, sections=train_sections)     # or setup_anndata(adata, ...) for Ridge / Mean
    model = Model(sdata, **config).train()
    pred = model.predict(sdata, sections=test_section)      # (n_spots, n_genes), log1p(normalize_total 1e4)

:class:`MeanExpression` and :class:`RidgeExpression` are closed-form: they keep the scst model surface
(``setup_anndata``/``setup_sdata``, ``Model(data, **config)``, ``train``, ``predict``, ``save``/``load``,
``history``) without Lightning or torch, and save as ``attr.json`` + ``params.npz``. :class:`STNet` is a
:class:`~scst.models.BaseModel` (Lightning training, safetensors checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._constants import SECTION_KEY, TABLE_KEY
from .._logging import logg
from .._normalize import log_normalized, raw_counts
from .._utils import _check_key, _colwise_pearson, _embedding_record, _get_table, _obsm_features
from ..nn._backbones import build_backbone, load_backbone_weights
from ._base import _jsonable, _read_model_attrs, _scst_version, _SetupRegistry, _training_grid_step, _write_model_dir
from ._image import _check_sections, _ImageModel, _training_sections
from ._image import _resolve_panel as _resolve_panel_and_key
from ._tcgn import TCGN, _spot_dataloaders

__all__ = ["MeanExpression", "RidgeExpression", "STNet", "build_backbone", "load_backbone_weights"]

PARAMS_FILE = "params.npz"
_UNITS = "log1p(normalize_total(target_sum=1e4))"


# --------------------------------------------------------------------------------------------------------------
# Closed-form baselines
# --------------------------------------------------------------------------------------------------------------
def _resolve_panel(adata: Any, genes: Any) -> list[str]:
    return _resolve_panel_and_key(adata, genes)[0]


class _ClosedFormModel(_SetupRegistry):
    """Registry, save/load and prediction plumbing of the closed-form baselines."""

    _default_config: ClassVar[dict[str, Any]] = {}
    bench_config: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------ setup
    @classmethod
    def _base_registry(cls, adata: Any, genes: Any, layer: str | None, sections: Any) -> dict[str, Any]:
        _check_key(adata.obs, SECTION_KEY, "adata.obs")
        if layer is not None:
            _check_key(adata.layers, layer, "adata.layers")

        raw_counts(adata, layer, f"{cls.__name__}.setup_anndata")
        sections = _check_sections(adata, sections)
        return {
            "var_names": _resolve_panel(adata, genes),
            "layer": layer,
            "sections": sections,
            # the default pseudo-spot spacing of scst.tl.predict_expression (as the image models record it)
            "grid_step_um": _training_grid_step(adata, sections),
        }

    @classmethod
    def setup_sdata(cls, sdata: Any, table: str = TABLE_KEY, **kwargs: Any) -> None:
        """Set up ``sdata.tables[table]`` with :meth:`setup_anndata` (``kwargs`` are passed on)."""
        adata = _get_table(sdata, table)
        cls.setup_anndata(adata, **kwargs)
        cls._register(adata, {**cls._read_registry(adata), "table": table})

    # ------------------------------------------------------------------ construction
    def __init__(self, data: Any, **config: Any) -> None:
        adata = self._find_adata(data)
        registry = self._read_registry(adata)
        if registry is None:
            kind = "setup_sdata(sdata)" if hasattr(data, "tables") else "setup_anndata(adata)"
            raise ValueError(
                f"`data` is not set up for {type(self).__name__}; call "
                f"`scst.models.{type(self).__name__}.{kind}` first."
            )
        self.data, self.adata, self.registry = data, adata, registry
        self.config = self._merge_config(config)
        self.params: dict[str, np.ndarray] = {}
        self.history: pd.DataFrame | None = None
        self._is_trained = False
        self._check_config()

    def _check_config(self) -> None:
        """Validate ``self.config`` at construction (subclasses), so a bad setting fails before any work."""

    @property
    def var_names(self) -> list[str]:
        """Gene panel predicted by the model."""
        return list(self.registry["var_names"])

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` ran (or a trained model was loaded)."""
        return self._is_trained

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}: {v}" for k, v in self.config.items())
        status = "Trained" if self.is_trained else "Not trained"
        return f"{type(self).__name__} ({len(self.var_names)} genes; {cfg or 'no config'}); {status}"

    def _targets(self, rows: np.ndarray) -> np.ndarray:
        """Training targets (target unit) of table rows ``rows`` for the panel."""
        missing = [g for g in self.var_names if g not in self.adata.var_names]
        if missing:
            raise ValueError(f"The training table lacks {len(missing)} panel genes: {missing[:20]}")
        return log_normalized(self.adata[rows], self.var_names, self.registry["layer"]).astype(np.float64)

    def _train_rows(self) -> np.ndarray:
        if self.adata is None:
            raise ValueError(f"This {type(self).__name__} has no data; load it with `data=` to train again.")
        sections = _training_sections(self, self.adata)
        sec = self.adata.obs[SECTION_KEY].astype(str).to_numpy()
        return np.flatnonzero(np.isin(sec, sections))

    def _predict_rows(self, data: Any, sections: Any, table: str | None) -> tuple[Any, np.ndarray]:
        data = self.data if data is None else data
        if data is None:
            raise ValueError(f"data: this {type(self).__name__} has no data attached; pass an AnnData or SpatialData.")
        adata = _get_table(data, table or self.registry.get("table") or TABLE_KEY) if hasattr(data, "tables") else data
        _check_key(adata.obs, SECTION_KEY, "adata.obs")
        sections = _check_sections(adata, sections)
        sec = adata.obs[SECTION_KEY].astype(str).to_numpy()
        return adata, np.flatnonzero(np.isin(sec, sections))

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise ValueError(f"This {type(self).__name__} is not trained; call `train()` first.")

    # ------------------------------------------------------------------ save / load
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def save(self, dir_path: str | Path, overwrite: bool = False) -> None:
        """Write ``attr.json`` (config, registry, state) and ``params.npz`` (arrays) to ``dir_path`` atomically.

        Parameters
        ----------
        dir_path
            Output directory (written to a temporary directory, then renamed).
        overwrite
            Replace an existing ``dir_path``, if it is a saved model folder or empty (a folder of other files is
            never deleted: an error).
        """
        self._require_trained()
        attrs = {
            "model": type(self).__name__,
            "scst_version": _scst_version(),
            "units": _UNITS,
            "config": self.config,
            "registry": self.registry,
            "extra": _jsonable(self._extra_state(), f"{type(self).__name__} state"),
        }

        def payload(tmp: Path) -> None:
            with open(tmp / PARAMS_FILE, "wb") as fh:
                np.savez(fh, **self.params)

        _write_model_dir(dir_path, overwrite, attrs, payload)

    @classmethod
    def load(cls, dir_path: str | Path, data: Any = None) -> _ClosedFormModel:
        """Rebuild a model written by :meth:`save`; ``data`` (optional) is attached for further prediction.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        data
            AnnData / SpatialData to attach (its table gets the saved registry when it is not set up).
        """
        dir_path = Path(dir_path)
        attrs = _read_model_attrs(dir_path, PARAMS_FILE, required=("model", "config", "registry"))
        if attrs.get("model") != cls.__name__:
            raise ValueError(f"{str(dir_path)!r} holds a {attrs.get('model')!r} model, not {cls.__name__!r}.")
        model = cls.__new__(cls)
        model.config, model.registry = attrs["config"], attrs["registry"]
        try:
            # the file opened here: np.load leaves its own handle open when the archive is unreadable
            with open(dir_path / PARAMS_FILE, "rb") as fh, np.load(fh, allow_pickle=False) as f:
                model.params = {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, zlib.error, EOFError, ValueError, ...
            raise ValueError(
                f"{dir_path / PARAMS_FILE} is truncated or corrupt ({type(e).__name__}: {e}); save the model again."
            ) from e
        model.history, model._is_trained = None, True
        model._set_extra_state(attrs.get("extra", {}))
        model.data = model.adata = None
        if data is not None:
            adata = cls._find_adata(
                data, (model.registry.get("table") or TABLE_KEY) if hasattr(data, "tables") else None
            )
            if cls._read_registry(adata) is None:
                cls._register(adata, model.registry)
            model.data, model.adata = data, adata
        return model


class MeanExpression(_ClosedFormModel):
    """Predict every spot as the mean expression of the training spots (per gene).

    The floor every histology model must beat on MSE. Its predictions are constant within a section, so
    correlation metrics score it 0 (see :func:`scst.tl.evaluate_expression`).

    Parameters
    ----------
    data
        AnnData / SpatialData set up with :meth:`setup_anndata` / :meth:`setup_sdata`.
    **config
        None: the mean has no settings, and any key is a ValueError naming it.

    Examples
    --------
    >>> scst.pp.select_genes(adata, sections=["C2", "C3", "C4", "C5"])  # the panel without C6
    >>> MeanExpression.setup_anndata(adata, sections=["C2", "C3", "C4", "C5"])
    >>> pred = MeanExpression(adata).train().predict(sections="C6")
    """

    @classmethod
    def setup_anndata(
        cls,
        adata: Any,
        genes: str | Sequence[str] | None = "highly_variable_scst",
        *,
        layer: str | None = None,
        sections: str | Sequence[str] | None = None,
    ) -> None:
        """Register the gene panel and the training sections.

        Parameters
        ----------
        adata
            Raw counts in ``X`` (or ``layer``), ``obs["section"]``.
        genes
            Panel: boolean ``var`` column (default ``"highly_variable_scst"``), list of genes, boolean mask of
            length ``n_vars``, or None (all).
        layer
            Layer with raw counts.
        sections
            Training sections; default all. Leave the test section out.
        """
        cls._register(adata, cls._base_registry(adata, genes, layer, sections))

    def train(self) -> MeanExpression:
        """Average the training sections' ``log1p(normalize_total 1e4)`` expression per gene; returns ``self``."""
        rows = self._train_rows()
        self.params = {"mean": self._targets(rows).mean(0).astype(np.float32)}
        self._is_trained = True
        logg.info(f"MeanExpression: mean of {len(rows)} spots of {self.registry['sections']}")
        return self

    def predict(
        self, data: Any = None, sections: str | Sequence[str] | None = None, *, table: str | None = None
    ) -> np.ndarray:
        """Training mean for every spot of ``sections`` (default all) of ``data`` (default the model's data).

        Returns
        -------
        float32 ``(n_spots, n_genes)``, rows in table order.
        """
        self._require_trained()
        _, rows = self._predict_rows(data, sections, table)
        return np.repeat(self.params["mean"][None], len(rows), axis=0)


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0  # constant features: centred to 0
    return mean, scale


def _svd_fit(xs: np.ndarray, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD pieces of the standardised design: ridge coefficients for any alpha are V diag(s/(s²+α)) Uᵀy."""
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    return s, vt, u.T @ yc


def ridge_fit(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    alphas: Sequence[float],
    alpha_per_gene: bool = True,
    n_inner_splits: int = 5,
) -> dict[str, Any]:
    """Multi-output ridge on standardised features, penalties chosen by an inner CV grouped by ``groups``.

    Returns ``x_mean``, ``x_scale``, ``coef`` ``(n_features, n_genes)``, ``intercept``, ``alpha`` (per gene),
    ``alphas``, ``cv_mse`` and ``cv_folds``; the prediction is ``((x - x_mean) / x_scale) @ coef + intercept``.
    Used by :class:`RidgeExpression` and as the linear path of the feature heads (``ridge_skip``).
    """
    from sklearn.model_selection import GroupKFold

    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or (alphas <= 0).any():
        raise ValueError(f"alphas: expected a non-empty list of positive penalties, got {alphas.tolist()}.")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_groups = len(np.unique(groups))
    cv_folds: list[dict[str, list[str]]] = []
    cv_mse = np.zeros((len(alphas), y.shape[1]))
    if len(alphas) > 1:
        if n_groups < 2:
            raise ValueError(
                f"RidgeExpression: choosing alpha needs >= 2 training sections for the grouped inner CV, got "
                f"{n_groups}; pass a single penalty, e.g. `alphas=[100.0]`."
            )
        cv = GroupKFold(n_splits=min(int(n_inner_splits), n_groups))
        for tr, va in cv.split(x, y, groups):
            cv_folds.append({"train": sorted(set(groups[tr])), "val": sorted(set(groups[va]))})
            mean, scale = _standardize(x[tr])
            ymean = y[tr].mean(0)
            s, vt, uty = _svd_fit((x[tr] - mean) / scale, y[tr] - ymean)
            a = ((x[va] - mean) / scale) @ vt.T  # (n_va, k)
            for i, alpha in enumerate(alphas):
                pred = (a * (s / (s**2 + alpha))) @ uty + ymean
                cv_mse[i] += ((pred - y[va]) ** 2).sum(0)
        cv_mse /= len(x)
        best = cv_mse.argmin(0) if alpha_per_gene else np.full(y.shape[1], cv_mse.mean(1).argmin())
    else:
        best = np.zeros(y.shape[1], dtype=int)
    mean, scale = _standardize(x)
    ymean = y.mean(0)
    coef = _ridge_coef(*_svd_fit((x - mean) / scale, y - ymean), alphas[best])
    return {
        "x_mean": mean,
        "x_scale": scale,
        "coef": coef,
        "intercept": ymean,
        "alpha": alphas[best],
        "alphas": alphas,
        "cv_mse": cv_mse.mean(1) if len(alphas) > 1 else np.full(1, np.nan),
        "cv_folds": cv_folds,
    }


def _ridge_coef(s: np.ndarray, vt: np.ndarray, uty: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Ridge coefficients ``(n_features, n_genes)`` from the SVD pieces, one penalty per gene (``alpha``)."""
    coef = np.empty((vt.shape[1], uty.shape[1]))
    for a in np.unique(alpha):
        g = alpha == a
        coef[:, g] = vt.T @ ((s / (s**2 + a))[:, None] * uty[:, g])
    return coef


#: Numbers of expression programmes tried by ``n_programs="auto"``.
PROGRAM_CANDIDATES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)


def expression_programs(y: np.ndarray, k: int, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` leading expression programmes of ``y`` (spots × genes): principal axes of the per-gene z-scores.

    Returns the orthonormal axes ``(n_genes, k)`` and the per-gene mean and sd used for the z-scores (sd of a
    constant gene set to 1). The axes are the leading eigenvectors of the genes' correlation matrix, accumulated
    over ``chunk`` spots at a time: memory grows with genes², not with spots × genes (no copy of ``y``).
    """
    y = np.asarray(y)
    n, g = y.shape
    mean = y.mean(0, dtype=np.float64)
    gram = np.zeros((g, g))
    for start in range(0, n, chunk):
        block = y[start : start + chunk].astype(np.float64) - mean
        gram += block.T @ block
    sd = np.sqrt(np.maximum(np.diag(gram), 0.0) / n)
    sd = np.where(sd > 1e-8, sd, 1.0)
    _, vecs = np.linalg.eigh(gram / np.outer(sd, sd))  # ascending eigenvalues
    return np.ascontiguousarray(vecs[:, ::-1][:, :k]), mean, sd


def _check_n_programs(value: Any, n_genes: int) -> int | str | None:
    """Validate ``n_programs`` (None, ``"auto"`` or an int in ``[1, n_genes]``)."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= n_genes:
        raise ValueError(f'n_programs: expected None, "auto" or an int in [1, {n_genes}] (genes), got {value!r}.')
    return int(value)


def choose_n_programs(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    alpha: np.ndarray,
    candidates: Sequence[int] = PROGRAM_CANDIDATES,
    n_inner_splits: int = 5,
) -> tuple[int, dict[int, float]]:
    """Number of expression programmes for reduced-rank prediction, chosen by an inner CV grouped by section.

    In each inner fold, ridge (penalties ``alpha``, one per gene) is fitted on the other sections and its
    held-out predictions are projected onto the ``k`` leading programmes of the fitting sections'
    expression (``expression_programs``); ``k`` maximises the held-out mean per-gene Pearson correlation,
    averaged over folds. Returns the chosen ``k`` and the score of every candidate.
    """
    from sklearn.model_selection import GroupKFold

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(
            f'n_programs="auto" needs >= 2 training sections for the grouped inner CV, got {n_groups}; '
            "pass an int (e.g. `n_programs=5`) or None."
        )
    cv = GroupKFold(n_splits=min(int(n_inner_splits), n_groups))
    folds = list(cv.split(x, y, groups))
    limit = min(y.shape[1], *(len(tr) for tr, _ in folds))
    cands = sorted({int(k) for k in candidates if 1 <= int(k) <= limit})
    if not cands:
        raise ValueError(f"candidates: none of {list(candidates)} lies in [1, {limit}] (genes, fitting spots).")
    scores = np.zeros(len(cands))
    for tr, va in folds:
        mean, scale = _standardize(x[tr])
        ymean = y[tr].mean(0)
        pred = ((x[va] - mean) / scale) @ _ridge_coef(*_svd_fit((x[tr] - mean) / scale, y[tr] - ymean), alpha)
        axes, _, sd = expression_programs(y[tr], cands[-1])
        z = pred / sd  # centred: the fitting mean is the intercept
        for j, k in enumerate(cands):
            scores[j] += np.nanmean(_colwise_pearson(z @ axes[:, :k] @ axes[:, :k].T, y[va])) / len(folds)
    return cands[int(np.argmax(scores))], dict(zip(cands, scores.tolist()))


class RidgeExpression(_ClosedFormModel):
    """Ridge regression from patch features (an ``obsm`` embedding) to each gene's expression.

    Features are standardised with the training spots' mean and standard deviation; the ridge penalty is chosen
    per gene (or shared, ``alpha_per_gene=False``) by an inner cross-validation **grouped by section over the
    training sections only** (:class:`sklearn.model_selection.GroupKFold`; leave-one-section-out when there are
    at most ``n_inner_splits`` training sections; with more, GroupKFold balances the folds by spot count and
    places sections of equal size by their sorted names, so renaming such sections can change the folds and the
    penalties), minimising the held-out MSE; the model is then refit on all training spots. The held-out test
    section never enters standardisation, penalty choice or fit.

    With ``n_programs`` the prediction is *reduced-rank*: projected onto the leading expression programmes of the
    training spots (principal axes of the per-gene z-scores), so every gene is predicted through the few programmes
    that the image can inform, and a weakly predictable gene borrows from the genes it co-varies with. ``"auto"``
    chooses their number by the same grouped inner CV (held-out mean per-gene Pearson correlation, ridge refitted
    without each training section in turn). The projection is folded into ``coef``; ``params["program_axes"]``
    ``(n_genes, k)`` and ``params["program_sd"]`` keep the programmes (scores of a prediction ``p``:
    ``((p - intercept) / program_sd) @ program_axes``).

    Parameters
    ----------
    data
        AnnData / SpatialData set up with :meth:`setup_anndata` / :meth:`setup_sdata`.
    **config
        ``alphas`` (penalties tried, default ``10 ** arange(-1, 6.5, 0.5)``), ``alpha_per_gene`` (True),
        ``n_inner_splits`` (5), ``n_programs`` (None: plain ridge; an int, or ``"auto"``: reduced-rank, see above).

    Attributes
    ----------
    cv_folds
        After :meth:`train`: per inner fold, the sections fitted (``"train"``) and scored (``"val"``).
    cv_results
        After :meth:`train`: DataFrame indexed by alpha with the inner-CV MSE (mean over genes) and how many
        genes chose it.

    Examples
    --------
    >>> scst.pp.select_genes(sdata.tables["table"], sections=["C2", "C3", "C4", "C5"])  # the panel without C6
    >>> scst.tl.embed_patches(sdata, "handcrafted")
    >>> RidgeExpression.setup_sdata(sdata, embedding_key="X_handcrafted", sections=["C2", "C3", "C4", "C5"])
    >>> pred = RidgeExpression(sdata).train().predict(sections="C6")
    """

    _default_config: ClassVar[dict[str, Any]] = {
        "alphas": [float(a) for a in 10.0 ** np.arange(-1, 6.5, 0.5)],
        "alpha_per_gene": True,
        "n_inner_splits": 5,
        "n_programs": None,
    }

    def _check_config(self) -> None:
        _check_n_programs(self.config["n_programs"], len(self.var_names))

    @classmethod
    def setup_anndata(
        cls,
        adata: Any,
        embedding_key: str = "X_resnet18",
        genes: str | Sequence[str] | None = "highly_variable_scst",
        *,
        layer: str | None = None,
        sections: str | Sequence[str] | None = None,
    ) -> None:
        """Register the feature key, the gene panel and the training sections.

        Parameters
        ----------
        adata
            Raw counts in ``X`` (or ``layer``), ``obs["section"]`` and the features in ``obsm[embedding_key]``.
        embedding_key
            ``obsm`` key of the patch features, e.g. from :func:`scst.tl.embed_patches` (``"X_resnet18"``,
            ``"X_handcrafted"``).
        genes
            Panel: boolean ``var`` column (default ``"highly_variable_scst"``), list of genes, boolean mask of
            length ``n_vars``, or None (all).
        layer
            Layer with raw counts.
        sections
            Training sections; default all. Leave the test section out.
        """
        _check_key(adata.obsm, embedding_key, "adata.obsm (argument `embedding_key`; run scst.tl.embed_patches first)")
        reg = cls._base_registry(adata, genes, layer, sections)
        sec = adata.obs[SECTION_KEY].astype(str).to_numpy()
        train_rows = np.flatnonzero(np.isin(sec, reg["sections"]))  # checked there: finite
        feats = _obsm_features(adata, embedding_key, rows=train_rows, arg="embedding_key")
        cls._register(adata, {**reg, "embedding_key": embedding_key, "n_features": int(feats.shape[1]),
                              "embedding": _embedding_record(adata, embedding_key)})  # fmt: skip

    def _features(self, adata: Any, rows: np.ndarray) -> np.ndarray:
        key, n = self.registry["embedding_key"], self.registry["n_features"]
        return _obsm_features(adata, key, n, rows, arg="embedding_key", dtype=np.float64)

    def train(self) -> RidgeExpression:
        """Choose the penalties by grouped inner CV on the training sections, then fit them all; returns ``self``."""
        rows = self._train_rows()
        x, y = self._features(self.adata, rows), self._targets(rows)
        groups = self.adata.obs[SECTION_KEY].astype(str).to_numpy()[rows]
        fit = ridge_fit(
            x, y, groups, self.config["alphas"], self.config["alpha_per_gene"], int(self.config["n_inner_splits"])
        )
        self.cv_folds = fit.pop("cv_folds")
        k = _check_n_programs(self.config["n_programs"], y.shape[1])
        if k is not None:
            scores = {}
            if k == "auto":
                k, scores = choose_n_programs(
                    x, y, groups, fit["alpha"], n_inner_splits=int(self.config["n_inner_splits"])
                )
            axes, _, sd = expression_programs(y, k)
            # p ↦ ((p - mean) / sd) @ axes @ axesᵀ * sd + mean, folded into the coefficients (the intercept is the mean)
            fit["coef"] = (fit["coef"] / sd) @ axes @ axes.T * sd
            fit["n_programs"] = np.asarray(k)
            fit["program_axes"], fit["program_sd"] = axes, sd  # programme scores: ((pred - intercept) / sd) @ axes
            fit["program_cv_k"] = np.asarray(list(scores), dtype=np.int64)
            fit["program_cv_pcc"] = np.asarray(list(scores.values()), dtype=np.float64)
        self.params = fit
        self._is_trained = True
        best = fit["alpha"]
        logg.info(
            f"RidgeExpression: {x.shape[1]} features → {y.shape[1]} genes on {len(rows)} spots of "
            f"{self.registry['sections']}; {len(self.cv_folds)} inner folds grouped by section, median alpha "
            f"{np.median(best):.3g}"
        )
        return self

    def _extra_state(self) -> dict[str, Any]:
        return {"cv_folds": self.cv_folds}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.cv_folds = list(state.get("cv_folds", []))

    @property
    def n_programs_(self) -> int | None:
        """Number of expression programmes of the trained model (None: plain ridge)."""
        return int(self.params["n_programs"]) if "n_programs" in self.params else None

    @property
    def cv_results(self) -> pd.DataFrame:
        """Inner-CV MSE per alpha (mean over genes) and the number of genes that chose each alpha."""
        self._require_trained()
        alphas = self.params["alphas"]
        chosen = [(self.params["alpha"] == a).sum() for a in alphas]
        return pd.DataFrame(
            {"cv_mse": self.params["cv_mse"] if len(alphas) > 1 else np.nan, "n_genes": chosen},
            index=pd.Index(alphas, name="alpha"),
        )

    def predict(
        self, data: Any = None, sections: str | Sequence[str] | None = None, *, table: str | None = None
    ) -> np.ndarray:
        """Predicted expression of the panel for every spot of ``sections`` (default all) of ``data``.

        Parameters
        ----------
        data
            AnnData / SpatialData with ``obsm[embedding_key]`` and ``obs["section"]``; default the model's data.
        sections
            Sections to predict.
        table
            Table key when ``data`` is a SpatialData (default: the registry's, else ``"table"``).

        Returns
        -------
        float32 ``(n_spots, n_genes)`` in ``log1p(normalize_total 1e4)`` units, rows in table order.
        """
        self._require_trained()
        adata, rows = self._predict_rows(data, sections, table)
        x = self._features(adata, rows)
        p = self.params
        return (((x - p["x_mean"]) / p["x_scale"]) @ p["coef"] + p["intercept"]).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# ST-Net
# --------------------------------------------------------------------------------------------------------------
class STNetModule(nn.Module):
    """ST-Net: an ImageNet-style CNN (DenseNet-121 in the paper) with a linear gene head, trained with MSE.

    Parameters
    ----------
    n_genes
        Genes predicted.
    backbone
        torchvision / timm model name (see :func:`scst.nn.build_backbone`).
    weights
        Backbone weights: None (random init, with a warning), a weights name (``"IMAGENET1K_V1"``, ``"pretrained"``)
        or a local state_dict file (see :func:`scst.nn.build_backbone`).
    """

    def __init__(self, n_genes: int, backbone: str = "densenet121", weights: str | None = None):
        super().__init__()
        self.encoder, dim = build_backbone(backbone, weights, where="weights")
        self.head = nn.Linear(dim, int(n_genes))

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` ImageNet-normalised patches → ``{"pred": (B, n_genes)}``."""
        return {"pred": self.head(self.encoder(patches))}

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MSE between predictions and ``batch["target"]`` (log1p(normalize_total 1e4))."""
        pred = self(batch["patches"])["pred"]
        return {"loss": F.mse_loss(pred, batch["target"])}


class STNet(_ImageModel):
    """ST-Net (He et al. 2020): a DenseNet-121 fine-tuned end to end from a spot's H&E patch to its expression.

    Patches are ``size_um`` squares (80 µm, set in :meth:`setup_sdata`) resized to ``patch_px`` (224; bench
    112), augmented with random flips and 90° rotations, ImageNet-normalised; the loss is the MSE on
    ``log1p(normalize_total 1e4)`` panel expression. As in the paper the default starts from torchvision's
    ImageNet weights (``weights="IMAGENET1K_V1"``, downloaded once into ``$TORCH_HOME``); ``bench_config`` uses
    ``weights=None`` (random initialisation: no downloads on the benchmark machines).

    Parameters
    ----------
    data
        SpatialData set up with :meth:`setup_sdata` (``table``, ``genes``, ``size_um``, ``sections``,
        ``patch_px`` — None follows ``config["patch_px"]``).
    **config
        ``backbone`` (``"densenet121"``; any torchvision/timm name), ``weights`` (``"IMAGENET1K_V1"``; None,
        a weights name or a local state_dict file, see :func:`scst.nn.build_backbone`), ``patch_px`` (224),
        ``augment`` (True), ``patch_cache_mb`` (2048) and the training keys (``max_epochs`` 50, ``batch_size`` 32,
        ``lr`` 1e-4, ``patience`` 5, ...).

    Examples
    --------
    >>> scst.pp.select_genes(sdata.tables["table"], sections=["C2", "C3", "C4", "C5"])  # the panel without C6
    >>> STNet.setup_sdata(sdata, sections=["C2", "C3", "C4", "C5"])
    >>> model = STNet(sdata, **STNet.bench_config).train()
    >>> pred = model.predict(sdata, sections="C6")
    """

    _module_cls = STNetModule
    _default_patch_px = None
    _default_config: ClassVar[dict[str, Any]] = {
        "backbone": "densenet121",
        "weights": "IMAGENET1K_V1",
        "patch_px": 224,
        "augment": True,
        "patch_cache_mb": 2048.0,
        "max_epochs": 50,
        "batch_size": 32,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "patience": 5,
    }
    #: Small CPU setting: ResNet-18 on 112 px patches, random initialisation (no weights can be downloaded there).
    bench_config: ClassVar[dict[str, Any]] = {
        "backbone": "resnet18",
        "weights": None,
        "patch_px": 112,
        "max_epochs": 5,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "patience": 3,
    }

    @property
    def patch_px(self) -> int:
        """Patch edge in pixels fed to the network (registry ``patch_px``, else ``config["patch_px"]``)."""
        px = self.registry.get("patch_px")
        return int(px if px is not None else self.config["patch_px"])

    def _module_kwargs(self) -> dict[str, Any]:
        kw = {"n_genes": len(self.registry["var_names"]), "backbone": self.config["backbone"]}
        return {**kw, "weights": self.config["weights"]}

    def _dataloaders(self, batch_size: int, validation: Any, seed: int, **kwargs: Any):
        return _spot_dataloaders(self, batch_size, validation, seed, kwargs, torch.Generator().manual_seed(seed))

    _predict_section = TCGN._predict_section  # one spot per patch, as TCGN
