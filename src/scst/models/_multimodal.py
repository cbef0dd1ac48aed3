"""MultimodalST: histology ↔ RNA model of Berjaoui, Sanchez et al. (2024) on MuData.

The network (RNA group-token transformer with masked-autoencoder and contrastive pre-training, ViT patch encoder
with a triplet loss, ALBEF-style alignment, fusion encoder with matching and RNA-decoder heads) lives in
:mod:`scst.nn._multimodal`; this class owns the MuData registry, the loaders, staged training and persistence.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch.utils.data import DataLoader

from .._logging import logg
from .._utils import _labels, _positive_int
from ..nn._augment import random_dihedral
from ..nn._backbones import build_backbone, load_weights
from ..nn._multimodal import LOSS_TERMS, MultimodalModule
from ..pp._mudata import LINK_KEY, PATCH_KEY, _refuse_duplicate_names
from ._base import BaseModel, _refuse_dataloader_kwargs, _resume_checkpoint
from ._training import History

__all__ = ["MultimodalST"]


class _StageInfo(pl.Callback):
    """Puts MultimodalST's training stage and the earlier stages' ``history`` rows into the stage's checkpoints."""

    key = "scst_multimodal_stage"

    def __init__(self, stage: str, earlier: list[dict[str, Any]]) -> None:
        self.stage, self.earlier = stage, earlier

    @property
    def state_key(self) -> str:  # noqa: D102
        return self.key

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"stage": self.stage, "earlier": self.earlier}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        pass  # read by MultimodalST.train before training: it decides which stages run


def _frame_rows(frame: pd.DataFrame) -> dict[int, dict[str, float]]:
    """A history frame as ints, strs and floats (a checkpoint that loads with ``weights_only=True``)."""
    return {int(e): {str(k): float(v) for k, v in row.items()} for e, row in frame.iterrows()}


def _rows_frame(rows: dict[int, dict[str, float]]) -> pd.DataFrame:
    """The frame :func:`_frame_rows` was made from, as :class:`~scst.models._training.History` builds it."""
    history = History()
    history.load_state_dict({"rows": rows})
    return history.frame


def _dense(X: Any) -> np.ndarray:
    return np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float32)


def _codes(values: pd.Series, categories: list[str], start: int = 0) -> np.ndarray:
    """Group codes into ``categories``; missing/unknown values get unique negative codes (no positive pair).

    The negative code of row ``i`` is ``-(start + i + 1)``: calls with disjoint ``[start, start + len(values))``
    ranges (the RNA samples from 0, the patches after them) never share a negative code. Equal numbers are the same
    group (``1`` and ``1.0``, see :func:`scst._utils._labels`).
    """
    lookup = {c: i for i, c in enumerate(categories)}
    # str(v): categories of a model registered before integral floats were written as ints ("1.0")
    out = np.array(
        [lookup.get(lab, lookup.get(str(v), -1)) if pd.notna(v) else -1 for v, lab in zip(values, _labels(values))],
        dtype=np.int64,
    )
    bad = np.flatnonzero(out < 0)
    out[bad] = -(int(start) + bad + 1)
    return out


class _Items(torch.utils.data.Dataset):
    """Training items ``(image row or -1, RNA row or -1)``, collated into the batch dict of ``MultimodalModule``."""

    def __init__(self, pairs: np.ndarray, data: dict[str, np.ndarray], augment: bool, seed: int):
        self.pairs, self.data, self.augment = pairs, data, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        p = self.pairs[np.asarray(idx)]
        img_row, rna_row = p[:, 0], p[:, 1]
        has_img, has_rna = img_row >= 0, rna_row >= 0
        d = self.data
        img = d["img"][np.where(has_img, img_row, 0)]
        img = torch.from_numpy(np.ascontiguousarray(img))
        if self.augment and img.ndim == 4:
            img = random_dihedral(img, self.generator)
        return {
            "rna": torch.from_numpy(d["rna"][np.where(has_rna, rna_row, 0)]),
            "img": img,
            "has_rna": torch.from_numpy(has_rna),
            "has_img": torch.from_numpy(has_img),
            "rna_id": torch.from_numpy(np.where(has_rna, rna_row, -1)),
            "rna_group": torch.from_numpy(np.where(has_rna, d["rna_group"][rna_row], -(10**9) - np.arange(len(p)))),
            "img_group": torch.from_numpy(np.where(has_img, d["img_group"][img_row], -(10**9) - np.arange(len(p)))),
        }


