"""Self-supervised pretraining of a patch encoder on all tissue tiles of the user's own H&E sections (BYOL).

Method: BYOL (Grill et al. 2020) with the heads, loss and momentum utilities of ``lightly``. BYOL was chosen over
SimCLR/MoCo and DINO for small CPU batches (32–64 tiles): it needs no negatives (SimCLR's contrastive loss
wants batches of thousands, MoCo a large queue) and no multi-crop teacher sharpening (DINO, tuned for ViTs and
large batches); its momentum target network keeps it from collapsing where SimSiam, its cheaper sibling without
the target, is more sensitive to small batches and learning rates. The target costs one gradient-free forward
pass per view (~25 % of a step).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from .._constants import TABLE_KEY, UNS_KEY
from .._logging import logg
from .._utils import _atomic_file, _get_table, _positive, _positive_int
from ..nn._ssl import BYOLModule
from ._base import BaseModel, _refuse_dataloader_kwargs, _scst_version

__all__ = ["SSLEncoder", "BYOLModule"]


class _TileBatches(Dataset):
    """uint8 tiles, indexed by lists of positions (one batch per item, no per-tile collation)."""

    def __init__(self, tiles: np.ndarray) -> None:
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.tiles[np.sort(np.asarray(idx))]))


def _check_encoder_path(path: str | os.PathLike, overwrite: bool, arg: str = "path") -> Path:
    """``path``, ``~`` expanded as the weights loaders expand it, if a file may be written there; else a clear error."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{arg}: {str(path)!r} is a folder; expected the path of a .safetensors file to write.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{arg}: {str(path)!r} exists; pass overwrite=True to replace it.")
    return path


