"""Embed spot patches with a CNN / ViT backbone or hand-crafted features, into ``obsm``."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._constants import SECTION_KEY, TABLE_KEY, UNS_EMBED_KEY, UNS_KEY
from .._logging import logg
from .._utils import _get_table, _positive, _positive_int
from ..nn._train_step import imagenet_normalize

__all__ = ["embed_patches"]


def _pool(out: Any, name: str) -> torch.Tensor:
    """Encoder output → ``(B, F)``: global average over spatial dims (``(B, C, H, W)``) or tokens (``(B, T, C)``)."""
    if isinstance(out, dict) and len(out) == 1:
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"encoder {name!r} returned {type(out).__name__}; expected a tensor (B, F), (B, C, H, W) or (B, T, C)."
        )
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        return out.mean(dim=1)
    if out.ndim == 2:
        return out
    raise ValueError(f"encoder {name!r} returned a tensor of shape {tuple(out.shape)}; expected 2, 3 or 4 dims.")


def _check_images(sdata: Any, adata: Any, table: str) -> None:
    """Every section of the table must have an H&E image in ``sdata.images`` (clear error otherwise)."""
    if SECTION_KEY not in adata.obs:
        raise ValueError(f"sdata.tables[{table!r}].obs: no {SECTION_KEY!r} column; read the data with scst.io.read_st.")
    geos = adata.uns.get(UNS_KEY, {}).get("sections", {})
    sections = [str(s) for s in adata.obs[SECTION_KEY].astype(str).unique()]
    lacking = {}
    for s in sections:
        key = geos.get(s, {}).get("image_key")
        if key is None:
            lacking[s] = f"no image_key in uns[{UNS_KEY!r}]['sections'][{s!r}]"
        elif key not in sdata.images:
            lacking[s] = f"image {key!r} not in sdata.images"
    if lacking:
        detail = "; ".join(f"{s}: {why}" for s, why in list(lacking.items())[:5])
        raise ValueError(
            f"sdata: embed_patches needs the H&E image of every section, {len(lacking)} of {len(sections)} lack one "
            f"({detail}; images present: {list(sdata.images)}). Read the sections with their image "
            "(scst.io.read_st(..., image=...)) or embed only the table of sections that have one."
        )


def _warn_other_geometry(path: str, size_um: Any, out_px: int) -> None:
    """Warn when a weights file of :func:`scst.tl.pretrain_encoder` was trained on tiles of another geometry.

    Its safetensors metadata records ``size_um`` and ``patch_px``; the features of windows of another size or
    resolution are not those the encoder learned on (nothing failed before).
    """
    from ..nn._backbones import weights_metadata

    meta = weights_metadata(path)
    if "size_um" not in meta or "patch_px" not in meta or not np.isscalar(size_um):
        return
    trained = (float(meta["size_um"]), int(float(meta["patch_px"])))
    if trained != (float(size_um), int(out_px)):
        warnings.warn(
            f"weights: {path!r} was pretrained on {trained[0]:g} µm tiles at {trained[1]} px "
            f"({meta.get('method', 'self-supervised')}); embedding {float(size_um):g} µm at {int(out_px)} px. Pass "
            f"size_um={trained[0]:g}, out_px={trained[1]} for the geometry it learned on.",
            UserWarning,
            stacklevel=3,
        )


def embed_patches(
    sdata: Any,
    encoder: str | nn.Module = "resnet18",
    *,
    weights: str | os.PathLike | nn.Module | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    size_um: float | Sequence[float] = 80.0,
    out_px: int = 224,
    batch_size: int = 64,
    key_added: str | None = None,
    table: str = TABLE_KEY,
    device: str | torch.device = "cpu",
    normalize: Literal["imagenet"] | None = "imagenet",
    num_workers: int = 0,
    pin_memory: bool | None = None,
    precision: str = "32",
    progress: bool = True,
) -> None:
    """Embed every spot's H&E patch into a feature vector: a pretrained-style backbone or hand-crafted features.

    Patches are read lazily with :class:`scst.pp.SpotPatchDataset` (``size_um`` windows at each section's own
    µm/px, resized to ``out_px``) in batches, so the image is never loaded whole.

    Parameters
    ----------
    sdata
        SpatialData from :func:`scst.io.read_st` / ``scst.datasets.*`` (images, table with ``obs["section"]``,
        ``obsm["spatial"]`` and per-section geometry).
    encoder
        ``"handcrafted"`` (:func:`scst.pp.handcrafted_features`: colour, H&E stain and texture statistics), a
        torchvision or timm model name (classifier removed, global-pooled features; e.g. ``"resnet18"``,
        ``"densenet121"``), or an :class:`torch.nn.Module` mapping ``(B, 3, out_px, out_px)`` patches to
        ``(B, F)`` (``(B, C, H, W)`` and ``(B, T, C)`` outputs are averaged over space / tokens).
    weights
        Weights of a named backbone (see :func:`scst.nn.build_backbone` and ``docs/encoders.md``): None (random
        initialisation, with a warning: the features are weak), a torchvision weights name (``"IMAGENET1K_V1"``,
        ``"DEFAULT"``; downloaded once into ``$TORCH_HOME``), ``"pretrained"`` for timm names
        (``"hf-hub:<org>/<model>"`` pathology foundation models included), a local ``.safetensors`` / torch
        state_dict file (read with ``weights_only=True``) or a module whose state_dict is copied. Not used with
        ``"handcrafted"`` and modules.
    encoder_kwargs
        Extra arguments of ``torchvision.models.get_model`` / ``timm.create_model`` for a named backbone, e.g.
        ``{"init_values": 1e-5, "dynamic_img_size": True}`` for ``"hf-hub:MahmoodLab/UNI"`` (see ``docs/encoders.md``).
    size_um
        Patch edge in µm, or several (e.g. ``(80, 160, 320)``): the features of each field of view, concatenated
        in that order (the surroundings of a spot carry information its own 80 µm patch lacks).
    out_px
        Patch edge in pixels after resizing. For ``"handcrafted"`` the cost grows with the pixels (CPU-ms per patch
        on her2st: 1.2 at 56 px, 3.4 at 112, 16 at 224); at 56 px a ridge on the 80 µm features lost nothing there
        and the multi-scale input of the expression heads lost ~0.003 mean PCC (docs/benchmarks/features.md,
        expression.md); 56–112 px suit it, the default suits ImageNet networks.
    batch_size
        Patches per forward pass.
    key_added
        ``obsm`` key; default ``f"X_{name}"`` with name the encoder string (characters other than letters, digits,
        ``_.-`` replaced by ``_``) or the module's class name (lower case).
    table
        Table key in ``sdata``.
    device
        Torch device for the encoder.
    normalize
        ``"imagenet"``: normalise patches with ImageNet mean/std before a network (torchvision/timm backbones
        expect it); None: feed ``[0, 1]`` RGB. Hand-crafted features always use ``[0, 1]`` RGB.
    num_workers
        DataLoader workers reading the next batches of patches while the encoder computes (each reads 4 batches
        ahead); hand-crafted features are computed in the workers too, so they use ``num_workers`` cores. 0
        (default): everything in the main process — best on one or two CPU cores with a network encoder, where
        workers compete with it; on a GPU machine 4–8. Spots are visited in image-chunk order, so each zarr
        chunk is decoded about once, and the result does not depend on ``num_workers``.
    pin_memory
        Page-locked batches for asynchronous host → GPU copies; None: on CUDA devices only.
    precision
        ``"32"`` (fp32, default), ``"bf16"`` or ``"16"`` (fp16): ``torch.autocast`` of the encoder's forward pass
        on ``device`` (features are returned as float32). Not used by hand-crafted features.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    None. Writes ``table.obsm[key_added]`` (float32 ``(n_obs, F)``) and
    ``table.uns["scst_embed"][key_added]``: ``encoder``, ``weights`` (weights name, absolute file path or
    ``"random init"``), ``size_um`` (a number, or the list of fields of view), ``out_px``, ``normalize``,
    ``n_features``, ``encoder_kwargs`` (if given) and, for hand-crafted features, ``feature_names``. Heads trained
    on the embedding (:class:`scst.models.HGGEPHead`, :class:`scst.models.MLPExpression`) record this, so that
    :func:`scst.tl.predict_expression` recomputes it on a new slide.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .._inference import inference_options
    from ..nn._backbones import build_backbone
    from ..pp._features import handcrafted_feature_names, handcrafted_features
    from ..pp._patches import PatchBatches, SpotPatchDataset

    if not hasattr(sdata, "tables") or not hasattr(sdata, "images"):
        raise TypeError(f"sdata: expected a SpatialData object with images, got {type(sdata).__name__}.")
    adata = _get_table(sdata, table)
    _check_images(sdata, adata, table)
    batch_size = _positive_int("batch_size", batch_size)
    if normalize not in ("imagenet", None):
        raise ValueError(f"normalize: expected 'imagenet' or None, got {normalize!r}.")
    opts = inference_options(device, num_workers, pin_memory, precision)
    # the cheap checks before a backbone is built (which may download weights)
    # size_um: numpy scalars and 0-d arrays are one size; True (1 µm), NaN and inf are errors
    try:
        sizes = [_positive("size_um", u) for u in ([size_um] if np.ndim(size_um) == 0 else size_um)]
    except ValueError:
        raise ValueError(f"size_um: expected positive patch size(s) in µm, got {size_um!r}.") from None
    if not sizes:
        raise ValueError(f"size_um: expected positive patch size(s) in µm, got {size_um!r}.")
    _positive_int("out_px", out_px, floats=True)  # as SpotPatchDataset's
    handcrafted = isinstance(encoder, str) and encoder == "handcrafted"
    if isinstance(encoder, nn.Module):
        name, module, weights_desc = type(encoder).__name__.lower(), encoder, "given module"
        if weights is not None or encoder_kwargs:
            raise ValueError("weights, encoder_kwargs: only used with a backbone name; build the module yourself.")
    elif isinstance(encoder, str):
        name = encoder
        if handcrafted:
            module, weights_desc = None, "none (hand-crafted)"
            if weights is not None or encoder_kwargs:
                raise ValueError("weights, encoder_kwargs: not used with encoder='handcrafted'.")
        else:
            module, _ = build_backbone(encoder, weights, where="weights", model_kwargs=encoder_kwargs)
            if weights is None:
                weights_desc = "random init"
            elif isinstance(weights, nn.Module):
                weights_desc = f"copied from a {type(weights).__name__}"
            elif isinstance(weights, os.PathLike) or os.path.isfile(str(weights)):
                # A weights file, as build_backbone read it: recorded absolute, so that the recipe in
                # uns["scst_embed"] finds the same file from any working directory (predict_expression).
                weights_desc = os.path.abspath(os.fspath(weights))
                _warn_other_geometry(weights_desc, size_um, out_px)
            else:
                weights_desc = str(weights)
    else:
        raise TypeError(f"encoder: expected 'handcrafted', a model name or an nn.Module, got {type(encoder).__name__}.")
    key = key_added or "X_" + re.sub(r"[^0-9A-Za-z_.-]+", "_", name)  # hub names: no "/" or ":" in the key
    logg.info(f"embed_patches: encoder {name!r}, weights: {weights_desc}, {size_um} µm → {out_px} px patches")

    parts = []
    if module is not None:
        was_training = module.training
        module.eval().to(device)
    try:
        for um in sizes:
            # Batches of spots in image-chunk order, read (and resized) as whole batches, by workers if asked.
            ds = SpotPatchDataset(sdata, table, return_counts=False, size_um=um, out_px=out_px, normalize=None)
            order = ds.locality_order()
            items = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            # uint8 images travel as uint8 (a quarter of the bytes) and become [0, 1] floats where they are used.
            # Hand-crafted features are computed where the batch is read: with workers, on several cores at once.
            as_uint8 = not handcrafted and all(src.dtype == np.uint8 for src in ds.sources.values())
            fn = handcrafted_features if handcrafted else None
            batches = PatchBatches(ds, items, float01=not as_uint8, fn=fn)
            loader = DataLoader(batches, batch_size=None, **opts.loader_kwargs(len(items)))
            out: np.ndarray | None = None
            layout = opts.convolutions(module) if module is not None else contextlib.nullcontext()
            with torch.no_grad(), opts.autocast(), layout:
                desc = f"embed_patches ({name}, {um:g} µm)"
                for i, x in tqdm(loader, desc=desc, unit="batch", disable=not progress):
                    idx = ds.index[items[i]]
                    if handcrafted:
                        feats = x.numpy()  # computed by PatchBatches
                    else:
                        x = opts.to_device(x)
                        x = x.float().div_(255.0) if as_uint8 else x
                        if normalize == "imagenet":
                            x = imagenet_normalize(x)
                        feats = _pool(module(opts.input_layout(x)), name).float().cpu().numpy()
                    if out is None:
                        out = np.full((adata.n_obs, feats.shape[1]), np.nan, dtype=np.float32)
                    out[idx] = feats
            parts.append(out)
    finally:
        if module is not None:
            module.train(was_training)
    out = parts[0] if len(parts) == 1 else np.hstack(parts)
    bad = ~np.isfinite(out).all(1)
    if bad.any():
        raise FloatingPointError(
            f"embed_patches: encoder {name!r} gave non-finite features for {int(bad.sum())} spot(s), e.g. "
            f"{adata.obs_names[bad][:3].tolist()}."
        )
    adata.obsm[key] = out
    info: dict[str, Any] = {
        "encoder": name,
        "weights": weights_desc,
        "size_um": sizes[0] if len(sizes) == 1 else sizes,
        "out_px": int(out_px),
        "normalize": "none" if handcrafted or normalize is None else normalize,
        "n_features": int(out.shape[1]),
    }
    if encoder_kwargs:
        info["encoder_kwargs"] = dict(encoder_kwargs)
    if handcrafted:
        names = handcrafted_feature_names()
        info["feature_names"] = names if len(sizes) == 1 else [f"{n}_{um:g}um" for um in sizes for n in names]
    store = dict(adata.uns.get(UNS_EMBED_KEY, {}))
    store[key] = info
    adata.uns[UNS_EMBED_KEY] = store
    logg.info(f"embed_patches: {adata.n_obs} spots × {out.shape[1]} features → obsm[{key!r}]")
