"""One optimiser step of an scst network, torch only: the step behind the Lightning training plan and the GPU benchmark.

:class:`scst.models`' Lightning ``TrainingPlan`` and ``benchmarks/gpu_expression.py`` (which runs on GPU machines
without the scverse stack) train through the same two functions: :func:`training_loss` (``module.loss(batch)``,
checked) and :func:`train_step` (autocast, loss, non-finite guard, backward, optimiser step). :func:`patches_to_input`
is the image models' batch preparation (uint8 patches → ImageNet-normalised floats, random flips/90° rotations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ._augment import random_dihedral

__all__ = ["PRECISIONS", "patches_to_input", "train_step", "training_loss"]

#: Accepted ``precision`` values (Lightning's names and short aliases) → autocast dtype (None: float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "fp32": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16": torch.float16,
    "16-mixed": torch.float16,
    "fp16": torch.float16,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def training_loss(module: nn.Module, batch: Any) -> Mapping[str, Any]:
    """``module.loss(batch)``, checked to be a mapping with a ``"loss"`` entry.

    Parameters
    ----------
    module
        A network with a ``loss(batch) -> dict`` method (every :mod:`scst.nn` model network).
    batch
        Whatever ``module.loss`` takes (a dict of tensors for the image models).

    Returns
    -------
    The mapping returned by ``module.loss``; ``"loss"`` is the scalar to minimise, other entries are metrics.
    """
    loss_fn = getattr(module, "loss", None)
    if not callable(loss_fn):
        raise TypeError(f"`module` ({type(module).__name__}) must define `loss(batch) -> dict`.")
    out = loss_fn(batch)
    if not isinstance(out, Mapping) or "loss" not in out:
        raise TypeError(
            f"{type(module).__name__}.loss(batch) must return a dict with key 'loss', got {type(out).__name__}"
            + (f" with keys {list(out)}." if isinstance(out, Mapping) else ".")
        )
    return out


def _autocast(precision: str, device_type: str):
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {list(PRECISIONS)}, got {precision!r}.")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def _device_type(module: nn.Module, batch: Any) -> str:
    for p in module.parameters():
        return p.device.type
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else [batch]
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.device.type
    return "cpu"


def train_step(
    module: nn.Module,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    *,
    precision: str = "32",
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
) -> dict[str, Any]:
    """One training step: autocast forward + :func:`training_loss`, non-finite check, backward, optimiser step.

    Parameters
    ----------
    module
        Network in training mode with a ``loss(batch) -> dict`` method; may be compiled in place
        (``module.compile()``: ``module.loss`` then calls the compiled forward).
    batch
        Input of ``module.loss``, already on the module's device.
    optimizer
        Optimiser over ``module``'s parameters; its gradients are zeroed (set to None) before the backward pass.
    precision
        ``"32"`` (float32, also ``"32-true"``/``"fp32"``), ``"bf16"`` (bfloat16 autocast, also ``"bf16-mixed"``) or
        ``"16"`` (float16 autocast, also ``"16-mixed"``/``"fp16"``; pass a ``scaler``). The networks keep their losses
        (and HGGEP its LSTM) in float32 under autocast.
    scaler
        :class:`torch.amp.GradScaler` for float16: the loss is scaled before backward and the step skipped when the
        scaled gradients are not finite. A float16 step without a scaler warns.
    clip_grad_norm
        Clip the gradients' global 2-norm to this value before the step (unscaled first with a scaler).

    Returns
    -------
    ``module.loss``'s dict with every tensor detached (``"loss"`` included).

    Raises
    ------
    FloatingPointError
        The loss is NaN or infinite; raised before the backward pass, so the weights are not updated.
    """
    dtype = PRECISIONS.get(precision, "?")
    if dtype == "?":
        raise ValueError(f"`precision` must be one of {list(PRECISIONS)}, got {precision!r}.")
    if dtype is torch.float16 and scaler is None:
        import warnings

        warnings.warn(
            "train_step: float16 autocast without a GradScaler; small gradients may underflow to zero. Pass "
            "`scaler=torch.amp.GradScaler(device)` or use precision='bf16'.",
            UserWarning,
            stacklevel=2,
        )
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"`clip_grad_norm` must be None or > 0, got {clip_grad_norm!r}.")
    with _autocast(precision, _device_type(module, batch)):
        out = training_loss(module, batch)
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"{type(module).__name__}.loss(batch)['loss'] must be a scalar tensor, got {loss!r}.")
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError(
            f"Training loss is {loss.detach().float().cpu().item()}; the step was not taken. Try a lower `lr`, "
            "gradient clipping or check the input data for NaN/inf."
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(module.parameters(), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(module.parameters(), clip_grad_norm)
        optimizer.step()
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def patches_to_input(
    patches: np.ndarray | torch.Tensor,
    augment: bool = False,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 ``(n, 3, p, p)`` patches → float32 ImageNet-normalised network input, the image models' batches.

    Parameters
    ----------
    patches
        uint8 array or tensor ``(n, 3, p, p)`` (square patches when ``augment``).
    augment
        One random element of the dihedral group per patch (horizontal flip × rot90 by k·90°, drawn as the
        image models always did: ``randint(0, 8)`` per patch, flip when >= 4, then ``r % 4`` quarter turns).
    generator
        CPU generator of the augmentation draws (reproducible batches).
    device
        Device to convert on (the uint8 patches move there first: 4× less transfer than floats); default: where
        ``patches`` are (CPU for arrays).
    channels_last
        Return the batch in ``torch.channels_last`` memory format (for a CNN converted with
        ``module.to(memory_format=torch.channels_last)``).

    Returns
    -------
    float32 tensor ``(n, 3, p, p)``: ``(x / 255 - mean) / std`` with the ImageNet mean and std.
    """
    x = torch.from_numpy(np.ascontiguousarray(patches)) if isinstance(patches, np.ndarray) else patches
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(patches).__name__
        raise ValueError(f"patches: expected uint8 (n, 3, p, p) patches, got {got}.")
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.float().div_(255.0)
    if augment and len(x):
        x = random_dihedral(x, generator)
    x = imagenet_normalize(x, inplace=True)  # x is a fresh float tensor here
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def imagenet_normalize(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``(x - mean) / std`` with the ImageNet mean and std per channel of a float ``(n, 3, h, w)`` batch in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std) if inplace else (x - mean) / std
