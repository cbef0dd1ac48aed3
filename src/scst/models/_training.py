"""Lightning pieces behind :meth:`scst.models.BaseModel.train`.

* :class:`TrainingPlan` wraps a module whose ``loss(batch)`` returns a dict with key ``"loss"``; every other
  scalar entry is logged too, as ``train_<key>`` / ``val_<key>`` epoch means.
* :class:`NaNGuard` stops training with a :class:`FloatingPointError` on the first non-finite loss, *before*
  the backward pass, so the weights are never updated from a NaN.
* :class:`History` collects the per-epoch metrics that become ``model.history``; its rows are part of the
  checkpoint, so a resumed run has the history of every epoch.
* :class:`RNGState` puts the random-number streams (torch, CUDA, numpy, Python and the ``torch.Generator`` objects of
  the training loader) into every full checkpoint and restores them on resume, so resuming from an epoch-boundary
  checkpoint continues the exact run.
* :func:`prepare_strategy` checks a multi-process strategy before training and makes ``ddp_spawn``/``ddp_fork``/
  ``ddp_notebook`` bring the callback states (history, best checkpoint) back into the calling process.

Everything these pieces put into a checkpoint is tensors and primitives, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import nn

from .._utils import _atomic_file
from ..nn._train_step import training_loss

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
    val_every
        Epochs between validation passes (the trainer's ``check_val_every_n_epoch``): the plateau scheduler steps
        on those epochs only, the others have no validation metric.
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
        val_every: int = 1,
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
        # The settings (primitives only; the module is not a hyper-parameter) go into every checkpoint.
        self.save_hyperparameters(ignore=["module"], logger=False)
        self.module = module
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.lr_scheduler, self.monitor, self.mode = lr_scheduler, monitor, mode
        self.max_epochs, self.patience, self.val_every = max_epochs, patience, val_every

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """On resume: warn when the training settings differ from the checkpoint's (they would not all apply)."""
        saved = checkpoint.get("hyper_parameters") or {}
        diff = {k: (saved[k], v) for k, v in self.hparams.items() if k in saved and saved[k] != v}
        if self.lr_scheduler != "cosine":
            diff.pop("max_epochs", None)  # more epochs: exact continuation unless the cosine period depends on it
        if diff:
            listed = ", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in sorted(diff.items()))
            warnings.warn(
                f"Resuming with training settings other than the checkpoint's ({listed}). The optimiser, scheduler "
                "and early-stopping states come from the checkpoint (its learning rate, cosine period and patience "
                "stay), so this is not the continuation of the interrupted run.",
                stacklevel=2,
            )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped module."""
        return self.module(*args, **kwargs)

    def _step(self, batch: Any, prefix: str) -> torch.Tensor:
        out = training_loss(self.module, batch)  # the torch-only step that benchmarks/gpu_expression.py uses too
        n = _batch_size(batch)
        for key, value in out.items():
            scalar = _as_scalar(value)
            if scalar is not None:
                # sync_dist: with several processes the epoch means of all ranks are averaged (no-op on one process),
                # so early stopping and checkpointing decide on the same number everywhere.
                self.log(
                    f"{prefix}_{key}",
                    scalar,
                    on_step=False,
                    on_epoch=True,
                    batch_size=n,
                    prog_bar=key == "loss",
                    sync_dist=True,
                )
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
            # stepped on the epochs that validate (check_val_every_n_epoch): the others have no val_loss
            config = {"scheduler": sched, "monitor": self.monitor, "frequency": self.val_every}
            return {"optimizer": opt, "lr_scheduler": config}
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

    def state_dict(self) -> dict[str, Any]:
        """The rows recorded so far (ints, strs and floats: loads with ``weights_only=True``)."""
        return {"rows": {int(e): {k: float(v) for k, v in row.items()} for e, row in self.rows.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the rows of the epochs before a checkpoint (resume; results of ``ddp_spawn`` workers)."""
        self.rows = {int(e): dict(row) for e, row in state_dict["rows"].items()}

    @property
    def frame(self) -> pd.DataFrame:
        """One row per epoch (index ``epoch``); NaN where a metric was not computed that epoch."""
        df = pd.DataFrame.from_dict(self.rows, orient="index").sort_index()
        df.index.name = "epoch"
        cols = sorted(df.columns, key=lambda c: (c not in ("train_loss", "val_loss"), not c.startswith("train"), c))
        return df[cols].astype(float)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a local checkpoint is written next to its target and renamed.

    Lightning's own writer moves a temporary file from the system temp folder, which is a copy (not a rename) when
    that is another file system; a run killed during the copy would leave a half-written ``last.ckpt``. Remote
    paths (``s3://`` ...) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:  # noqa: D102
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with _atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)