class _BatchesWithin(torch.utils.data.Sampler):
    """Minibatches that each hold items of one group only (``MultimodalST(minibatch_by=...)``).

    Every epoch, each group's items are shuffled and cut into batches of ``batch_size``; a group's last, smaller
    batch is kept, and a single item left over joins the batch before it (the contrastive losses need two samples;
    a group of one item has no negatives and is left out). The batches of all groups are then shuffled together.
    """

    def __init__(self, groups: np.ndarray, batch_size: int, generator: torch.Generator):
        if int(batch_size) < 2:  # batches of one item have no negatives (and the count below assumes >= 2)
            raise ValueError(f"batch_size: minibatch_by needs batches of at least 2 samples, got {batch_size}.")
        self.members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        self.batch_size, self.generator = int(batch_size), generator
        # batches per epoch, as __iter__ makes them: ceil(n / batch_size) per group, one fewer when a single item is
        # left over after a full batch (it joins that batch), none for a group of one item
        self.n_batches = sum(
            -(-len(m) // self.batch_size) - (len(m) > self.batch_size and len(m) % self.batch_size == 1)
            for m in self.members
            if len(m) >= 2
        )

    def __iter__(self):
        batches = []
        for m in self.members:
            order = m[torch.randperm(len(m), generator=self.generator).numpy()]
            chunks = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
            if len(chunks) > 1 and len(chunks[-1]) == 1:
                last = chunks.pop()
                chunks[-1] += last
            batches += [c for c in chunks if len(c) >= 2]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]

    def __len__(self) -> int:
        return self.n_batches


def _check_patch_values(arr: np.ndarray, where: str) -> None:
    """Patches must be uint8 (0–255) or floats in [0, 1] (checked on up to 64 of them).

    Other integer types would be divided by nothing (NaN embeddings), floats in 0–255 normalised 255 × too large.
    """
    if arr.dtype == np.uint8:
        return
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{where}: patches must be uint8 (0–255) or floats in [0, 1], got dtype {arr.dtype}; convert with "
            ".astype(np.uint8) (values 0–255) or divide by 255."
        )
    sample = arr[np.linspace(0, len(arr) - 1, min(len(arr), 64)).astype(int)] if len(arr) else arr
    lo, hi = (float(np.nanmin(sample)), float(np.nanmax(sample))) if sample.size else (0.0, 0.0)
    if not (np.isfinite(sample).all() and lo >= 0.0 and hi <= 1.0):
        raise ValueError(
            f"{where}: float patches must be finite and in [0, 1], got values in [{lo:g}, {hi:g}]"
            + (" (0–255? divide by 255, or pass uint8)." if hi > 1.0 else ".")
        )