class SSLEncoder(BaseModel):
    """Self-supervised (BYOL) pretraining of a patch encoder on every tissue tile of some H&E sections.

    Tiles are not restricted to the ST spots: :meth:`setup_sdata` lays a ``spacing_um`` grid of ``size_um``
    windows over each section's tissue mask (:func:`scst.pp.tile_grid`), and the pixels of each tile are checked
    again with :func:`scst.pp.filter_tiles` when they are read. Tiles are read once and kept in memory as uint8
    (her2st: ~1,100 tiles of 80 µm per section, 42 MB at 112 px). Each step draws two views of every tile with
    :class:`scst.nn.HEAugment` (random scale crop, flips/90° rotations, HED stain jitter, blur) and trains BYOL
    (see the module docstring for why BYOL). :meth:`save_encoder` writes the trunk's weights for
    :func:`scst.tl.embed_patches` and the image models.

    Training uses no validation split: the checkpoint kept is the epoch with the lowest training loss.

    Parameters
    ----------
    data
        SpatialData set up with :meth:`setup_sdata`.
    **config
        Overrides of ``_default_config`` (backbone name, head widths, augmentation, momentum) and training
        settings (``max_epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``optimizer``, ``lr_scheduler``,
        ``seed``).
    """

    _module_cls: ClassVar[type[nn.Module]] = BYOLModule
    _default_config: ClassVar[dict[str, Any]] = {
        "backbone": "shufflenet_v2_x0_5",
        "backbone_weights": None,
        "proj_hidden_dim": 1024,
        "proj_dim": 256,
        "pred_hidden_dim": 1024,
        "crop_scale": [0.5, 1.0],
        "hed_sigma": 0.05,
        "hed_bias": 0.01,
        "blur_sigma": [0.1, 1.5],
        "p_blur": 0.5,
        "momentum_start": 0.99,
        "momentum_end": 1.0,
        "backbone_kwargs": None,
        "tile_cache_mb": 4096.0,
    }
    _train_defaults: ClassVar[dict[str, Any]] = {
        "max_epochs": 10,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "patience": 10,
        "optimizer": "adamw",
        "lr_scheduler": "cosine",
    }
    _MODULE_KEYS = (
        "backbone", "backbone_weights", "proj_hidden_dim", "proj_dim", "pred_hidden_dim", "crop_scale", "hed_sigma",
        "hed_bias", "blur_sigma", "p_blur", "momentum_start", "momentum_end", "backbone_kwargs",
    )  # fmt: skip

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_sdata(
        cls,
        sdata: Any,
        sections: str | Sequence[str] | None = None,
        size_um: float = 80.0,
        patch_px: int = 112,
        spacing_um: float | None = None,
        min_tissue: float = 0.5,
        tile_threshold: float = 0.5,
        table: str = TABLE_KEY,
    ) -> None:
        """Find all tissue tiles of ``sections`` and register them (with the patch geometry) on the table.

        Parameters
        ----------
        sdata
            SpatialData with an H&E image per section and the per-section geometry in
            ``tables[table].uns["scst"]["sections"]`` (``image_key``, ``um_per_px``), as from
            :func:`scst.io.read_st` / ``scst.datasets.*``. Spots are not needed.
        sections
            Sections to pretrain on; default every section with an image. Leave held-out test sections out.
        size_um
            Tile edge in µm (cut at each section's own µm/px).
        patch_px
            Tile edge in pixels fed to the network.
        spacing_um
            Grid step between tile centres; default ``size_um`` (adjacent, non-overlapping tiles).
        min_tissue
            Minimum tissue fraction of a tile's window on the low-resolution tissue mask (:func:`scst.pp.tile_grid`).
        tile_threshold
            Minimum fraction of tissue pixels of the tile itself (:func:`scst.pp.filter_tiles`, ``he`` preset),
            checked when the tiles are read.
        table
            Table holding the geometry; the registry is written to it.

        Notes
        -----
        Writes ``table.uns["_scst_setup"]["SSLEncoder"]`` (JSON): ``table``, ``sections``, ``size_um``,
        ``patch_px``, ``spacing_um``, ``min_tissue``, ``tile_threshold``, ``image_key``/``um_per_px`` per section
        and ``centers``: per section, the tile centres ``[x, y]`` in full-resolution pixels.

        Raises
        ------
        ValueError
            If a section has no tissue tile (naming all such sections), or on bad arguments.
        """
        from ..pp._tissue import tile_grid

        if not hasattr(sdata, "tables") or not hasattr(sdata, "images"):
            raise TypeError(f"sdata: expected a SpatialData object with images, got {type(sdata).__name__}.")
        adata = _get_table(sdata, table)
        size_um = _positive("size_um", size_um)  # numpy scalars too; not NaN/inf/bool
        spacing_um = size_um if spacing_um is None else _positive("spacing_um", spacing_um)
        _positive_int("patch_px", patch_px, 8, floats=True)  # None, NaN too
        for name, v in (("min_tissue", min_tissue), ("tile_threshold", tile_threshold)):
            if isinstance(v, bool | np.bool_) or not (isinstance(v, int | float | np.number) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {v!r}.")
        geos = adata.uns.get(UNS_KEY, {}).get("sections", {})
        with_image = [s for s, g in geos.items() if g.get("image_key") is not None and g["image_key"] in sdata.images]
        if sections is None:
            sections = with_image
        else:
            sections = [sections] if isinstance(sections, str) else [str(s) for s in sections]
            bad = [s for s in sections if s not in with_image]
            if bad:
                raise ValueError(f"sections: {bad} have no image in the data (sections with an image: {with_image}).")
        if not sections:
            raise ValueError(f"sections: no section to pretrain on (sections with an image: {with_image}).")

        centers, empty = {}, []
        for s in sections:
            try:
                grid, _ = tile_grid(
                    sdata, s, spacing_um=spacing_um, size_um=size_um, min_tissue=min_tissue, table_key=table,
                    inplace=False,
                )  # fmt: skip
            except ValueError as e:
                if "No grid point" not in str(e):
                    raise
                empty.append(s)
                continue
            centers[s] = np.round(np.asarray(grid.obsm["spatial"], dtype=np.float64), 2).tolist()
        if empty:
            raise ValueError(
                f"sections: {empty} have no tissue tile (no {size_um} µm window with >= {min_tissue:.0%} tissue on "
                "the tissue mask); leave them out or check their images with scst.pp.tissue_mask."
            )
        n = {s: len(c) for s, c in centers.items()}
        cls._register(
            adata,
            {
                "table": table,
                "sections": list(sections),
                "size_um": float(size_um),
                "patch_px": int(patch_px),
                "spacing_um": spacing_um,
                "min_tissue": float(min_tissue),
                "tile_threshold": float(tile_threshold),
                "image_key": {s: geos[s]["image_key"] for s in sections},
                "um_per_px": {s: float(geos[s]["um_per_px"]) for s in sections},
                "centers": centers,
            },
        )
        logg.info(f"SSLEncoder: {sum(n.values())} tissue tiles ({n}) of {size_um} µm, {spacing_um} µm apart.")

    # ------------------------------------------------------------------ model
    def _module_kwargs(self) -> dict[str, Any]:
        return {k: self.config[k] for k in self._MODULE_KEYS}

    def _validate_data(self, adata: Any) -> None:
        return None

    def _extra_state(self) -> dict[str, Any]:
        r = self.registry
        return {
            "method": "BYOL (lightly)",
            "geometry": {"size_um": r["size_um"], "patch_px": r["patch_px"], "spacing_um": r["spacing_um"]},
            "sections": r["sections"],
            "n_tiles": getattr(self, "n_tiles_", None),  # the tiles trained on (after filter_tiles)
        }

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        super()._set_extra_state(state)
        if state.get("n_tiles") is not None:  # a loaded model's file metadata counts the tiles it trained on
            self.n_tiles_ = int(state["n_tiles"])

    @property
    def encoder(self) -> nn.Module:
        """The online trunk (classifier removed): ``(B, 3, H, W)`` ImageNet-normalised → ``(B, n_features)``."""
        return self.module.backbone

    # ------------------------------------------------------------------ data
    def tiles(self) -> dict[str, np.ndarray]:
        """uint8 ``(n, 3, patch_px, patch_px)`` tissue tiles per section (read once, kept in a process cache).

        Tiles whose own pixels are less than ``tile_threshold`` tissue (:func:`scst.pp.filter_tiles`) are dropped;
        ``tile_centers_`` then holds, per section, the full-resolution ``[x, y]`` centres of the tiles returned.
        """
        from ..pp._patches import SpotPatchDataset
        from ..pp._tissue import filter_tiles
        from ._image import _cached_patches

        if self.data is None or not hasattr(self.data, "images"):
            raise ValueError("SSLEncoder: tiles are read from the SpatialData; load the model with data=sdata.")
        r, out, empty, kept = self.registry, {}, [], {}
        size_um, px = float(r["size_um"]), int(r["patch_px"])
        for s in r["sections"]:
            key_img = r["image_key"][s]
            if key_img not in self.data.images:
                raise KeyError(f"Image {key_img!r} of section {s!r} is not in the data ({list(self.data.images)}).")
            element = self.data.images[key_img]
            xy = np.asarray(r["centers"][s], dtype=np.float64).reshape(-1, 2)
            ds = SpotPatchDataset.from_arrays(
                {s: element}, xy, np.zeros(len(xy), dtype=np.int64), {s: r["um_per_px"][s]}, size_um=size_um,
                out_px=px, normalize=None,
            )  # fmt: skip

            def read(ds=ds) -> np.ndarray:
                arr = np.empty((len(ds), ds.n_channels, px, px), dtype=np.uint8)
                for i in ds.locality_order():
                    arr[i] = ds.patch_uint8(int(i))
                return arr

            budget = int(float(self.config["tile_cache_mb"]) * 2**20)
            # the window in pixels (size_um / um_per_px) is part of the cache key: a corrected pixel size re-reads
            arr = _cached_patches(element, xy, size_um, px, budget, read, int(ds.size_px[s]))
            _, keep = filter_tiles(arr[:, :3], threshold=float(r["tile_threshold"]))
            if not keep.all():
                logg.info(
                    f"SSLEncoder: section {s!r}: {int((~keep).sum())} of {len(keep)} tiles below tissue fraction."
                )
            if not keep.any():
                empty.append(s)
            out[s], kept[s] = arr[keep, :3], xy[keep]
        if empty:
            raise ValueError(
                f"sections: {empty} have no tile with >= {r['tile_threshold']:.0%} tissue pixels "
                "(scst.pp.filter_tiles); leave them out or lower tile_threshold."
            )
        self.tile_centers_ = kept
        return out

    def _dataloaders(self, batch_size: int, validation: Any, seed: int, **kwargs: Any):
        if validation not in (None, False):
            raise ValueError("validation: SSLEncoder trains without a validation split; pass validation=None.")
        _refuse_dataloader_kwargs(self, kwargs)
        tiles = np.concatenate(list(self.tiles().values()))
        if len(tiles) < 2:
            raise ValueError(f"SSLEncoder needs at least 2 tiles (batch statistics), got {len(tiles)}.")
        bs = min(int(batch_size), len(tiles))
        if bs < batch_size:
            warnings.warn(f"batch_size: only {len(tiles)} tiles; using batches of {bs}.", UserWarning, stacklevel=3)
        gen = torch.Generator().manual_seed(int(seed))
        sampler = BatchSampler(RandomSampler(range(len(tiles)), generator=gen), bs, drop_last=True)
        loader = DataLoader(_TileBatches(tiles), sampler=sampler, batch_size=None)
        self.module.max_steps = max(1, len(sampler) * int(self._max_epochs_pending))
        self.n_tiles_ = len(tiles)
        return loader, None

    def train(self, max_epochs: int | None = None, **kwargs: Any) -> SSLEncoder:
        """Train BYOL; see :meth:`scst.models.BaseModel.train` (``validation`` must stay None).

        The target momentum follows a cosine from ``momentum_start`` to ``momentum_end`` over all
        ``max_epochs`` of this call. ``kwargs.setdefault("early_stopping", False)``: no validation metric.
        """
        self._max_epochs_pending = int(self._train_setting("max_epochs", max_epochs))
        self.module.step.zero_()
        kwargs.setdefault("early_stopping", False)
        super().train(max_epochs=max_epochs, **kwargs)
        return self

    # ------------------------------------------------------------------ export
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk's state_dict (CPU, contiguous), keys as in the torchvision/timm model, without classifier."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.module.backbone.state_dict().items()}

    def save_encoder(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the trunk's weights as safetensors (atomically: temporary file, then rename).

        The keys are those of ``torchvision.models.get_model(backbone)`` (or the timm model) minus its classifier,
        so ``model.load_state_dict(load_file(path), strict=False)`` leaves only the classifier missing, and
        :func:`scst.tl.embed_patches` (``weights=path``) and the image models read it. The file's metadata holds
        ``backbone``, ``method``, ``size_um``, ``patch_px``, ``sections``, ``n_tiles`` and ``scst_version``.

        Parameters
        ----------
        path
            Output file (``.safetensors``).
        overwrite
            Replace an existing file.

        Returns
        -------
        The path written.
        """
        import json

        from safetensors.torch import save_file

        path = _check_encoder_path(path, overwrite)
        if not self.is_trained:
            warnings.warn("save_encoder: the model is not trained; writing its initial weights.", stacklevel=2)
        path.parent.mkdir(parents=True, exist_ok=True)
        r = self.registry
        meta = {
            "backbone": str(self.config["backbone"]),
            "method": "BYOL (lightly)",
            "size_um": str(r["size_um"]),
            "patch_px": str(r["patch_px"]),
            "sections": json.dumps(r["sections"]),
            "n_tiles": str(getattr(self, "n_tiles_", sum(len(c) for c in r["centers"].values()))),
            # what embed_patches needs as encoder_kwargs to build the same trunk (e.g. a ViT's img_size)
            "backbone_kwargs": json.dumps(self.config.get("backbone_kwargs")),
            "scst_version": _scst_version(),
        }
        with _atomic_file(path) as tmp:  # readable like any file the user writes (not mkstemp's 0600)
            save_file(self.encoder_state_dict(), tmp, metadata=meta)
        logg.info(f"SSLEncoder: encoder weights ({meta['backbone']}) written to {str(path)!r}")
        return path