def _generators(loaders: Iterable[Any]) -> list[torch.Generator]:
    """The ``torch.Generator`` objects of loaders, their samplers and datasets (one attribute level deep), in order."""
    found: list[torch.Generator] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Generator):
            found.append(obj)
            return
        if depth == 0 or isinstance(obj, torch.Tensor | np.ndarray | str | bytes | int | float):
            return
        for name in ("generator", "sampler", "batch_sampler", "dataset"):
            visit(getattr(obj, name, None), depth - 1)
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, torch.Generator):
                visit(value, 0)

    for loader in loaders:
        visit(loader, 3)
    return found


class RNGState(pl.Callback):
    """Save the random-number streams in full checkpoints and restore them on resume.

    Lightning restores weights, optimiser, schedulers, loops and callbacks, but not the random streams, so the
    epochs after a resume would shuffle and drop out differently from an uninterrupted run. This callback stores
    the torch (and CUDA) RNG, numpy's and Python's global RNGs and every ``torch.Generator`` on ``loaders`` (their
    samplers and datasets) when a checkpoint is written at the end of an epoch, and sets them back when training
    resumes from it. The state is tensors and primitives only (``weights_only=True`` loading).

    Parameters
    ----------
    loaders
        The training (and validation) loaders whose generators are part of the state.
    """

    def __init__(self, loaders: Iterable[Any] = ()) -> None:
        self.loaders = [dl for dl in loaders if dl is not None]

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        keys, pos, has_gauss, gauss = np.random.get_state()[1:]  # noqa: NPY002 - the legacy global RNG is the state
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": random.getstate(),
            "generators": [g.get_state() for g in _generators(self.loaders)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        torch.set_rng_state(state_dict["torch"])
        npy = state_dict["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["gauss"]))  # noqa: NPY002
        py = state_dict["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        gens = _generators(self.loaders)
        if len(gens) == len(state_dict["generators"]):
            for g, s in zip(gens, state_dict["generators"], strict=True):
                g.set_state(s)
        else:
            warnings.warn(
                f"The checkpoint holds {len(state_dict['generators'])} data-loader generator state(s) but the loaders "
                f"have {len(gens)}; shuffling after the resume differs from an uninterrupted run.",
                stacklevel=2,
            )
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                warnings.warn(
                    f"The checkpoint holds the CUDA RNG of {len(cuda)} device(s), this machine has "
                    f"{torch.cuda.device_count()}; GPU randomness after the resume differs.",
                    stacklevel=2,
                )


class BestFromAnotherFolder(pl.Callback):
    """On resume, carry the best checkpoint of a run whose folder is not the checkpoints' ``dirpath`` into it.

    Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` forgets the best score when the checkpoint was
    written to another folder (a moved or copied run folder, or ``checkpoint_dir`` other than the folder of
    ``ckpt_path``): the epochs after the resume then compete only among themselves, and the restored weights are
    not those of the uninterrupted run. Before the callback states are loaded, this copies the best file (from its
    recorded path, else from ``resume_dir``) into the new folder and points the saved states of ``checkpoints``
    there, so the best epoch before the resume still counts.

    Parameters
    ----------
    checkpoints
        scst's own checkpoint callbacks of the resumed run (one ``dirpath``); a user's are left alone.
    resume_dir
        Folder of the ``last.ckpt`` resumed from (where a moved run keeps its best file).
    """

    def __init__(self, checkpoints: Iterable[Any], resume_dir: str | os.PathLike) -> None:
        self.checkpoints, self.resume_dir = list(checkpoints), os.fspath(resume_dir)

    def on_load_checkpoint(  # noqa: D102
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for cb in self.checkpoints:
            state = checkpoint.get("callbacks", {}).get(cb.state_key)
            new_dir = cb.dirpath
            if not state or state.get("dirpath") in (None, new_dir):
                continue
            old_dir = state["dirpath"]
            best = state.get("best_model_path") or ""
            if best and cb.monitor is not None:
                src = best if os.path.isfile(best) else os.path.join(self.resume_dir, os.path.basename(best))
                if not os.path.isfile(src):
                    continue  # nothing to carry over: Lightning warns that the best score is not reloaded
                dst = os.path.join(new_dir, os.path.basename(best))
                if trainer.is_global_zero and os.path.realpath(src) != os.path.realpath(dst):
                    with _atomic_file(dst) as tmp:  # next to the target, then renamed: never a half-copied best.ckpt
                        shutil.copyfile(src, tmp)

            def moved(path: Any, old_dir: str = old_dir, new_dir: str = new_dir) -> Any:
                if isinstance(path, str) and path and os.path.dirname(path) == old_dir:
                    return os.path.join(new_dir, os.path.basename(path))
                return path

            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = moved(state[key])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
            state["dirpath"] = new_dir


class _ResultsLauncher(_MultiProcessingLauncher):
    """Lightning's spawn/fork launcher that also sends the callback states of rank 0 back to the calling process.

    Lightning returns the weights, ``best_model_path`` and ``callback_metrics`` only; without this the calling
    process would keep an empty :class:`History` and no ``best_model_score``.
    """

    def get_extra_results(self, trainer: pl.Trainer) -> dict[str, Any]:  # noqa: D102
        extra = super().get_extra_results(trainer)
        states = {}
        for cb in trainer.callbacks:
            if isinstance(cb, RNGState):  # the calling process keeps its own random streams
                continue
            buffer = io.BytesIO()
            torch.save(cb.state_dict(), buffer)
            states[cb.state_key] = buffer.getvalue()
        extra["scst_callback_states"] = states
        return extra

    def update_main_process_results(self, trainer: pl.Trainer, extra: dict[str, Any]) -> None:  # noqa: D102
        super().update_main_process_results(trainer, extra)
        states = extra.get("scst_callback_states", {})
        for cb in trainer.callbacks:
            if cb.state_key not in states:
                continue
            try:
                cb.load_state_dict(torch.load(io.BytesIO(states[cb.state_key]), weights_only=True))
            except Exception as e:  # noqa: BLE001 - a user callback whose state is not tensors/primitives
                warnings.warn(
                    f"The state of callback {cb.state_key} could not be brought back from the training processes "
                    f"({type(e).__name__}: {e}); it keeps its state from before training.",
                    stacklevel=2,
                )


def _rerunnable_script() -> str | None:
    """The command Lightning's ``strategy="ddp"`` would re-run in every extra process, or None if it cannot.

    Re-running works for ``python script.py`` / ``python -m package``; not for pytest (it would re-run the whole
    test session), ``python -c``, an interactive interpreter or a notebook.
    """
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:
        name = spec.name
        return None if name.split(".")[0] in ("pytest", "_pytest", "ipykernel", "IPython") else f"python -m {name}"
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c") or not os.path.isfile(argv0) or hasattr(sys, "ps1"):
        return None
    if os.path.basename(argv0) in ("pytest", "py.test", "ipython", "jupyter"):
        return None
    return f"python {argv0}"


def prepare_strategy(trainer: pl.Trainer, strategy: Any, devices: Any = "auto") -> None:
    """Check the multi-process set-up of ``trainer`` and install the launcher that returns callback states.

    * ``ddp_spawn`` / ``ddp_fork`` / ``ddp_notebook`` (and ``"auto"`` when Lightning picks one of them): the
      launcher is replaced by one that also returns the callback states (history, best checkpoint path and score,
      early-stopping state) of rank 0.
    * ``"ddp"`` (Lightning's choice for ``"auto"`` outside notebooks): it re-runs the script in every extra
      process; from pytest, ``python -c`` or an interactive interpreter that cannot work, so this raises a
      :class:`ValueError` naming the strategies that do.

    Parameters
    ----------
    trainer
        The configured trainer (not yet fitted).
    strategy, devices
        What the user passed as ``strategy`` and ``devices`` (for the checks and error messages).

    Raises
    ------
    ValueError
        When ``devices`` asks for several devices but ``strategy`` runs one process (Lightning would silently
        train on one device), or for ``"ddp"`` outside a re-runnable script.
    """
    if devices != "auto":
        try:
            requested = len(trainer.accelerator.get_parallel_devices(trainer.accelerator.parse_devices(devices)))
        except Exception:  # noqa: BLE001 - Lightning already accepted `devices`; only count what it can parse
            requested = 1
        if requested > 1 and trainer.world_size == 1:
            raise ValueError(
                f"`devices={devices!r}` asks for {requested} devices, but `strategy={strategy!r}` "
                f"({type(trainer.strategy).__name__}) trains in one process on one of them. Pass "
                "`strategy='ddp_spawn'` or `strategy='ddp_notebook'` to use them all, or `devices=1`."
            )
    launcher = trainer.strategy.launcher
    if trainer.world_size <= 1 or launcher is None:
        return
    if type(launcher) is _MultiProcessingLauncher:
        trainer.strategy._launcher = _ResultsLauncher(trainer.strategy, start_method=launcher._start_method)
    elif isinstance(launcher, _SubprocessScriptLauncher):
        in_child = "LOCAL_RANK" in os.environ or launcher.cluster_environment.creates_processes_externally
        if not in_child and _rerunnable_script() is None:
            raise ValueError(
                f"`strategy={strategy!r}` with {trainer.world_size} processes means Lightning's 'ddp', which re-runs "
                "the calling script in every extra process; this process was not started as `python script.py` "
                "(pytest, `python -c`, a notebook or an interactive session). Pass `strategy='ddp_spawn'` (the model "
                "and data loaders are pickled to new processes) or `strategy='ddp_notebook'` (fork; CPU, or before "
                "CUDA is initialised), or run the training from a script."
            )
