"""TCGN (Xiao et al.): single-spot H&E → expression model (CMT backbone + cross-attention graph blocks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .._constants import SECTION_KEY
from ..nn._tcgn import TCGN_BENCH, TCGNModule
from ..nn._train_step import patches_to_input
from ._base import _refuse_dataloader_kwargs
from ._image import _ImageModel, _input_on

__all__ = ["TCGN"]


class _SpotBatches(Dataset):
    """Spots of several sections; an item is a *list* of global spot indices → one batch dict."""

    def __init__(self, sections: list, augment: bool):
        self.sections, self.augment = sections, augment
        self.sec = np.concatenate([np.full(len(s.keep), i) for i, s in enumerate(sections)]).astype(np.int64)
        self.pos = np.concatenate([s.keep for s in sections]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.sec)

    def __getitem__(self, items: Sequence[int]) -> dict[str, torch.Tensor]:
        items = np.asarray(items, dtype=np.int64)
        patches, target = [], []
        for i in np.unique(self.sec[items]):
            sel = items[self.sec[items] == i]
            sec, idx = self.sections[i], self.pos[sel]
            patches.append(sec.patches.get(idx))
            target.append(sec.target[idx])
        return {
            "patches": patches_to_input(np.concatenate(patches), self.augment),
            "target": torch.from_numpy(np.concatenate(target)),
        }


class _NoSingletonBatches(BatchSampler):
    """BatchSampler that drops a final batch of one spot (BatchNorm cannot train on it)."""

    def __iter__(self):
        for batch in super().__iter__():
            if len(batch) > 1:
                yield batch

    def __len__(self) -> int:
        n, bs = len(self.sampler), self.batch_size
        return n // bs + int(n % bs > 1)


def _spot_dataloaders(model: Any, batch_size: int, validation: Any, seed: int, kwargs: dict, generator=None):
    """(train, validation) loaders of single-spot models: shuffled spot batches, sequential validation spots."""
    _refuse_dataloader_kwargs(model, kwargs)
    train, val = model._training_sections(validation, seed)
    tr = _SpotBatches(train, bool(model.config["augment"]))
    sampler = _NoSingletonBatches(RandomSampler(tr, generator=generator), batch_size, drop_last=False)
    train_dl = DataLoader(tr, sampler=sampler, batch_size=None)
    val_dl = None
    if val:
        va = _SpotBatches(val, False)
        val_dl = DataLoader(va, sampler=BatchSampler(SequentialSampler(va), batch_size, False), batch_size=None)
    return train_dl, val_dl


class TCGN(_ImageModel):
    """TCGN: expression of one spot from its H&E patch alone (no coordinates, no neighbours).

    The network is :class:`scst.nn.TCGNModule`: a CMT backbone (convolutional stem, stages of convolutions and
    lightweight transformer blocks) with graph blocks after the first two stages (top-k edges of a convolution ×
    transformer cross-attention map, a CensNet node + edge GCN, fused back by channel attention), and a gene head;
    see its docstring for what follows the authors' code. Loss: MSE on log1p(normalize_total(1e4)) expression.

    Parameters
    ----------
    data
        SpatialData set up with :meth:`setup_sdata` (``patch_px=None`` follows ``img_size``).
    **config
        Overrides of the paper defaults (``scst.nn.TCGNModule`` arguments: ``img_size`` 224, ``stem_channels``,
        ``channels``, ``depths``, ``heads``, ``mlp_ratio``, ``sr_ratios``, ``graph_topk``, ``graph_heads``,
        ``graph_out``, ``graph_expansion``, ``fc_dim``, ``head_expansion``, ``dropout``, ``drop_path``,
        ``backbone_weights``: None or a local state_dict file of the CMT backbone), plus
        ``augment`` (random flips/90° rotations), ``patch_cache_mb`` (in-memory uint8 patch cache budget) and the
        training keys (``batch_size`` = spots per step, 32; ``lr`` 1e-4; ``max_epochs`` 100; ...).

    Notes
    -----
    ``bench_config`` is ``scst.nn.TCGN_BENCH`` (128 px: the CMT key/value reduction does not fit 112 px) with a
    short CPU schedule and ``backbone_weights=None``. No pretrained default: the authors start from ImageNet CMT-Ti
    weights, but neither torchvision nor timm has a CMT model, so the default is None (random initialisation, with a
    warning); a local state_dict of the backbone loads with ``backbone_weights=path``.
    """

    _module_cls = TCGNModule
    _default_patch_px = None
    _default_config: ClassVar[dict[str, Any]] = {
        "img_size": 224,
        "stem_channels": 16,
        "channels": [46, 92, 184, 368],
        "depths": [2, 2, 10, 2],
        "heads": [1, 2, 4, 8],
        "mlp_ratio": 3.6,
        "sr_ratios": [8, 4, 2, 1],
        "graph_topk": 4,
        "graph_heads": 2,
        "graph_out": 48,
        "graph_expansion": 2,
        "fc_dim": 1280,
        "head_expansion": 4,
        "dropout": 0.1,
        "drop_path": 0.0,
        "backbone_weights": None,  # no downloadable CMT-Ti weights (not in torchvision or timm)
        "augment": True,
        "patch_cache_mb": 2048.0,
        "max_epochs": 100,
        "lr": 1e-4,
        "batch_size": 32,
        "patience": 10,
    }
    bench_config: ClassVar[dict[str, Any]] = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in TCGN_BENCH.items()},
        "backbone_weights": None,  # random init: no downloads on the benchmark machines
        "max_epochs": 20,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "batch_size": 32,
        "patience": 6,
    }

    def _module_kwargs(self) -> dict[str, Any]:
        keys = [k for k in self._default_config if k not in ("augment", "patch_cache_mb", "max_epochs", "lr",
                                                              "batch_size", "patience")]  # fmt: skip
        kw = {k: self.config[k] for k in keys}
        px = self.registry.get("patch_px")
        if px is not None:
            kw["img_size"] = int(px)
        return {"n_genes": len(self.registry["var_names"]), **kw}

    def _dataloaders(self, batch_size: int, validation: Any, seed: int, **kwargs: Any):
        return _spot_dataloaders(self, batch_size, validation, seed, kwargs)

    def _output_layer(self) -> torch.nn.Linear:
        return self.module.head[-1]

    def _predict_section(self, sec: Any, batch_size: int, bar: Any, opts: Any) -> np.ndarray:
        # One spot per patch: batches of spots in image-chunk order (each zarr chunk decoded about once).
        n = len(sec.rows)
        order = np.arange(n) if sec.patches.in_memory() is not None else sec.patches.ds.locality_order()
        items = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        out = None
        for i, patches in sec.patches.loader(items, opts):
            pred = self.module(_input_on(patches, opts))["pred"].float().cpu().numpy()
            if out is None:
                out = np.empty((n, pred.shape[1]), dtype=np.float32)
            out[items[i]] = pred
            bar.update(len(items[i]))
        return out

    def attribution(
        self,
        sdata: Any,
        gene: str,
        spots: Any,
        *,
        table: str | None = None,
        return_patches: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Grad-CAM map of the predicted expression of ``gene`` over each spot's patch.

        Parameters
        ----------
        sdata
            SpatialData with the images (or an AnnData whose images are in the model's SpatialData).
        gene
            A gene of the model's panel.
        spots
            Spots: obs names, integer positions or a boolean mask over the table.
        table
            Table key (default: the registry's table).
        return_patches
            Also return the uint8 patches ``(n, 3, patch_px, patch_px)`` the maps refer to.

        Returns
        -------
        float32 ``(n, patch_px, patch_px)`` maps in ``[0, 1]`` (1 = the most important location of each patch),
        from :meth:`scst.nn.TCGNModule.attribution`; with ``return_patches`` a ``(maps, patches)`` pair.
        """
        if gene not in self.var_names:
            raise KeyError(f"gene: {gene!r} is not in the model's panel of {len(self.var_names)} genes.")
        sdata_, key, adata = self._predict_table(sdata, table)
        sel = np.asarray(spots)
        if sel.dtype == bool:
            if sel.shape != (adata.n_obs,):
                raise ValueError(f"spots: boolean mask of length {sel.shape} does not match {adata.n_obs} spots.")
            rows = np.flatnonzero(sel)
        elif sel.dtype.kind in "iu":
            rows = sel.astype(np.int64).ravel()
            if rows.size and (rows.min() < 0 or rows.max() >= adata.n_obs):
                raise IndexError(f"spots: positions must lie in [0, {adata.n_obs}).")
        else:
            rows = adata.obs_names.get_indexer(np.atleast_1d(sel).astype(str))
            if (rows < 0).any():
                raise KeyError(f"spots: {np.atleast_1d(sel)[rows < 0][:5].tolist()} are not obs names of the table.")
        if rows.size == 0:
            raise ValueError("spots: selects no spot.")
        sections = adata.obs[SECTION_KEY].astype(str).to_numpy()[rows]
        self._check_predict_sections(sdata_, adata, list(dict.fromkeys(sections)))
        gidx = self.var_names.index(gene)
        maps = np.zeros((len(rows), self.patch_px, self.patch_px), dtype=np.float32)
        patches = np.zeros((len(rows), 3, self.patch_px, self.patch_px), dtype=np.uint8)
        for s in dict.fromkeys(sections):
            sec = self._section_data(sdata_, key, s, with_targets=False)
            at = np.flatnonzero(sections == s)
            idx = np.searchsorted(sec.rows, rows[at])
            p = sec.patches.get(idx)
            x = patches_to_input(p, False).to(self.device)
            maps[at] = self.module.attribution(x, gidx).float().cpu().numpy()
            patches[at] = p
        return (maps, patches) if return_patches else maps
