"""Expression models trained on frozen per-spot embeddings (``obsm``): HGGEP's spatial head and an MLP head.

Any encoder can feed them: ``scst.tl.embed_patches`` (hand-crafted features, torchvision/timm backbones with
ImageNet, foundation-model or self-supervised weights from :func:`scst.tl.pretrain_encoder`) or embeddings computed
elsewhere. Only the head is trained, so a CPU trains it for as many epochs as the papers use.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import sparse
from torch.utils.data import DataLoader, Dataset

from .._constants import SECTION_KEY, SPATIAL_KEY, TABLE_KEY
from .._normalize import panel_targets, raw_counts
from .._utils import _check_key, _embedding_record, _get_table, _obsm_features, _plain, _positive_int
from ..nn._heads import MLPHeadModule, SpatialHeadModule
from ._base import BaseModel, _refuse_dataloader_kwargs, _training_grid_step
from ._image import (
    _RAW_HINT,
    _check_sections,
    _resolve_panel,
    _tiling_windows,
    _training_sections,
    _validation_sections,
    _warn_no_counts,
    _WindowDataset,
)

__all__ = ["HGGEPHead", "MLPExpression"]


def _positions(adata: Any, spatial_key: str, rows: np.ndarray) -> np.ndarray:
    """The spot centres of ``rows`` that cut HGGEPHead's windows: present, one row per spot, finite."""
    x = _obsm_features(adata, spatial_key, None, rows, arg="spatial_key", hint="the spot centres",
                       fix="fix their centres", dtype=np.float64)  # fmt: skip
    return x[:, :2]


class _Spots(Dataset):
    """Spot-wise items (MLP head): one standardised embedding and target row per spot."""

    def __init__(self, x: np.ndarray, target: np.ndarray):
        self.x, self.target = torch.from_numpy(x), torch.from_numpy(target)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "target": self.target[i]}


