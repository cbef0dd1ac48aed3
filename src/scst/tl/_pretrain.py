"""Self-supervised pretraining of a patch encoder on the user's own slides (over :class:`scst.models.SSLEncoder`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._constants import TABLE_KEY

__all__ = ["pretrain_encoder"]


def pretrain_encoder(
    sdata: Any,
    backbone: str = "shufflenet_v2_x0_5",
    *,
    out: str | os.PathLike,
    sections: str | Sequence[str] | None = None,
    size_um: float = 80.0,
    patch_px: int = 112,
    spacing_um: float | None = None,
    min_tissue: float = 0.5,
    tile_threshold: float = 0.5,
    max_epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    table: str = TABLE_KEY,
    accelerator: str = "auto",
    enable_progress_bar: bool = False,
    **config: Any,
) -> Path:
    """Pretrain ``backbone`` with BYOL on all tissue tiles of ``sections`` and write its weights (safetensors).

    A non-random initialisation for labs without foundation-model weights or with unusual tissue: every tissue
    tile of the sections (not only the ST spots) is seen under H&E augmentations (scale crops, flips/90°
    rotations, HED stain jitter, blur); see :class:`scst.models.SSLEncoder`.

    Parameters
    ----------
    sdata
        SpatialData with the H&E images and per-section geometry (``scst.io.read_st`` / ``scst.datasets.*``).
        The setup registry is written to ``sdata.tables[table].uns["_scst_setup"]["SSLEncoder"]``.
    backbone
        torchvision (e.g. ``"shufflenet_v2_x0_5"``, HGGEP's trunk; ``"resnet18"``) or timm model name.
    out
        Output ``.safetensors`` file (written atomically).
    sections
        Sections whose tiles are used; default all with an image. For an honest evaluation, leave the test
        section out.
    size_um, patch_px, spacing_um
        Tile geometry: ``size_um`` windows on a ``spacing_um`` grid (default ``size_um``), resized to ``patch_px``.
        Use the geometry of the model that will load the weights (HGGEP: 80 µm, 112 px).
    min_tissue, tile_threshold
        Tissue screening of the tiles (:meth:`~scst.models.SSLEncoder.setup_sdata`): the tissue-mask fraction a grid
        window needs, then the H&E pixel fraction of :func:`scst.pp.filter_tiles` a tile needs.
    max_epochs, batch_size, lr, seed
        Training settings (AdamW, cosine learning-rate schedule).
    table
        Table with the per-section geometry.
    accelerator
        Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``).
    enable_progress_bar
        Show Lightning's progress bar.
    **config
        Other :class:`~scst.models.SSLEncoder` settings (head widths, augmentation strengths, ``weight_decay``,
        ``backbone_kwargs``: the backbone constructor's arguments, e.g. ``{"img_size": 112}`` for a timm ViT of
        fixed input size; pass the same as ``encoder_kwargs`` to ``embed_patches``).

    Returns
    -------
    ``Path`` of the written file; load it with ``scst.tl.embed_patches(sdata, backbone, weights=path)`` or
    ``torchvision.models.get_model(backbone).load_state_dict(safetensors.torch.load_file(path), strict=False)``.

    Raises
    ------
    ValueError
        If a section has no tissue tile (the message names them).
    """
    from ..models._pretrain import SSLEncoder, _check_encoder_path

    if out is None:
        raise ValueError("out: expected the path of the .safetensors file to write, got None.")
    out = _check_encoder_path(out, overwrite=True, arg="out")  # before training: a folder is refused now, not after
    SSLEncoder.setup_sdata(
        sdata, sections=sections, size_um=size_um, patch_px=patch_px, spacing_um=spacing_um, table=table,
        min_tissue=min_tissue, tile_threshold=tile_threshold,
    )  # fmt: skip
    model = SSLEncoder(sdata, backbone=backbone, seed=seed, **config)
    model.train(
        max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed, accelerator=accelerator,
        enable_progress_bar=enable_progress_bar,
    )  # fmt: skip
    return model.save_encoder(out)
