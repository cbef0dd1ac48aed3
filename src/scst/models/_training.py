"""Lightning pieces behind :meth:`scst.models.BaseModel.train`.

* :class:`TrainingPlan` wraps a module whose ``loss(batch)`` returns a dict with key ``"loss"``; every other
  scalar entry is logged too, as ``train_<key>`` / ``val_<key>`` epoch means.
* :class:`NaNGuard` stops training with a :class:`FloatingPointError` on the first non-finite loss, *before*
  the backward pass, so the weights are never updated from a NaN.
* :class:`History` collects the per-epoch metrics that become ``model.history``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from torch import nn

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
LR_SCHEDULERS = (None, "cosine", "plateau")


def _batch_size(batch: Any) -> int:
    """Number of samples in a batch (tensor, mapping, sequence, or a PyG-style batch), for weighted epoch means."""
    for attr in ("num_graphs", "batch_size"):
        n = getattr(batch, attr, None)
        if isinstance(n, int):
            return n
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            if isinstance(item, torch.Tensor) and item.ndim:
                return int(item.shape[0])
    return 1


def _as_scalar(value: Any) -> torch.Tensor | float | None:
    """``value`` as a loggable scalar, or None when it is not one (vectors, strings...)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(()) if value.numel() == 1 else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class TrainingPlan(pl.LightningModule):
    """Optimise ``module.loss(batch)["loss"]`` with Adam/AdamW; log all scalar loss entries per epoch.

    Parameters
    ----------
    module
        A :class:`torch.nn.Module` with a ``loss(batch) -> dict`` method.
    lr, weight_decay
        Optimiser settings.
    optimizer
        ``"adam"`` or ``"adamw"`` (decoupled weight decay).
    lr_scheduler
        ``None``, ``"cosine"`` (cosine annealing over ``max_epochs``) or ``"plateau"`` (halve the learning rate
        when ``monitor`` stops improving for ``max(1, patience // 2)`` checks).
    monitor, mode
        Metric that the plateau scheduler follows.
    max_epochs, patience
        Used by the schedulers.
    """

    def __init__(
        self,
        module: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        lr_scheduler: str | None = None,
        monitor: str = "val_loss",
        mode: str = "min",
        max_epochs: int = 100,
        patience: int = 10,
    ) -> None:
        super().__init__()
        if not callable(getattr(module, "loss", None)):
            raise TypeError(f"`module` ({type(module).__name__}) must define `loss(batch) -> dict`.")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {optimizer!r}.")
        if lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"`lr_scheduler` must be one of {list(LR_SCHEDULERS)}, got {lr_scheduler!r}.")
        if not lr >= 0 or not weight_decay >= 0:
            raise ValueError(f"`lr` and `weight_decay` must be >= 0, got {lr} and {weight_decay}.")
        self.module = module
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.lr_scheduler, self.monitor, self.mode = lr_scheduler, monitor, mode
        self.max_epochs, self.patience = max_epochs, patience

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped module."""
        return self.module(*args, **kwargs)

    def _step(self, batch: Any, prefix: str) -> torch.Tensor:
        out = self.module.loss(batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(
                f"{type(self.module).__name__}.loss(batch) must return a dict with key 'loss', got {type(out).__name__}"
                + (f" with keys {list(out)}." if isinstance(out, Mapping) else ".")
            )
        n = _batch_size(batch)
        for key, value in out.items():
            scalar = _as_scalar(value)
            if scalar is not None:
                self.log(f"{prefix}_{key}", scalar, on_step=False, on_epoch=True, batch_size=n, prog_bar=key == "loss")
        return out["loss"]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # noqa: D102
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # noqa: D102
        return self._step(batch, "val")

    def configure_optimizers(self) -> Any:  # noqa: D102
        params = [p for p in self.module.parameters() if p.requires_grad]
        opt = OPTIMIZERS[self.optimizer_name](params, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs))
            return {"optimizer": opt, "lr_scheduler": sched}
        if self.lr_scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=self.mode, factor=0.5, patience=max(1, self.patience // 2)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}
        return opt


class NaNGuard(pl.Callback):
    """Raise :class:`FloatingPointError` on the first non-finite training or validation loss.

    The training check runs in ``on_before_backward``, so the offending batch never updates the weights;
    :meth:`BaseModel.train` then restores the best checkpoint and re-raises.
    """

    def __init__(self) -> None:
        self.batch_idx = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):  # noqa: D102
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:  # noqa: D102
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"Training loss is {loss.detach().cpu().item()} at epoch {trainer.current_epoch}, batch "
                f"{self.batch_idx} (global step {trainer.global_step}); stopped training. Try a lower `lr`, "
                "gradient clipping (`gradient_clip_val=1.0`) or check the input data for NaN/inf."
            )

    def on_validation_batch_end(  # noqa: D102
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if isinstance(outputs, torch.Tensor) and not torch.isfinite(outputs).all():
            raise FloatingPointError(
                f"Validation loss is {outputs.detach().cpu().item()} at epoch {trainer.current_epoch}, validation "
                f"batch {batch_idx} (global step {trainer.global_step}); stopped training."
            )


class History(pl.Callback):
    """Per-epoch ``train_*`` and ``val_*`` metrics (epoch means), as :attr:`frame`."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}

    def _record(self, trainer: pl.Trainer, prefix: str) -> None:
        row = self.rows.setdefault(trainer.current_epoch, {})
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix):
                row[key] = float(value)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._record(trainer, "train_")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        if not trainer.sanity_checking:
            self._record(trainer, "val_")

    @property
    def frame(self) -> pd.DataFrame:
        """One row per epoch (index ``epoch``); NaN where a metric was not computed that epoch."""
        df = pd.DataFrame.from_dict(self.rows, orient="index").sort_index()
        df.index.name = "epoch"
        cols = sorted(df.columns, key=lambda c: (c not in ("train_loss", "val_loss"), not c.startswith("train"), c))
        return df[cols].astype(float)