def _sub_hyperedges(incidence: sparse.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    """``[spot, hyperedge]`` index of the hyperedges centred on ``rows``, restricted to members in ``rows``."""
    sub = incidence[rows][:, rows].tocoo()
    return torch.from_numpy(np.stack([sub.row, sub.col]).astype(np.int64))


class _Windows(_WindowDataset):
    """Spatial-head batches: the standardised embeddings, hyperedges and targets of one window's spots."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sec, idx = self._window(i)
        return {
            "x": torch.from_numpy(sec.x[idx]),
            "hyperedge_index": _sub_hyperedges(sec.incidence, idx),
            "target": torch.from_numpy(sec.target[idx]),
            "counts": torch.from_numpy(sec.counts[idx]),
            "size_factors": torch.from_numpy(sec.size_factors[idx]),
        }


class _FeatureModel(BaseModel):
    """Setup, standardisation, loaders and prediction shared by the heads on ``obsm`` embeddings."""

    _monitor: ClassVar[str] = "val_mse"
    _spatial: ClassVar[bool] = False
    _std: dict[str, list[float]] | None = None

    @classmethod
    def setup_anndata(
        cls,
        adata: Any,
        use_rep: str,
        genes: str | Sequence[str] | None = "highly_variable_scst",
        *,
        layer: str | None = None,
        sections: str | Sequence[str] | None = None,
        hypergraph_key: str = "hypergraph_incidence",
        spatial_key: str = SPATIAL_KEY,
    ) -> None:
        """Register the embedding, the gene panel and the training sections.

        Parameters
        ----------
        adata
            Raw counts in ``X`` (or ``layer``), ``obs["section"]`` and the embedding in ``obsm[use_rep]``.
        use_rep
            ``obsm`` key of the per-spot embedding (e.g. ``"X_handcrafted"`` or ``"X_resnet18"`` from
            :func:`scst.tl.embed_patches`).
        genes
            Panel: boolean ``var`` column (default ``"highly_variable_scst"``), list of genes, boolean mask of
            length ``n_vars``, or None (all).
        layer
            Layer with raw counts; None: ``X``.
        sections
            Training sections (validation is drawn from them); default all. Leave the test section out.
        hypergraph_key
            (:class:`HGGEPHead` only) ``obsp`` key of the hypergraph incidence from :func:`scst.pp.hypergraph`.
        spatial_key
            (:class:`HGGEPHead` only) ``obsm`` key of the spot centres (windows are cut with them).
        """
        if not hasattr(adata, "obsm"):
            raise TypeError(f"adata: expected an AnnData, got {type(adata).__name__}.")
        _check_key(adata.obs, SECTION_KEY, "adata.obs")
        if layer is not None:
            _check_key(adata.layers, layer, "adata.layers")
        raw_counts(adata, layer, f"{cls.__name__}.setup_anndata", hint=_RAW_HINT)
        sections = _check_sections(adata, sections)
        rows = np.flatnonzero(adata.obs[SECTION_KEY].astype(str).isin(sections).to_numpy())
        x = _obsm_features(adata, use_rep, rows=rows)
        panel, genes_key = _resolve_panel(adata, genes)
        # How the embedding was made (scst.tl.embed_patches) lets predict_expression recompute it on an H&E-only
        # slide; embeddings from elsewhere leave it None (such slides then need the embedding in obsm). The training
        # grid step is that slide's default pseudo-spot spacing.
        reg = {"use_rep": use_rep, "n_features": int(x.shape[1]), "var_names": panel, "genes_key": genes_key,
               "layer": layer, "sections": sections, "embedding": _embedding_record(adata, use_rep),
               "grid_step_um": _training_grid_step(adata, sections)}  # fmt: skip
        if cls._spatial:
            if hypergraph_key not in adata.obsp:
                raise KeyError(
                    f"hypergraph_key: {hypergraph_key!r} not in adata.obsp ({list(adata.obsp)}); run "
                    f"`scst.pp.hypergraph(adata, use_rep={use_rep!r})` first."
                )
            _positions(adata, spatial_key, rows)
            hg = adata.uns.get(hypergraph_key.removesuffix("_incidence"), {}).get("params")
            reg.update(hypergraph_key=hypergraph_key, spatial_key=spatial_key, hypergraph_params=_plain(hg))
        cls._register(adata, reg)

    # ------------------------------------------------------------------ properties
    @property
    def var_names(self) -> list[str]:
        """Gene panel predicted by the model."""
        return list(self.registry["var_names"])

    #: ``n_programs`` chosen at training (``"auto"``) and the inner-CV score of every candidate, ``[[k, pcc], ...]``.
    n_programs_: int | None = None
    program_cv_: list[list[float]] | None = None

    def _extra_state(self) -> dict[str, Any]:
        return {"var_names": self.var_names, "standardisation": self._std,
                "units": "log1p(normalize_total(target_sum=1e4))", "n_programs": self.n_programs_,
                "program_cv": self.program_cv_}  # fmt: skip

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        super()._set_extra_state(state)
        self._std = state.get("standardisation")
        self.n_programs_, self.program_cv_ = state.get("n_programs"), state.get("program_cv")

    def _programs_kwarg(self) -> int | None:
        """Module size of the programme output: None, the given int, or the largest ``"auto"`` candidate."""
        from ._baselines import PROGRAM_CANDIDATES, _check_n_programs

        n_genes = len(self.registry["var_names"])
        k = _check_n_programs(self.config["n_programs"], n_genes)
        return min(max(PROGRAM_CANDIDATES), n_genes) if k == "auto" else k

    # ------------------------------------------------------------------ data
    def _section(self, adata: Any, section: str, with_targets: bool) -> Any:
        import types

        rows = np.flatnonzero(adata.obs[SECTION_KEY].astype(str).to_numpy() == section)
        sec = types.SimpleNamespace(name=section, rows=rows)
        sec.x = _obsm_features(adata, self.registry["use_rep"], self.registry["n_features"], rows)
        if self._spatial:
            key = self.registry["hypergraph_key"]
            if key not in adata.obsp:
                raise KeyError(f"data: obsp lacks {key!r}; run `scst.pp.hypergraph(adata, use_rep=...)` first.")
            sec.incidence = sparse.csr_matrix(adata.obsp[key])[rows][:, rows].tocsr()
            sec.positions = _positions(adata, self.registry["spatial_key"], rows)
        if with_targets:
            sec.target, sec.counts, sec.lib = panel_targets(adata, self.registry["layer"], self.var_names, rows)
            keep = sec.lib > 0  # spots without counts in the panel have no target: out of fitting and its statistics
            if not keep.all():
                _warn_no_counts(section, keep)
                for name in ("rows", "x", "target", "counts", "lib") + (("positions",) if self._spatial else ()):
                    setattr(sec, name, getattr(sec, name)[keep])
                if self._spatial:
                    sec.incidence = sec.incidence[keep][:, keep].tocsr()
        return sec

    def _standardise(self, sections: list) -> None:
        """Feature and target mean/sd over the spots used for fitting (set once, before the first training)."""
        x = np.concatenate([s.x for s in sections])
        y = np.concatenate([s.target for s in sections])
        fsd, ysd = x.std(0), y.std(0)
        self._std = {
            "x_mean": x.mean(0).tolist(), "x_sd": np.where(fsd > 1e-8, fsd, 1.0).tolist(),
            "y_mean": y.mean(0).tolist(), "y_sd": np.where(ysd > 1e-8, ysd, 1.0).tolist(),
        }  # fmt: skip

    def _apply_std(self, sec: Any) -> None:
        st = self._std
        sec.x = ((sec.x - np.asarray(st["x_mean"], np.float32)) / np.asarray(st["x_sd"], np.float32)).astype(np.float32)
        if hasattr(sec, "target"):
            sec.target = (sec.target - np.asarray(st["y_mean"], np.float32)) / np.asarray(st["y_sd"], np.float32)
            sec.target = sec.target.astype(np.float32)

    def _dataloaders(self, batch_size: int, validation: Any, seed: int, **kwargs: Any):
        _refuse_dataloader_kwargs(self, kwargs)

        adata = self.adata
        missing = [g for g in self.var_names if g not in adata.var_names]
        if missing:
            raise ValueError(f"The training table lacks {len(missing)} panel genes: {missing[:20]}")
        sections = _training_sections(self, adata)
        train, val = _validation_sections(type(self).__name__, sections, validation, seed)
        self.validation_sections_ = list(val)  # what train() held out (cross_validate records it per fold)
        secs = {s: self._section(adata, s, True) for s in train + val}
        if not self.is_trained or getattr(self, "_std", None) is None:
            self._standardise([secs[s] for s in train])
        lib = np.concatenate([secs[s].lib for s in train])
        for s in secs.values():
            self._apply_std(s)
            s.size_factors = (s.lib / np.median(lib)).astype(np.float32)
        if not self.is_trained:
            self._init_zinb_bias([secs[s] for s in train])
            # By default the closed-form parts use every training section, the validation one included (it then
            # also steers the network's early stopping); linear_on_validation=False keeps it out of them, so the
            # validation MSE the checkpoint is chosen on is out of sample. The test section is never among them.
            fit_on = train + val if self.config["linear_on_validation"] else train
            self._init_linear_parts([secs[s] for s in fit_on])
        return self._loaders([secs[s] for s in train], [secs[s] for s in val], batch_size)

    def _init_zinb_bias(self, sections: list) -> None:
        zinb = getattr(self.module, "zinb_mean", None)
        if zinb is None:
            return
        rate = np.concatenate([s.counts / s.size_factors[:, None] for s in sections]).mean(0)
        with torch.no_grad():
            zinb.bias.copy_(torch.from_numpy(np.log(np.maximum(rate, 1e-5))).to(zinb.bias))

    def _init_linear_parts(self, sections: list) -> None:
        """Set the closed-form parts from the (standardised) spots of ``sections``.

        The frozen linear path becomes ridge (penalties by grouped CV), the programme axes the leading expression
        programmes (their number by grouped CV for ``"auto"``).
        """
        skip, programs = getattr(self.module, "skip", None), getattr(self.module, "programs", None)
        if skip is None and programs is None:
            return
        from ._baselines import PROGRAM_CANDIDATES, RidgeExpression, choose_n_programs, expression_programs, ridge_fit

        x = np.concatenate([s.x for s in sections])
        y = np.concatenate([s.target for s in sections])
        groups = np.concatenate([np.full(len(s.x), s.name) for s in sections])
        alphas = RidgeExpression._default_config["alphas"]
        k = self.config["n_programs"]
        if len(sections) < 2:
            fixed = ([] if skip is None else ["the ridge path's penalty at 100"]) + (
                [f"the number of programmes at {min(5, programs.k)}"] if k == "auto" else []
            )
            if fixed:
                warnings.warn(
                    f"{type(self).__name__}: one training section; a grouped CV cannot choose anything, so "
                    f"{' and '.join(fixed)} are fixed.",
                    UserWarning,
                    stacklevel=3,
                )
            alphas, k = [100.0], (min(5, programs.k) if k == "auto" else k)
        # Ridge is needed for the linear path and for choosing the number of programmes, not for a given number.
        fit = ridge_fit(x, y, groups, alphas) if skip is not None or k == "auto" else None
        if programs is not None:
            self.program_cv_ = None
            if k == "auto":
                cands = [c for c in PROGRAM_CANDIDATES if c <= programs.k]
                k, scores = choose_n_programs(x, y, groups, fit["alpha"], cands)
                self.program_cv_ = [[c, round(v, 5)] for c, v in scores.items()]
            self.n_programs_ = int(k)
            programs.set_axes(*(torch.from_numpy(a) for a in expression_programs(y, int(k))))
        if skip is not None:
            weight = fit["coef"] / fit["x_scale"][:, None]  # on the unscaled input: ((x - m) / s) @ coef + b
            bias = fit["intercept"] - (fit["x_mean"] / fit["x_scale"]) @ fit["coef"]
            with torch.no_grad():
                skip.weight.copy_(torch.from_numpy(weight.T).to(skip.weight))
                skip.bias.copy_(torch.from_numpy(bias).to(skip.bias))

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        data: Any = None,
        sections: str | Sequence[str] | None = None,
        *,
        table: str | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Predicted expression of the panel (:attr:`var_names`) for every spot of ``sections``.

        Parameters
        ----------
        data
            AnnData or SpatialData (its ``table``) with ``obsm[use_rep]`` (and, for :class:`HGGEPHead`, the
            hypergraph in ``obsp``); default: the training data.
        sections
            Sections to predict; default all sections of the table.
        table
            Table key of a SpatialData (default: the table the model was set up on).
        batch_size
            Spots per forward pass, a positive integer (default None: the training batch size); for
            :class:`HGGEPHead` also the size of the spatial window each spot is predicted in.
        progress
            Unused (kept for the common ``predict`` signature).

        Returns
        -------
        float32 ``(n_spots, n_genes)`` in log1p(normalize_total(1e4)) units, clipped at 0; rows are the spots of
        ``sections`` in table order.
        """
        if not self.is_trained:
            raise RuntimeError(f"This {type(self).__name__} is not trained; call `model.train()` first.")
        data = self.data if data is None else data
        if data is None:
            raise ValueError("data: this model has no data attached; pass an AnnData or SpatialData.")
        adata = _get_table(data, table or self.registry.get("table") or TABLE_KEY) if hasattr(data, "tables") else data
        sections = _check_sections(adata, sections)
        # None: the training batch size; 0 or a negative is an error (it fell back to that default)
        bs = _positive_int("batch_size", batch_size) if batch_size is not None else None
        bs = bs or int(self._train_setting("batch_size", None))
        if self._spatial and bs < 2:  # as in training: a window of one spot has no neighbourhood
            raise ValueError(f"batch_size (spots per window) must be at least 2, got {bs}.")
        out = np.zeros((adata.n_obs, len(self.var_names)), dtype=np.float32)
        mean, sd = np.asarray(self._std["y_mean"], np.float32), np.asarray(self._std["y_sd"], np.float32)
        self.module.eval()
        for s in sections:
            sec = self._section(adata, s, with_targets=False)
            self._apply_std(sec)
            out[sec.rows] = self._predict_section(sec, bs) * sd + mean
        rows = np.flatnonzero(adata.obs[SECTION_KEY].astype(str).isin(sections).to_numpy())
        return np.clip(out[rows], 0.0, None)

    @abstractmethod
    def _predict_section(self, sec: Any, batch_size: int) -> np.ndarray:
        """Standardised predictions ``(n_spots, n_genes)`` of one section's spots (``sec`` from ``_section``)."""


class MLPExpression(_FeatureModel):
    """An MLP head from a frozen per-spot embedding (``obsm[use_rep]``) to the panel's expression.

    Embeddings and targets (log1p(normalize_total 1e4)) are standardised with the mean and sd of the training
    spots; the loss is the MSE on the standardised targets, so every gene weighs the same. Checkpoints are chosen
    on the validation MSE (one training section held out from the network's gradient steps; the closed-form parts,
    ridge path and programme axes, are fitted on all training sections, the validation one included). Predictions
    are mapped back to log1p units.

    Parameters
    ----------
    data
        AnnData / SpatialData set up with :meth:`setup_anndata` / :meth:`setup_sdata`.
    **config
        ``hidden`` (256), ``dropout`` (0.25), ``ridge_skip`` (True: a frozen linear path set to ridge on the
        training sections, the MLP learns its residual; False: the MLP alone), ``n_programs`` (``"auto"``: the
        output goes through the leading expression programmes of the training spots, their number chosen by a
        grouped inner CV on the training sections; an int; None: one output per gene), ``linear_on_validation``
        (True: the ridge path and the programmes are fit on the training sections including the validation one;
        False: without it, so early stopping watches an out-of-sample MSE — docs/benchmarks/expression.md compares
        both) and the training keys ``max_epochs`` (200), ``batch_size`` (64), ``lr`` (1e-3), ``weight_decay``
        (1e-3, AdamW), ``patience`` (20),
        ``seed``.

    Examples
    --------
    >>> scst.pp.select_genes(sdata.tables["table"], sections=["C2", "C3", "C4", "C5"])  # the panel without C6
    >>> scst.tl.embed_patches(sdata, "handcrafted")
    >>> MLPExpression.setup_sdata(sdata, use_rep="X_handcrafted", sections=["C2", "C3", "C4", "C5"])
    >>> pred = MLPExpression(sdata).train().predict(sections="C6")
    """

    _module_cls = MLPHeadModule
    _default_config: ClassVar[dict[str, Any]] = {
        "hidden": 256, "dropout": 0.25, "ridge_skip": True, "n_programs": "auto", "linear_on_validation": True,
        "max_epochs": 200, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-3, "optimizer": "adamw", "patience": 20,
    }  # fmt: skip
    bench_config: ClassVar[dict[str, Any]] = dict(_default_config)

    def _module_kwargs(self) -> dict[str, Any]:
        return {"in_dim": int(self.registry["n_features"]), "n_genes": len(self.registry["var_names"]),
                "hidden": _positive_int("hidden", self.config["hidden"]), "dropout": float(self.config["dropout"]),
                "ridge_skip": self.config["ridge_skip"], "n_programs": self._programs_kwarg()}  # fmt: skip

    def _loaders(self, train: list, val: list, batch_size: int):
        cat = lambda secs, k: np.concatenate([getattr(s, k) for s in secs])  # noqa: E731
        train_dl = DataLoader(_Spots(cat(train, "x"), cat(train, "target")), batch_size=batch_size, shuffle=True)
        val_dl = DataLoader(_Spots(cat(val, "x"), cat(val, "target")), batch_size=4096) if val else None
        return train_dl, val_dl

    @torch.no_grad()
    def _predict_section(self, sec: Any, batch_size: int) -> np.ndarray:
        x = torch.from_numpy(sec.x).to(self.device)
        step = batch_size  # per spot in eval mode: the batch size changes the memory, not the values
        return torch.cat([self.module(x[i : i + step])["pred"] for i in range(0, len(x), step)]).float().cpu().numpy()


class HGGEPHead(_FeatureModel):
    """HGGEP's spatial head (spot ViT, hypergraph HAM, LSTM; MSE + ZINB) on a frozen per-spot embedding.

    The network is :class:`scst.nn.SpatialHeadModule`; the hypergraph comes from ``obsp`` (:func:`scst.pp.hypergraph`
    on the same embedding, HGGEP eq. 16), built once instead of in every forward pass. One step sees a spatial
    window of at most ``batch_size`` spots of one section (the ``batch_size`` spots nearest to a random spot in
    training; at prediction a tiling in which every spot is predicted inside the window around its k-d cell).
    Embeddings and MSE targets are standardised with the training spots' mean/sd (every gene weighs the same, and
    the MSE is on the scale of the ZINB term); checkpoints are chosen on the validation MSE (one training section
    held out from the network's gradient steps; the ridge path and programme axes are fitted on all training
    sections, the validation one included).

    Parameters
    ----------
    data
        AnnData / SpatialData set up with :meth:`setup_anndata` / :meth:`setup_sdata`.
    **config
        ``dim`` (128), ``vit_depth`` (2), ``vit_heads`` (8), ``hg_hidden`` (64), ``lstm_layers`` (1),
        ``lstm_hidden`` (128), ``dropout`` (0.2), ``zinb_weight`` (0.25), ``use_ham``/``use_zinb`` (ablations),
        ``ridge_skip`` (True: a frozen linear path set to ridge on the training sections, so the head learns the
        residual of ridge; not in the paper, False gives the paper's head), ``n_programs`` (``"auto"``: the output
        goes through the leading expression programmes of the training spots, their number chosen by a grouped inner
        CV on the training sections; an int; None: one output per gene, the paper's head), ``linear_on_validation``
        (as in :class:`MLPExpression`), and the training keys ``max_epochs`` (400, the paper's), ``batch_size`` (96
        spots per window), ``lr`` (3e-4), ``weight_decay`` (1e-3, AdamW), ``patience`` (40), ``seed``.

    Examples
    --------
    >>> scst.pp.select_genes(sdata.tables["table"], sections=["C2", "C3", "C4", "C5"])  # the panel without C6
    >>> scst.tl.embed_patches(sdata, "handcrafted")
    >>> scst.pp.hypergraph(sdata.tables["table"], use_rep="X_handcrafted")
    >>> HGGEPHead.setup_sdata(sdata, use_rep="X_handcrafted", sections=["C2", "C3", "C4", "C5"])
    >>> pred = HGGEPHead(sdata).train().predict(sections="C6")
    """

    _module_cls = SpatialHeadModule
    _spatial = True
    _default_config: ClassVar[dict[str, Any]] = {
        "dim": 128, "vit_depth": 2, "vit_heads": 8, "hg_hidden": 64, "lstm_layers": 1, "lstm_hidden": 128,
        "dropout": 0.2, "zinb_weight": 0.25, "use_ham": True, "use_zinb": True, "ridge_skip": True,
        "n_programs": "auto", "linear_on_validation": True, "max_epochs": 400, "batch_size": 96, "lr": 3e-4,
        "weight_decay": 1e-3, "optimizer": "adamw", "patience": 40,
    }  # fmt: skip
    bench_config: ClassVar[dict[str, Any]] = dict(_default_config)

    def _module_kwargs(self) -> dict[str, Any]:
        keys = ("dim", "vit_depth", "vit_heads", "hg_hidden", "lstm_layers", "lstm_hidden", "dropout", "zinb_weight",
                "use_ham", "use_zinb", "ridge_skip")  # fmt: skip
        return {"in_dim": int(self.registry["n_features"]), "n_genes": len(self.registry["var_names"]),
                **{k: self.config[k] for k in keys}, "n_programs": self._programs_kwarg()}  # fmt: skip

    def _loaders(self, train: list, val: list, batch_size: int):
        if batch_size < 2:
            raise ValueError(f"batch_size (spots per window) must be at least 2, got {batch_size}.")
        train_dl = DataLoader(_Windows(train, batch_size, True), batch_size=None, shuffle=True)
        val_dl = DataLoader(_Windows(val, batch_size, False), batch_size=None) if val else None
        return train_dl, val_dl

    @torch.no_grad()
    def _predict_section(self, sec: Any, batch_size: int) -> np.ndarray:
        out = np.zeros((len(sec.rows), len(self.var_names)), dtype=np.float32)
        for window, core in _tiling_windows(sec.positions, batch_size):
            pred = self.module(
                torch.from_numpy(sec.x[window]).to(self.device), _sub_hyperedges(sec.incidence, window).to(self.device)
            )["pred"]
            out[core] = pred[torch.from_numpy(np.searchsorted(window, core)).to(self.device)].float().cpu().numpy()
        return out