class MultimodalST(BaseModel):
    """Histology ↔ RNA model (Berjaoui, Sanchez et al. 2024) on a MuData with modalities ``rna`` and ``image``.

    Set up with :meth:`setup_mudata`, then ``MultimodalST(mdata, **config).train()``: unimodal pre-training
    (``pretrain_epochs``: RNA masked autoencoder + RNA contrastive + image triplet losses), then joint training
    (image–RNA contrastive, matching on hard negatives, RNA decoder). Unpaired samples (patches without an RNA sample,
    RNA samples without patches) are allowed: they enter the unimodal losses only.

    Parameters
    ----------
    data
        MuData set up with :meth:`setup_mudata` (e.g. from :func:`scst.pp.to_mudata`).
    **config
        Overrides of the defaults (see ``MultimodalST._default_config``): network sizes (``dim``, ``rna_depth``,
        ``image_depth``, ``fusion_depth``, ``heads``, ``dropout``, ``embed_dim``), ``image_encoder`` (``"vit"``, a
        torchvision/timm backbone name, or ``"mlp"`` on embeddings in ``image.obsm``), ``image_weights`` (the
        image encoder's weights, as the expression models take them: a torchvision/timm weights name for a named
        backbone, downloaded into the libraries' caches, or a local state_dict file such as SSL weights; ``None``
        with a named backbone warns that it starts from random initialisation; the ``"vit"`` is trained from scratch,
        as in the paper), ``sub_patch``,
        temperatures ``tau``/``tau_c``, triplet ``margin``, loss ``weights`` (:data:`scst.nn._multimodal.LOSS_TERMS`;
        0 switches a term off), ``unimodal_in_joint``, ``freeze_encoders``, ``match_on`` (``"sample"`` or
        ``"group"``), ``momentum`` and ``queue_size`` (ALBEF's momentum encoders and queue of negatives for the
        image–RNA contrastive loss; off by default), ``rna_pcs`` (RNA input denoised by projection on that many
        principal axes of the training samples; recommended for spot data, e.g. 10 — docs/benchmarks/multimodal.md;
        ``None``, the paper's, for bulk RNA), ``minibatch_by`` (an ``obs`` column of both modalities, e.g.
        ``"section"``: every training minibatch then holds samples of one value only, so the in-batch negatives of
        the contrastive losses come from the same slide, as the candidates of a retrieval within a section do;
        ``None``, the paper's: minibatches across all samples), ``pretrain_epochs``, ``augment``.

        With ``rna_pcs``, the encoder's input and the masked-autoencoder target both lie in a ``rna_pcs``-dimensional
        subspace, so whenever the visible genes span it (as many visible genes as axes or more) the masked group is a
        linear function of the visible ones: the masked-token reconstruction becomes a linear task and the MAE
        pre-training adds little; the contrastive stages are what use the denoising. The statistics fitted without
        labels when the model is built — the principal axes (``rna_center``, ``rna_basis``) and the standardisation
        (``gene_mean``, ``gene_std``) — use every RNA sample of ``data``, including those that :meth:`train` later
        holds out for validation (``validation``).

    Examples
    --------
    >>> train = ["C2", "C3", "C4", "C5"]
    >>> scst.pp.select_genes(sdata.tables["table"], n_top=1000, min_fraction=0.25, sections=train)
    >>> mdata = scst.pp.to_mudata(sdata, sections=train, out_px=64)  # spots → RNA samples + patches
    >>> mdata_test = scst.pp.to_mudata(sdata, sections=["C6"], out_px=64)
    >>> scst.pp.gene_groups(mdata["rna"], network=None, n_groups=7)
    >>> scst.models.MultimodalST.setup_mudata(mdata, group_key="label")
    >>> model = scst.models.MultimodalST(mdata, **scst.models.MultimodalST.bench_config).train()
    >>> scst.tl.retrieve(mdata_test, model, query="image", k=5)
    """

    _module_cls = MultimodalModule
    _default_config: ClassVar[dict[str, Any]] = {
        "dim": 128,
        "rna_depth": 4,
        "image_depth": 6,
        "fusion_depth": 2,
        "heads": 8,
        "dropout": 0.1,
        "image_encoder": "vit",
        "image_weights": None,
        "sub_patch": 16,
        "embed_dim": 128,
        "tau": 0.1,
        "tau_c": 0.07,
        "margin": 0.5,
        "weights": {},
        "unimodal_in_joint": False,
        "freeze_encoders": False,
        "match_on": "sample",
        "momentum": None,
        "queue_size": 0,
        "rna_pcs": None,
        "minibatch_by": None,
        "pretrain_epochs": 20,
        "augment": True,
        "max_epochs": 50,
        "batch_size": 64,
        "lr": 1e-4,
        "weight_decay": 0.05,
        "optimizer": "adamw",
    }
    #: Small CPU settings: 64 px patches (resize with ``to_mudata(out_px=64)``), 8 px sub-patches.
    bench_config: ClassVar[dict[str, Any]] = {
        "dim": 64,
        "rna_depth": 2,
        "image_depth": 2,
        "fusion_depth": 1,
        "heads": 4,
        "sub_patch": 8,
        "embed_dim": 64,
        "pretrain_epochs": 5,
        "max_epochs": 15,
        "batch_size": 64,
        "lr": 5e-4,
        "patience": 5,
    }

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: Any,
        *,
        group_key: str = "label",
        rna: str = "rna",
        image: str = "image",
        link_key: str = LINK_KEY,
        gene_group_key: str = "gene_group",
        patch_key: str = PATCH_KEY,
    ) -> None:
        """Validate ``mdata`` and store the registry in ``mdata.uns["_scst_setup"]["MultimodalST"]``.

        Parameters
        ----------
        mdata
            MuData with modalities ``rna`` (log1p-normalised expression in ``X``; groups in
            ``var[gene_group_key]``, from :func:`scst.pp.gene_groups`) and ``image`` (``obsm[patch_key]``: uint8
            ``(n, 3, px, px)`` patches (or float ones in [0, 1]), or a 2-D embedding for ``image_encoder="mlp"``;
            ``obs[link_key]``: the patch's RNA sample, NaN when unpaired).
        group_key
            ``obs`` column of both modalities defining positives (paper: lineage); a patch without it takes its
            RNA sample's group. Labels that are equal numbers are one group (``1`` and ``1.0``).
        rna, image
            Modality names.
        link_key, gene_group_key, patch_key
            Keys described above.
        """
        for name in (rna, image):
            if name not in getattr(mdata, "mod", {}):
                raise KeyError(f"mdata: modality {name!r} missing; has {list(getattr(mdata, 'mod', {}))}.")
        r, im = mdata[rna], mdata[image]
        _refuse_duplicate_names(r.obs_names, f"mdata[{rna!r}]")
        if gene_group_key not in r.var:
            raise KeyError(
                f"mdata[{rna!r}].var lacks {gene_group_key!r}; run scst.pp.gene_groups(mdata[{rna!r}], ...) first."
            )
        groups = r.var[gene_group_key].to_numpy(dtype=np.int64)
        panel = r.var_names[groups >= 0]
        if len(panel) == 0:
            raise ValueError(f"mdata[{rna!r}].var[{gene_group_key!r}]: no gene is in a group (all -1).")
        uniq = np.unique(groups[groups >= 0])
        group_of_gene = np.searchsorted(uniq, groups[groups >= 0])
        if patch_key not in im.obsm:
            raise KeyError(f"mdata[{image!r}].obsm lacks {patch_key!r} (patches or patch embeddings).")
        arr = im.obsm[patch_key]
        if arr.ndim == 4:
            if arr.shape[1] != 3 or arr.shape[2] != arr.shape[3]:
                raise ValueError(f"mdata[{image!r}].obsm[{patch_key!r}]: expected (n, 3, px, px), got {arr.shape}.")
            _check_patch_values(np.asarray(arr), f"mdata[{image!r}].obsm[{patch_key!r}]")
            shape = {"image_px": int(arr.shape[-1]), "image_features": None}
        elif arr.ndim == 2:
            shape = {"image_px": None, "image_features": int(arr.shape[1])}
        else:
            raise ValueError(f"mdata[{image!r}].obsm[{patch_key!r}]: expected 4-D patches or 2-D embeddings.")
        if link_key not in im.obs:
            raise KeyError(f"mdata[{image!r}].obs lacks the link column {link_key!r}.")
        link = im.obs[link_key]
        linked = link.notna() & _labels(link).isin(r.obs_names)  # a number column links 1.0 to "1"
        n_bad = int((link.notna() & ~linked).sum())
        if n_bad:
            warnings.warn(
                f"setup_mudata: {n_bad} of {im.n_obs} patches link to no sample of mdata[{rna!r}] (unmatched; "
                "they are used as unpaired patches).",
                UserWarning,
                stacklevel=2,
            )
        if not linked.any():
            raise ValueError(f"setup_mudata: no patch of mdata[{image!r}] links to a sample of mdata[{rna!r}].")
        if group_key not in r.obs:
            raise KeyError(f"mdata[{rna!r}].obs lacks group_key {group_key!r}.")
        cats = pd.unique(
            pd.concat([_labels(r.obs[group_key]), _labels(im.obs.get(group_key, pd.Series(dtype=object)))]).dropna()
        )
        cls._register(
            mdata,
            {
                "rna": rna,
                "image": image,
                "group_key": group_key,
                "link_key": link_key,
                "gene_group_key": gene_group_key,
                "patch_key": patch_key,
                "var_names": list(panel),
                "group_of_gene": group_of_gene.tolist(),
                "group_categories": sorted(str(c) for c in cats),
                **shape,
            },
        )

    # ------------------------------------------------------------------ module
    def _extra_state(self) -> dict[str, Any]:
        return {"stage": self.module.stage}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        super()._set_extra_state(state)
        # a model saved before the stage was recorded: trained models end in the joint stage
        self.module.stage = state.get("stage", "joint" if self.is_trained else "pretrain")

    def _module_kwargs(self) -> dict[str, Any]:
        c, r = self.config, self.registry
        weights = dict(c["weights"])
        unknown = set(weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"weights: unknown loss terms {sorted(unknown)}; expected some of {list(LOSS_TERMS)}.")
        rna_pcs = c["rna_pcs"]  # a float or a boolean is refused, not truncated
        rna_pcs = None if rna_pcs is None else _positive_int("rna_pcs", rna_pcs, what="None or a positive integer")
        enc = c["image_encoder"]
        if r["image_px"] is None and enc != "mlp":
            raise ValueError("image_encoder: the image modality holds embeddings; use image_encoder='mlp'.")
        return {
            "group_of_gene": r["group_of_gene"],
            **{k: c[k] for k in ("dim", "rna_depth", "image_depth", "fusion_depth", "heads", "dropout")},
            "image_encoder": enc,
            "image_px": r["image_px"] or 0,
            "sub_patch": c["sub_patch"],
            "image_features": r["image_features"],
            **{k: c[k] for k in ("embed_dim", "tau", "tau_c", "margin", "unimodal_in_joint", "freeze_encoders")},
            "weights": weights,
            "match_on": c["match_on"],
            "momentum": c["momentum"],
            "queue_size": c["queue_size"],
            "rna_pcs": rna_pcs,
        }

    def __init__(self, data: Any, **config: Any) -> None:
        super().__init__(data, **config)
        self._minibatch_values(self.data)  # checks `minibatch_by` now rather than when training starts
        x = self._rna_matrix(self.data)
        k = self.config["rna_pcs"]
        if k is not None:  # principal axes of the training RNA samples (denoised input, see MultimodalModule)
            if k >= min(x.shape):
                raise ValueError(f"rna_pcs: expected fewer than {min(x.shape)} axes (samples, genes), got {k}.")
            center = x.mean(0, dtype=np.float64)
            _, _, vt = np.linalg.svd(x - center, full_matrices=False)
            basis = vt[: int(k)].T
            self.module.rna_center.copy_(torch.from_numpy(center.astype(np.float32)))
            self.module.rna_basis.copy_(torch.from_numpy(basis.astype(np.float32)))
            x = (center + ((x - center) @ basis) @ basis.T).astype(np.float32)
        self.module.gene_mean.copy_(torch.from_numpy(x.mean(0)))
        self.module.gene_std.copy_(torch.from_numpy(np.maximum(x.std(0), 1e-3)))
        weights, name = self.config["image_weights"], self.config["image_encoder"]
        enc = self.module.image_encoder
        if weights:  # ImageNet / timm / hub names, local files, SSL weights (as the expression models take them)
            if name in ("vit", "mlp"):
                load_weights(enc, weights, where="image_weights")
            else:
                net, _ = build_backbone(name, weights, where="image_weights")
                enc.net.load_state_dict(net.state_dict())
        elif name not in ("vit", "mlp"):  # a named trunk built randomly: warns, as the expression models do
            load_weights(enc.net, None, where="image_weights", what=f"{name} image encoder")

    def _validate_data(self, adata: Any) -> None:
        reg = self.registry
        for name in (reg["rna"], reg["image"]):
            if name not in getattr(adata, "mod", {}):
                raise ValueError(f"data: expected a MuData with modality {name!r}.")
        missing = pd.Index(reg["var_names"]).difference(adata[reg["rna"]].var_names)
        if len(missing):
            raise ValueError(f"data: mdata[{reg['rna']!r}] lacks {len(missing)} panel genes, e.g. {list(missing[:5])}.")
        img, key = adata[reg["image"]], reg["patch_key"]
        if key not in img.obsm:
            raise KeyError(
                f"data: mdata[{reg['image']!r}].obsm lacks {key!r} (the patches or patch embeddings the model was set "
                f"up with); has {list(img.obsm.keys())}."
            )
        shape = tuple(np.shape(img.obsm[key]))
        px, n_feat = reg.get("image_px"), reg.get("image_features")
        if px is not None and (len(shape) != 4 or shape[1:] != (3, px, px)):
            raise ValueError(
                f"data: mdata[{reg['image']!r}].obsm[{key!r}] has shape {shape}; the model was set up with "
                f"(n, 3, {px}, {px}) patches (image_px={px}). Cut or resize the patches to {px} px."
            )
        if n_feat is not None and (len(shape) != 2 or shape[1] != n_feat):
            raise ValueError(
                f"data: mdata[{reg['image']!r}].obsm[{key!r}] has shape {shape}; the model was set up with "
                f"(n, {n_feat}) patch embeddings (image_features={n_feat})."
            )

    # ------------------------------------------------------------------ data
    def _rna_matrix(self, mdata: Any) -> np.ndarray:
        r = mdata[self.registry["rna"]]
        return _dense(r.X[:, r.var_names.get_indexer(self.registry["var_names"])])

    def _image_array(self, mdata: Any) -> np.ndarray:
        arr = mdata[self.registry["image"]].obsm[self.registry["patch_key"]]
        arr = np.asarray(arr)
        if arr.ndim == 4:
            _check_patch_values(arr, f"mdata[{self.registry['image']!r}].obsm[{self.registry['patch_key']!r}]")
        if arr.ndim == 4 and not np.issubdtype(arr.dtype, np.floating):
            return arr  # uint8 patches, scaled to [0, 1] by the module
        return arr.astype(np.float32, copy=False)  # embeddings, or float patches in [0, 1] (float64 → the weights')

    def _arrays(self, mdata: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        reg = self.registry
        r, im = mdata[reg["rna"]], mdata[reg["image"]]
        cats = reg["group_categories"]
        rna_group = _codes(r.obs[reg["group_key"]], cats)
        link = im.obs[reg["link_key"]]
        rna_row = r.obs_names.get_indexer(_labels(link).fillna("\x00"))
        # a patch without a group of its own takes its RNA sample's (which may be a unique negative code of that
        # sample); the other patches get unique negative codes after the RNA samples' range, so that no two
        # unpaired or unlabelled samples become positives of each other
        n_rna = r.n_obs
        if reg["group_key"] in im.obs:
            img_group = _codes(im.obs[reg["group_key"]], cats, start=n_rna)
        else:
            img_group = -(n_rna + 1) - np.arange(im.n_obs, dtype=np.int64)
        from_rna = (img_group < 0) & (rna_row >= 0)
        img_group[from_rna] = rna_group[rna_row[from_rna]]
        data = {"rna": self._rna_matrix(mdata), "img": self._image_array(mdata), "rna_group": rna_group,
                "img_group": img_group}  # fmt: skip
        return data, rna_row

    def _minibatch_values(self, mdata: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """``obs[minibatch_by]`` of the RNA samples and of the patches (None when the option is off)."""
        by, reg = self.config["minibatch_by"], self.registry
        if by is None:
            return None
        lacking = [name for name in (reg["rna"], reg["image"]) if by not in mdata[name].obs]
        if lacking:
            raise ValueError(
                f"minibatch_by: {by!r} is not an obs column of modality {lacking}; it must be in both (e.g. "
                "'section', as scst.pp.to_mudata writes it)."
            )
        return tuple(_labels(mdata[name].obs[by]).astype(str).to_numpy() for name in (reg["rna"], reg["image"]))

    def _dataloaders(
        self, batch_size: int, validation: Any, seed: int, **kwargs: Any
    ) -> tuple[DataLoader, DataLoader | None]:
        _refuse_dataloader_kwargs(self, kwargs)  # the loaders batch in-memory arrays in this process
        data, rna_row = self._arrays(self.data)
        n_rna = len(data["rna"])
        pairs = [np.c_[np.arange(len(rna_row)), rna_row]]
        lonely = np.setdiff1d(np.arange(n_rna), rna_row[rna_row >= 0])
        if len(lonely):
            pairs.append(np.c_[np.full(len(lonely), -1), lonely])
        pairs = np.concatenate(pairs).astype(np.int64)
        try:
            frac = 0.1 if validation is None else float(validation)
        except (TypeError, ValueError):  # e.g. a list of sections, as the image models take it
            frac = float("nan")
        if not 0 <= frac < 1:
            raise ValueError(f"validation: expected a fraction of RNA samples in [0, 1), got {validation!r}.")
        rng = np.random.default_rng(seed)
        val_rna = rng.choice(n_rna, size=int(round(frac * n_rna)), replace=False) if frac > 0 else np.array([], int)
        if frac > 0 and not len(val_rna):
            warnings.warn(
                f"validation: {frac:g} of {n_rna} RNA samples rounds to none; training without validation (no early "
                "stopping, checkpoints chosen on the training loss). Pass `validation=0` to silence this.",
                UserWarning,
                stacklevel=4,
            )
        is_val = np.isin(pairs[:, 1], val_rna)
        if is_val.all():  # torch's sampler would fail on the empty training set, naming neither
            raise ValueError(
                f"validation: {validation!r} of {n_rna} RNA samples holds out {len(val_rna)} (rounded), every training "
                "item; pass a smaller fraction."
            )
        train_ds = _Items(pairs[~is_val], data, bool(self.config["augment"]), seed)
        g = torch.Generator().manual_seed(seed)
        values = self._minibatch_values(self.data)
        if values is None:
            train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, collate_fn=train_ds.collate, generator=g,
                               drop_last=len(train_ds) > batch_size)  # fmt: skip
        else:  # each minibatch from one value of obs[minibatch_by]: an item's is its RNA sample's, else its patch's
            rna_by, img_by = values
            tr = pairs[~is_val]
            value = np.where(tr[:, 1] >= 0, rna_by[np.maximum(tr[:, 1], 0)], img_by[np.maximum(tr[:, 0], 0)])
            sampler = _BatchesWithin(pd.factorize(value)[0], batch_size, g)
            train = DataLoader(train_ds, batch_sampler=sampler, collate_fn=train_ds.collate)
        if not is_val.any():
            return train, None
        val_ds = _Items(pairs[is_val], data, False, seed)
        return train, DataLoader(val_ds, batch_size=batch_size, shuffle=False, collate_fn=val_ds.collate)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        pretrain_epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
        **kwargs: Any,
    ) -> MultimodalST:
        """Staged training: ``pretrain_epochs`` of unimodal pre-training, then ``max_epochs`` of joint training.

        Parameters
        ----------
        max_epochs
            Joint-stage epochs (default ``config["max_epochs"]``); 0 skips the joint stage.
        pretrain_epochs
            Pre-training epochs (default ``config["pretrain_epochs"]``); 0 skips pre-training.
        checkpoint_dir
            Keep each stage's checkpoints in its own subfolder, ``checkpoint_dir/pretrain`` and
            ``checkpoint_dir/joint`` (``best.ckpt``, ``last.ckpt``: see :meth:`scst.models.BaseModel.train`).
        ckpt_path
            Resume from a stage's ``last.ckpt`` written with ``checkpoint_dir``. A pre-training checkpoint continues
            pre-training up to ``pretrain_epochs`` (the stage's total), then runs the joint stage; a joint-stage one
            skips pre-training (its weights are in the checkpoint) and continues up to ``max_epochs``, and
            ``history`` gets the pre-training rows back from the checkpoint. With the same data, settings and seed
            the result equals an uninterrupted run. Without ``checkpoint_dir`` the stages write next to the
            checkpoint's stage folder (``ckpt_path``'s grandparent), or, when it is not in one, the resumed stage
            into its own folder and a later stage into a temporary one.
        **kwargs
            Passed to :meth:`scst.models.BaseModel.train` for both stages (``batch_size``, ``lr``, ``accelerator``,
            ``validation``...). ``validation`` (default 0.1) is the fraction of RNA samples held out, with their
            patches, from the training losses (rounded to whole samples; one that holds out every training item is
            a :class:`ValueError`, one that rounds to none trains without validation, with a warning); the
            unsupervised statistics fitted when the model was built (the standardisation ``gene_mean``/``gene_std``
            and, with ``rna_pcs``, the principal axes) use all samples of the training data, the validation ones
            included. ``dataloader_kwargs`` are not taken (a
            :class:`TypeError`): the loaders batch in-memory arrays in this process. ``callbacks`` are the same
            objects in both stages: a stateful one (e.g. an ``EarlyStopping`` of your own) carries its state from
            pre-training into the joint stage; pass a fresh one per stage by calling ``train`` once per stage
            (``max_epochs=0`` / ``pretrain_epochs=0``) if that matters.

        Returns
        -------
        ``self``; ``history`` numbers epochs across both stages and has a ``stage`` column (0 = pre-training,
        1 = joint; numeric so that it survives :meth:`save`/:meth:`load`).
        """
        pre = self.config["pretrain_epochs"] if pretrain_epochs is None else pretrain_epochs
        pre = _positive_int("pretrain_epochs", pre, 0, floats=True)  # 0 skips a stage
        joint = _positive_int("max_epochs", self._train_setting("max_epochs", max_epochs), 0, floats=True)
        resume_stage, done = None, []
        if ckpt_path is not None:
            ckpt_path, ck = _resume_checkpoint(ckpt_path)
            info = ck.get("callbacks", {}).get(_StageInfo.key)
            if info is None:
                raise ValueError(
                    f"ckpt_path: {str(ckpt_path)!r} records no MultimodalST training stage; expected a `last.ckpt` "
                    "written by `MultimodalST.train(checkpoint_dir=...)` (in its `pretrain` or `joint` subfolder)."
                )
            resume_stage = info["stage"]
            done = [(d["stage"], _rows_frame(d["rows"])) for d in info["earlier"]]
            skipped = "pretrain_epochs" if resume_stage == "pretrain" else "max_epochs"
            if (pre if resume_stage == "pretrain" else joint) <= 0:
                raise ValueError(f"ckpt_path: a {resume_stage}-stage checkpoint, but `{skipped}` is 0 (stage skipped).")
            if checkpoint_dir is None and ckpt_path.parent.name == resume_stage:
                checkpoint_dir = ckpt_path.parent.parent
        callbacks = kwargs.pop("callbacks", None) or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        for stage, epochs in (("pretrain", pre), ("joint", joint)):
            if epochs <= 0 or (resume_stage == "joint" and stage == "pretrain"):
                continue
            self.module.stage = stage
            logg.info(f"MultimodalST: {stage} stage, {epochs} epochs")
            # the stage and the earlier stages' history rows travel in the stage's last.ckpt, for resuming
            tag = _StageInfo(stage, [{"stage": st, "rows": _frame_rows(f)} for st, f in done])
            super().train(
                max_epochs=epochs,
                checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / stage,
                ckpt_path=ckpt_path if stage == resume_stage else None,
                callbacks=[tag, *callbacks],
                **kwargs,
            )
            if self.history is not None:
                done.append((stage, self.history))
        self.module.stage = "joint"
        frames, start = [], 0
        for stage, frame in done:
            frame = frame.assign(stage=float(stage == "joint"))
            frame.index = pd.Index(frame.index.to_numpy() + start, name="epoch")
            start += len(frame)
            frames.append(frame)
        self.history = pd.concat(frames) if frames else None
        return self

    # ------------------------------------------------------------------ inference
    def get_latent_representation(
        self, mdata: Any = None, modality: str = "rna", batch_size: int = 256, space: str = "shared"
    ) -> np.ndarray:
        """Embeddings of every sample of one modality.

        Parameters
        ----------
        mdata
            MuData (default: the training data); needs the panel genes / patches like the training data.
        modality
            ``"rna"`` or ``"image"`` (the registry's modality names also work).
        batch_size
            Inference batch size.
        space
            ``"shared"``: unit vectors after the projection to the shared space (used for retrieval); ``"cls"``:
            the encoder's CLS token.

        Returns
        -------
        float32 ``(n_obs, embed_dim)`` (or ``(n_obs, dim)`` for ``"cls"``).
        """
        mdata = self.data if mdata is None else mdata
        if mdata is None:
            raise ValueError("mdata: the model has no data; pass a MuData.")
        self._validate_data(mdata)
        reg = self.registry
        kind = {"rna": "rna", reg["rna"]: "rna", "image": "image", reg["image"]: "image"}.get(modality)
        if kind is None:
            raise ValueError(f"modality: expected 'rna' or 'image', got {modality!r}.")
        if space not in ("shared", "cls"):
            raise ValueError(f"space: expected 'shared' or 'cls', got {space!r}.")
        batch_size = _positive_int("batch_size", batch_size)  # 0: range() error; negative: no batch at all
        x = self._rna_matrix(mdata) if kind == "rna" else self._image_array(mdata)
        m = self.module

        def fn(module: MultimodalModule, b: torch.Tensor) -> torch.Tensor:
            if space == "shared":
                return module.embed_rna(b) if kind == "rna" else module.embed_image(b)
            return (module.encode_rna(b) if kind == "rna" else module.encode_image(b))[:, 0]

        loader = [torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        out = self._inference(loader, fn)
        dim = m.rna_proj.out_features if space == "shared" else m.rna_proj.in_features
        return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)

    def get_match_scores(self, mdata: Any, image_index: Any, rna_index: Any, batch_size: int = 256) -> np.ndarray:
        """Matching-head logits (fusion encoder, "match" minus "no match") of (patch, RNA sample) pairs.

        Parameters
        ----------
        mdata
            MuData with the model's modalities.
        image_index, rna_index
            Row positions in the image and RNA modalities, one pair per entry (equal lengths).
        batch_size
            Pairs per forward pass.

        Returns
        -------
        float32 ``(n_pairs,)``: higher = the model judges the patch and the RNA sample more likely to match.
        """
        self._validate_data(mdata)
        batch_size = _positive_int("batch_size", batch_size)
        reg = self.registry
        ii, jj = np.asarray(image_index, dtype=np.int64).ravel(), np.asarray(rna_index, dtype=np.int64).ravel()
        n_img, n_rna = mdata[reg["image"]].n_obs, mdata[reg["rna"]].n_obs
        if len(ii) != len(jj):
            raise ValueError(f"image_index, rna_index: expected equal lengths, got {len(ii)} and {len(jj)}.")
        for name, idx, n in (("image_index", ii, n_img), ("rna_index", jj, n_rna)):
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"{name}: positions must lie in [0, {n}), got [{idx.min()}, {idx.max()}].")
        img, x = self._image_array(mdata), self._rna_matrix(mdata)

        def batches() -> Any:  # lazily, one batch of pairs at a time; each distinct patch / sample encoded once
            for s in range(0, len(ii), batch_size):
                ui, inv_i = np.unique(ii[s : s + batch_size], return_inverse=True)
                uj, inv_j = np.unique(jj[s : s + batch_size], return_inverse=True)
                yield (torch.from_numpy(np.ascontiguousarray(img[ui])), torch.from_numpy(inv_i.ravel()),
                       torch.from_numpy(np.ascontiguousarray(x[uj])), torch.from_numpy(inv_j.ravel()))  # fmt: skip

        def fn(module: MultimodalModule, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return module.match_logit(module.encode_rna(b[2])[b[3]], module.encode_image(b[0])[b[1]])

        out = self._inference(batches(), fn)
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)
