"""scst's model base: the scvi-tools user surface on scst's own, small machinery.

scvi-tools is not subclassed: its loaders only serve AnnData fields (scst models need image patches and
gene-pair batches), its ``load`` unpickles, and it rejects unpaired MuData. What is kept is the surface:
``Model.setup_anndata`` / ``Model.setup_sdata`` → ``Model(data, **config)`` → ``model.train(...)`` →
``model.history`` / ``model.save(dir)`` / ``Model.load(dir, data)``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePath
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._constants import TABLE_KEY, UNS_KEY
from .._logging import logg
from .._utils import _atomic_dir, _get_table, _holds_other_files, _positive_int, _write_zarr
from ..nn._backbones import weights_overwritten
from ._training import (
    AtomicCheckpointIO,
    BestFromAnotherFolder,
    History,
    NaNGuard,
    RNGState,
    TrainingPlan,
    prepare_strategy,
)

SETUP_KEY = "_scst_setup"
WEIGHTS_FILE = "model.safetensors"
ATTR_FILE = "attr.json"
_FORMAT_VERSION = 1

# Training settings: an explicit ``train`` argument wins, then ``model.config``, then ``cls._train_defaults``.
_TRAIN_KEYS = ("max_epochs", "batch_size", "lr", "weight_decay", "patience", "optimizer", "lr_scheduler")


def _refuse_dataloader_kwargs(model: Any, kwargs: dict[str, Any]) -> None:
    """For a ``_dataloaders`` that takes no extra arguments: any is a :class:`TypeError` (never silently dropped)."""
    if kwargs:
        raise TypeError(f"Unexpected dataloader_kwargs {sorted(kwargs)} for {type(model).__name__}.")


def _scst_version() -> str:
    try:
        return version("scst")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


def _check_model_dest(dir_path: str | Path, overwrite: bool) -> Path:
    """``dir_path`` as a Path after checking that a save may write there.

    An existing path is replaced (as a whole) only with ``overwrite`` and only when it is a saved model folder
    (holding ``attr.json``) or an empty folder: ``overwrite=True`` on a folder of other files (a results folder,
    the data's zarr store) would delete them all.
    """
    dir_path = Path(dir_path)
    if not dir_path.exists():
        return dir_path
    if not overwrite:
        raise FileExistsError(f"`dir_path` {str(dir_path)!r} exists; pass `overwrite=True` to replace it.")
    if not dir_path.is_dir() or _holds_other_files(dir_path, (ATTR_FILE,)):
        raise FileExistsError(
            f"`dir_path` {str(dir_path)!r} exists and is not a saved model folder (no {ATTR_FILE}); overwrite=True "
            "replaces only a saved model or an empty folder, never other files. Choose another path."
        )
    return dir_path


def _write_model_dir(dir_path: str | Path, overwrite: bool, attrs: dict[str, Any], write_payload: Any) -> Path:
    """The one save path of every scst model: ``attr.json`` + a payload, written to a temporary folder and renamed.

    ``write_payload(tmp)`` writes the model's arrays (``model.safetensors`` or ``params.npz``) into ``tmp``.
    """
    dir_path = _check_model_dest(dir_path, overwrite)
    with _atomic_dir(dir_path) as tmp:
        write_payload(tmp)
        (tmp / ATTR_FILE).write_text(json.dumps(attrs, indent=1, allow_nan=False))
    logg.info(f"{attrs.get('model')}: saved to {str(dir_path)!r}")
    return dir_path


def _read_model_attrs(dir_path: str | Path, payload: str, required: Sequence[str] = ("model",)) -> dict[str, Any]:
    """``attr.json`` of a saved model folder, checked: both files present, valid JSON, ``required`` keys."""
    dir_path = Path(dir_path)
    attr_path = dir_path / ATTR_FILE
    if not attr_path.is_file() or not (dir_path / payload).is_file():
        raise FileNotFoundError(f"`dir_path` {str(dir_path)!r} lacks {ATTR_FILE} / {payload} (not a saved model).")
    try:
        attrs = json.loads(attr_path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{ATTR_FILE} of {str(dir_path)!r} is truncated or corrupt (not JSON: {e}).") from e
    absent = [k for k in required if not isinstance(attrs, dict) or k not in attrs]
    if absent:
        raise ValueError(f"{ATTR_FILE} of {str(dir_path)!r} lacks {absent}: not a checkpoint written by scst.")
    return attrs


def _resume_checkpoint(ckpt_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``ckpt_path`` as a Path and its checkpoint, memory-mapped (tensors are not read) with ``weights_only=True``.

    For what :meth:`BaseModel.train` (the epoch) and staged trainings (their stage) check before Lightning loads it.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"`ckpt_path` {str(ckpt_path)!r} is not a file (expected a `last.ckpt`).")
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return ckpt_path, ck if isinstance(ck, dict) else {}


def _file_id(path: Path) -> tuple[int, int] | None:
    """Inode and modification time of ``path`` (None if absent): tells a file rewritten since from an old one."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _jsonable(obj: Any, where: str) -> Any:
    """Convert numpy/pandas/tuple/path values to plain JSON types; raise naming ``where`` if impossible."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {k!r} ({type(k).__name__}).")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, list | tuple | pd.Index | np.ndarray):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(list(obj))]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, PurePath):  # a weights file given as a Path is stored as its str
        return str(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where}: non-finite float {obj} cannot be stored as JSON.")
        return obj
    raise TypeError(f"{where}: {type(obj).__name__} is not JSON-able; use str/int/float/bool/None, lists or dicts.")


def _finite_or_none(value: Any) -> Any:
    """NaN/inf → None, for strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _parse_device(accelerator: str, device: int | str = "auto") -> torch.device:
    """Torch device for Lightning-style ``accelerator``/``device`` arguments."""
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise ValueError(f"`accelerator` must be 'auto', 'cpu', 'gpu', 'cuda' or 'mps', got {accelerator!r}.")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return torch.device("cpu")
    kind = "mps" if accelerator == "mps" else "cuda"
    if isinstance(device, str) and device != "auto":
        return torch.device(device)
    return torch.device(kind, 0 if device == "auto" else int(device))


def _move(batch: Any, device: torch.device) -> Any:
    """Move tensors in (nested) batches, or objects with ``.to`` (PyG batches), to ``device``."""
    if isinstance(batch, torch.Tensor) or (hasattr(batch, "to") and not isinstance(batch, Mapping | list | tuple)):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_move(v, device) for v in batch)
    return batch


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡")


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Drop Lightning's advertising tips (keep its device and stopping messages)."""
    log, flt = logging.getLogger("lightning.pytorch.utilities.rank_zero"), _DropTips()
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)


def _check_weights_file(path: Path) -> None:
    """Raise a clear error for a truncated or corrupt safetensors file (its header names every tensor's bytes)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError for any bad file
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); save the model again.") from e


def _qualified_name(c: type) -> str:
    return f"{c.__module__}.{c.__qualname__}"


def _saved_class(name: str, qualified: str | None) -> type:
    """The subclass of :class:`BaseModel` a checkpoint names: by module and qualified name, else by a unique name."""
    matches = [c for c in _all_subclasses(BaseModel) if c.__name__ == name]
    exact = [c for c in matches if _qualified_name(c) == qualified]
    if exact:
        return exact[-1]
    if not matches:
        where = f" (saved from {qualified})" if qualified else ""
        raise ValueError(f"Saved model class {name!r}{where} is not defined; import the module that defines it.")
    if len(matches) > 1:
        raise ValueError(
            f"Saved model class {name!r} is ambiguous: {sorted(_qualified_name(c) for c in matches)} are defined"
            + (f" and none is {qualified}" if qualified else "")
            + f"; load with the class itself ({name}.load)."
        )
    return matches[0]


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _training_grid_step(adata: Any, sections: Sequence[str]) -> float | None:
    """The spot grid step (µm) shared by the training ``sections``, as their geometry records it; else None.

    Read from ``uns["scst"]["sections"][s]["grid_step_um"]`` (written by :func:`scst.io.read_st`, the dataset
    loaders, :func:`scst.io.register_sections` and :func:`scst.pp.tile_grid`). It is the default pseudo-spot spacing
    of :func:`scst.tl.predict_expression` for every model that predicts on a tile grid, recorded in its registry as
    ``grid_step_um``. None when a section records no step or the sections' steps differ (the caller falls back).
    """
    geos = (getattr(adata, "uns", {}).get(UNS_KEY) or {}).get("sections") or {}
    steps = {(geos.get(str(s)) or {}).get("grid_step_um") for s in sections}
    step = steps.pop() if len(steps) == 1 else None
    return None if step is None else float(step)


class _SetupRegistry:
    """The setup registry and config merge shared by every scst model (deep ones and the closed-form baselines)."""

    #: Settings and their defaults (subclasses).
    _default_config: ClassVar[dict[str, Any]] = {}
    #: Settings every model of a family has besides ``_default_config``, with their defaults.
    _common_config: ClassVar[dict[str, Any]] = {}
    #: Keys accepted without a default (e.g. the training settings ``train`` reads when given).
    _optional_config_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _merge_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated with ``config``; unknown keys are an error (checkable before any data are read)."""
        allowed = {*cls._common_config, *cls._optional_config_keys, *cls._default_config}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"Unknown config key(s) {unknown} for {cls.__name__}; expected some of {sorted(allowed)}.")
        defaults = {**cls._common_config, **cls._default_config}
        merged = _jsonable({**defaults, **config}, f"{cls.__name__} config")
        for key, value in merged.items():  # a switch: "False" (e.g. from a command line) is a true string
            default = defaults.get(key)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"{key}: expected True or False, got {value!r}.")
            # a number's place takes a number (or None): a string failed only when the model was built, after the
            # data were read and the features computed (``scst train --config lr=1e-3x``)
            numeric = isinstance(default, int | float) and not isinstance(default, bool)
            if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"{key}: expected a number, got {value!r}.")
        return merged

    @classmethod
    def _register(cls, adata: Any, registry: dict[str, Any]) -> None:
        """Store ``registry`` (JSON-able) in ``adata.uns["_scst_setup"][cls.__name__]`` as a JSON string.

        A JSON string (not a nested dict) survives ``write_h5ad``/zarr unchanged: no None-rejection, no
        list→array conversion.
        """
        if not isinstance(registry, Mapping):
            raise TypeError(f"`registry` must be a dict, got {type(registry).__name__}.")
        reg = _jsonable(dict(registry), f"{cls.__name__} registry")
        uns = adata.uns
        store = dict(uns.get(SETUP_KEY, {}))
        store[cls.__name__] = json.dumps(reg)
        uns[SETUP_KEY] = store
        logg.info(f"{cls.__name__}: registered setup in .uns[{SETUP_KEY!r}][{cls.__name__!r}]")

    @classmethod
    def _read_registry(cls, adata: Any) -> dict[str, Any] | None:
        raw = getattr(adata, "uns", {}).get(SETUP_KEY, {}).get(cls.__name__)
        if raw is None:
            return None
        return json.loads(raw) if isinstance(raw, str) else dict(raw)

    @classmethod
    def _find_adata(cls, data: Any, table: str | None = None) -> Any:
        """The object holding the registry: AnnData/MuData itself, or the SpatialData table set up for ``cls``."""
        if hasattr(data, "tables"):
            if table is not None:
                return _get_table(data, table)
            found = [k for k, t in data.tables.items() if cls._read_registry(t) is not None]
            if len(found) > 1:
                raise ValueError(
                    f"Several tables of the SpatialData are set up for {cls.__name__}: {found}; "
                    f"set up only one, or pass `sdata.tables[key]`."
                )
            if not found:
                raise ValueError(
                    f"No table of the SpatialData is set up for {cls.__name__}; call "
                    f"`scst.models.{cls.__name__}.setup_sdata(sdata)` first."
                )
            return data.tables[found[0]]
        if not hasattr(data, "uns"):
            raise TypeError(f"`data` must be AnnData, MuData or SpatialData, got {type(data).__name__}.")
        return data


class BaseModel(_SetupRegistry, ABC):
    """Base class of scst models (scvi-tools-style surface, Lightning training, safetensors checkpoints).

    Parameters
    ----------
    data
        AnnData, MuData or SpatialData set up with ``Model.setup_anndata`` / ``Model.setup_sdata``.
    **config
        Overrides of ``Model._default_config`` (unknown keys are an error).

    Attributes
    ----------
    data
        The object passed to the constructor (or :meth:`load`); None for a model loaded without data.
    adata
        The AnnData (or MuData) holding the registry: ``data`` itself, or the SpatialData table.
    config
        ``{"seed": 0, **_default_config, **config}``.
    registry
        The dict stored by ``setup_*`` (in ``adata.uns["_scst_setup"][ClassName]``, as a JSON string).
    module
        The torch module.
    history
        :class:`pandas.DataFrame`, one row per epoch (``train_loss``, ``val_loss``, other logged metrics), or None.

    Notes
    -----
    Subclass recipe:

    * ``_module_cls``: a :class:`torch.nn.Module` class built as ``_module_cls(**self._module_kwargs())``; it
      implements ``loss(batch) -> dict`` with key ``"loss"`` (other scalar entries are logged as
      ``train_<key>``/``val_<key>``).
    * ``_default_config``: paper defaults (JSON-able); ``bench_config``: small CPU settings, so
      ``Model(data, **Model.bench_config).train()`` runs in seconds. Config may also hold the training keys
      ``max_epochs, batch_size, lr, weight_decay, patience, optimizer, lr_scheduler`` (defaults for
      :meth:`train`) and ``seed`` (module initialisation and training seed; default 0).
    * ``setup_anndata(cls, adata, ...)`` (classmethod): validate inputs, then ``cls._register(adata, registry)``
      with a dict of primitives (keys, gene panel as ``"var_names"``, sizes...). ``setup_sdata`` defaults to
      ``setup_anndata`` on ``sdata.tables[table]``; image models override it (still calling ``_register`` on
      the table, with ``"table"`` in the registry).
    * ``_module_kwargs(self) -> dict``: module arguments from ``self.config`` and ``self.registry``
      (primitives only: they are saved to ``attr.json`` and reused by :meth:`load` without data).
    * ``_dataloaders(self, batch_size, validation, seed, **kw) -> (train_loader, val_loader | None)`` over
      ``self.data`` (AnnData, SpatialData or MuData, as given) / ``self.adata`` (the table holding the registry).
    * Optional: ``_monitor``/``_monitor_mode`` (default ``"val_loss"``/``"min"``; e.g. ``"val_accuracy"``/
      ``"max"``), ``_train_defaults``, ``_extra_state()``/``_set_extra_state(state)`` (extra JSON saved in
      ``attr.json``), ``_validate_data(adata)`` (checks new data against the model; default: registry
      ``"var_names"`` must all be in ``adata.var_names``).
    * Helper for inference: ``self._inference(loader, fn)`` applies ``fn(module, batch)`` in eval mode on
      ``self.device`` and returns the CPU outputs per batch.

    Examples
    --------
    >>> Model.setup_sdata(sdata)
    >>> model = Model(sdata, **Model.bench_config)
    >>> model.train(max_epochs=5).history
    >>> model.save("model_dir")
    >>> model = Model.load("model_dir", data=sdata)
    """

    _module_cls: ClassVar[type[nn.Module]]
    _default_config: ClassVar[dict[str, Any]] = {}
    _common_config: ClassVar[dict[str, Any]] = {"seed": 0}
    _optional_config_keys: ClassVar[tuple[str, ...]] = _TRAIN_KEYS
    bench_config: ClassVar[dict[str, Any]] = {}
    _monitor: ClassVar[str] = "val_loss"
    _monitor_mode: ClassVar[str] = "min"
    _train_defaults: ClassVar[dict[str, Any]] = {
        "max_epochs": 100,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "patience": 10,
        "optimizer": "adam",
        "lr_scheduler": None,
    }

    @classmethod
    def setup_sdata(cls, sdata: Any, table: str = "table", **kwargs: Any) -> None:
        """Set up ``sdata.tables[table]`` with :meth:`setup_anndata` (models over images override this).

        Parameters
        ----------
        sdata
            SpatialData with the table.
        table
            Table key.
        **kwargs
            Passed to ``setup_anndata``.
        """
        setup = getattr(cls, "setup_anndata", None)
        if setup is None:
            raise TypeError(f"{cls.__name__} defines neither `setup_sdata` nor `setup_anndata`.")
        adata = _get_table(sdata, table)
        setup(adata, **kwargs)
        reg = cls._read_registry(adata)
        if reg is None:
            raise RuntimeError(f"{cls.__name__}.setup_anndata did not call `_register`.")
        cls._register(adata, {**reg, "table": table})

    # ------------------------------------------------------------------ construction
    def __init__(self, data: Any, **config: Any) -> None:
        self.data = data
        self.adata = self._find_adata(data)
        registry = self._read_registry(self.adata)
        if registry is None:
            kind = "setup_sdata(sdata)" if hasattr(data, "tables") else "setup_anndata(adata)"
            raise ValueError(
                f"`data` is not set up for {type(self).__name__}; call `scst.models.{type(self).__name__}.{kind}` "
                "first."
            )
        self.registry = registry
        self.config = self._merge_config(config)
        self._module_kwargs_ = _jsonable(self._module_kwargs(), f"{type(self).__name__}._module_kwargs()")
        self.module = self._build_module(self._module_kwargs_, seed=self.config["seed"])
        self._is_trained = False
        self.history: pd.DataFrame | None = None

    def _build_module(self, module_kwargs: dict[str, Any], seed: int | None) -> nn.Module:
        # Seeded initialisation in a forked RNG: same config → same initial weights, global RNG untouched.
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            module = self._module_cls(**module_kwargs)
        if not callable(getattr(module, "loss", None)):
            raise TypeError(f"{type(module).__name__} (the `_module_cls` of {type(self).__name__}) must define `loss`.")
        return module

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _module_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``_module_cls`` from ``self.config`` and ``self.registry`` (primitives only)."""

    @abstractmethod
    def _dataloaders(
        self, batch_size: int, validation: Any, seed: int, **kwargs: Any
    ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
        """Training and validation loaders (validation may be None) over ``self.data``."""

    def _extra_state(self) -> dict[str, Any]:
        """Extra JSON-able state saved in ``attr.json`` under ``"extra"`` (e.g. gene panel, patch geometry)."""
        return {}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned (called by :meth:`load`); the base keeps it as ``extra``."""
        self.extra = state

    def _validate_data(self, adata: Any) -> None:
        """Check that ``adata`` suits this model; default: registry ``"var_names"`` all present."""
        genes = self.registry.get("var_names")
        if genes is None or not hasattr(adata, "var_names"):
            return
        missing = pd.Index(genes).difference(adata.var_names)
        if len(missing):
            raise ValueError(
                f"`data` lacks {len(missing)} of the model's {len(genes)} genes: {list(missing[:20])}"
                + (" ..." if len(missing) > 20 else "")
            )

    # ------------------------------------------------------------------ state
    @property
    def is_trained(self) -> bool:
        """Whether the model was trained (or loaded from a trained model)."""
        return self._is_trained

    @property
    def device(self) -> torch.device:
        """Device of the module's parameters (CPU when it has none)."""
        for t in (*self.module.parameters(), *self.module.buffers()):
            return t.device
        return torch.device("cpu")

    def to_device(self, device: str | int | torch.device) -> None:
        """Move the module to ``device`` (``"cpu"``, ``"cuda:0"``, or a GPU index)."""
        self.module.to(torch.device("cuda", device) if isinstance(device, int) else torch.device(device))

    def __repr__(self) -> str:
        name = type(self).__name__
        cfg = ", ".join(f"{k}: {v}" for k, v in self.config.items())
        lines = [f"{name} model with the following parameters:", f"{cfg}"]
        if self.adata is not None and hasattr(self.adata, "n_obs"):
            lines.append(f"Data: {self.adata.n_obs} obs × {self.adata.n_vars} vars")
        lines.append(f"Training status: {'Trained' if self.is_trained else 'Not trained'}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ training
    def _train_setting(self, name: str, value: Any) -> Any:
        if value is not None:
            return value
        return self.config.get(name, self._train_defaults.get(name))

    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        precision: str | int | None = None,
        early_stopping: bool = True,
        patience: int | None = None,
        check_val_every_n_epoch: int = 1,
        seed: int | None = None,
        enable_progress_bar: bool = True,
        checkpoint_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
        save_last: bool = True,
        strategy: Any = "auto",
        validation: Any = None,
        optimizer: str | None = None,
        lr_scheduler: str | None = None,
        dataloader_kwargs: dict[str, Any] | None = None,
        **trainer_kwargs: Any,
    ) -> BaseModel:
        """Train with Lightning; early stopping and checkpointing on ``cls._monitor``, best weights restored.

        Settings left as None come from ``self.config``, then ``cls._train_defaults``.

        Parameters
        ----------
        max_epochs
            Maximum number of epochs.
        batch_size
            Minibatch size passed to ``_dataloaders``.
        lr, weight_decay
            Optimiser learning rate and weight decay.
        accelerator, devices, precision
            Passed to :class:`lightning.pytorch.Trainer` (``precision=None``: Lightning's default, 32-bit).
            ``devices=2`` (or more) trains in several processes with distributed data parallel (see ``strategy``).
        early_stopping
            Stop when the monitored validation metric has not improved for ``patience`` validation checks.
        patience
            Early-stopping patience (validation checks).
        check_val_every_n_epoch
            Validate every n epochs.
        seed
            Seed for :func:`lightning.seed_everything` and the loaders (default: ``config["seed"]``).
        enable_progress_bar
            Show Lightning's progress bar.
        checkpoint_dir
            Keep the best checkpoint (``best.ckpt``, Lightning format, weights only) here, and with ``save_last``
            the full state of the last finished epoch (``last.ckpt``) to resume from; default: a temporary
            directory removed after training (or, with ``ckpt_path``, the folder of ``ckpt_path``). Lightning's own
            logs never go to the working directory.
        ckpt_path
            Resume from this full checkpoint (a ``last.ckpt`` written with ``checkpoint_dir``): weights, optimiser
            and scheduler state, epoch counters, early-stopping and best-checkpoint state, ``history`` rows and the
            random streams are restored, and training continues up to ``max_epochs`` (the total, not the epochs
            still to run; one that the checkpoint's epochs already reach is a :class:`ValueError`). With the same
            data, settings and seed, the result equals an uninterrupted run. Loaded
            with ``weights_only=True``. The run folder may have moved, or ``checkpoint_dir`` be another folder:
            the interrupted run's ``best.ckpt`` is copied there, so its best epoch still counts. Checkpoints
            written in the middle of an epoch resume only approximately
            (Lightning warns). See the guide ``docs/training.md``.
        save_last
            With ``checkpoint_dir``: also write ``last.ckpt`` (full state, overwritten atomically after every
            epoch) for ``ckpt_path``.
        strategy
            Lightning strategy for several devices: ``"ddp_spawn"`` (new processes; the model and data loaders
            are pickled) or ``"ddp_notebook"``/``"ddp_fork"`` (forked processes; CPU, or before CUDA is
            initialised) work from anywhere and bring the weights, ``history`` and best checkpoint back into
            this process; ``"ddp"`` (Lightning's choice for ``"auto"``) re-runs the calling script in every extra
            process and so works only from ``python script.py`` (otherwise a :class:`ValueError` says what to
            use).
        validation
            Passed to ``_dataloaders`` (e.g. a fraction or held-out sections; None: the model's default).
        optimizer
            ``"adam"`` or ``"adamw"``.
        lr_scheduler
            None, ``"cosine"`` or ``"plateau"``.
        dataloader_kwargs
            Extra keyword arguments for ``_dataloaders``.
        **trainer_kwargs
            Passed to :class:`lightning.pytorch.Trainer` (e.g. ``gradient_clip_val``, ``callbacks``; not
            ``default_root_dir``: see ``checkpoint_dir``).

        Returns
        -------
        ``self`` (trained in place); ``self.history`` holds the per-epoch metrics. A second ``train`` call (without
        ``ckpt_path``) continues from the current weights with a new optimiser, counts its epochs from 0 and
        replaces ``history``; the best epoch of that call is restored.

        Raises
        ------
        FloatingPointError
            On a non-finite training or validation loss, naming epoch and batch. The offending batch never
            updates the weights; the best checkpoint's weights (if any epoch was checkpointed and its file is
            still there) are restored first, ``history`` is kept and ``is_trained`` is True iff a checkpoint was
            restored. The message ends saying which: best checkpoint restored, gone (weights of the last finite
            step kept) or none saved.
        """
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        if ckpt_path is not None:
            ckpt_path, resumed = _resume_checkpoint(ckpt_path)
            if checkpoint_dir is None:
                checkpoint_dir = ckpt_path.parent
        if "default_root_dir" in trainer_kwargs:  # set below (a temporary folder); Python's error names neither
            raise ValueError(
                "`default_root_dir` is not taken: Lightning's logs go to a temporary folder; pass `checkpoint_dir` "
                "to keep the checkpoints."
            )
        if self.data is None:
            raise ValueError(
                f"This {type(self).__name__} has no data (loaded without `data`); use "
                f"`{type(self).__name__}.load(dir_path, data=...)` to train further."
            )
        # counts: 0, negatives, booleans and fractions are refused naming the argument (int() truncated 2.5 to 2)
        max_epochs = _positive_int("max_epochs", self._train_setting("max_epochs", max_epochs), floats=True)
        batch_size = _positive_int("batch_size", self._train_setting("batch_size", batch_size), floats=True)
        patience = _positive_int("patience", self._train_setting("patience", patience), 0, floats=True)
        seed = int(self._train_setting("seed", seed))
        if ckpt_path is not None:
            # Lightning refuses a checkpoint of more epochs than max_epochs + 1, but one more is silently a no-op.
            # Epochs whose training is done: the fit loop's processed count (a last.ckpt, written at an epoch's end,
            # holds epoch + 1 of them), else the 0-based epoch of a checkpoint written within an epoch.
            progress = resumed.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
            done = progress.get("processed", resumed.get("epoch"))
            if isinstance(done, int) and max_epochs <= done:
                raise ValueError(
                    f"`max_epochs` is the total number of epochs, and `ckpt_path` {str(ckpt_path)!r} holds {done} "
                    f"trained epoch(s): expected `max_epochs` > {done}, got {max_epochs}."
                )
        pl.seed_everything(seed, workers=True, verbose=False)
        train_dl, val_dl = self._dataloaders(batch_size, validation, seed, **(dataloader_kwargs or {}))

        monitor, mode = self._monitor, self._monitor_mode
        if val_dl is None:
            # Without validation, checkpoint on the training counterpart of the metric; early stopping is off.
            monitor = "train_" + monitor.removeprefix("val_")
            if early_stopping:
                logg.info(f"{type(self).__name__}: no validation data; early stopping disabled.")
            early_stopping = False
        plan = TrainingPlan(
            self.module,
            lr=float(self._train_setting("lr", lr)),
            weight_decay=float(self._train_setting("weight_decay", weight_decay)),
            optimizer=self._train_setting("optimizer", optimizer),
            lr_scheduler=self._train_setting("lr_scheduler", lr_scheduler),
            monitor=monitor,
            mode=mode,
            max_epochs=max_epochs,
            patience=patience,
            val_every=int(check_val_every_n_epoch) if val_dl is not None else 1,
        )
        # Lightning keeps the modes it finds, and a trained or loaded model is in eval mode: train in training mode.
        plan.train()
        history, guard = History(), NaNGuard()
        with tempfile.TemporaryDirectory(prefix="scst_train_") as tmp:
            dirpath = str(checkpoint_dir) if checkpoint_dir is not None else tmp
            # A best.ckpt left in `checkpoint_dir` by an earlier run is not this run's (unless resuming that run).
            earlier_best = _file_id(Path(dirpath) / "best.ckpt") if ckpt_path is None else None
            ckpt = ModelCheckpoint(
                dirpath=dirpath,
                filename="best",
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                save_weights_only=True,
                enable_version_counter=False,
                # no validation: the training metric is there at every epoch's end (Lightning would otherwise
                # wait for a validation pass that never comes when check_val_every_n_epoch > 1)
                save_on_train_epoch_end=True if val_dl is None else None,
            )
            user_callbacks = trainer_kwargs.pop("callbacks", None) or []
            if isinstance(user_callbacks, pl.Callback):  # Lightning takes one callback, a list or None
                user_callbacks = [user_callbacks]
            callbacks, ours = [guard, ckpt, *user_callbacks], [ckpt]
            if checkpoint_dir is not None and save_last:
                # Full state (optimiser, loops, callbacks, random streams) at the end of every epoch, for resuming.
                ours.append(
                    ModelCheckpoint(
                        dirpath=dirpath,
                        filename="last",
                        monitor=None,
                        save_top_k=1,
                        save_weights_only=False,
                        save_on_train_epoch_end=True,
                        enable_version_counter=False,
                    )
                )
                callbacks.append(ours[-1])
            callbacks.append(RNGState([train_dl, val_dl]))
            if ckpt_path is not None:  # a run folder moved since, or checkpoint_dir elsewhere: keep its best epoch
                callbacks.append(BestFromAnotherFolder(ours, ckpt_path.parent))
            if early_stopping:
                # strict=False: a run that max_steps/max_time end before the first validation has no metric yet
                # (Lightning's error named a metric, not the cause); the monitor names are scst's own
                callbacks.append(
                    EarlyStopping(monitor=monitor, mode=mode, patience=patience, check_finite=True, strict=False)
                )
            callbacks.append(history)  # last: sees the metrics of the finished epoch
            kwargs = {
                "enable_model_summary": False,
                "num_sanity_val_steps": 0,
                "log_every_n_steps": 1,
                "logger": False,
                "plugins": [AtomicCheckpointIO()],  # checkpoints written next to the target, then renamed
                **trainer_kwargs,
            }
            if precision is not None:
                kwargs["precision"] = precision
            error: FloatingPointError | None = None
            with warnings.catch_warnings(), _quiet_lightning():
                # On small CPU machines num_workers=0 is the right choice; Lightning warns regardless.
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
                warnings.filterwarnings("ignore", message=".*have no `val_dataloader`.*")
                warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")  # said below
                if ckpt_path is not None:  # resuming into the folder of the checkpoint: not empty, as expected
                    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
                trainer = pl.Trainer(
                    max_epochs=max_epochs,
                    accelerator=accelerator,
                    devices=devices,
                    strategy=strategy,
                    check_val_every_n_epoch=check_val_every_n_epoch,
                    enable_progress_bar=enable_progress_bar,
                    callbacks=callbacks,
                    default_root_dir=tmp,
                    **kwargs,
                )
                prepare_strategy(trainer, strategy, devices)
                try:
                    trainer.fit(
                        plan,
                        train_dataloaders=train_dl,
                        val_dataloaders=val_dl,
                        ckpt_path=None if ckpt_path is None else str(ckpt_path),
                        weights_only=True,
                    )
                except FloatingPointError as e:
                    error = e
                except torch.multiprocessing.ProcessRaisedException as e:
                    # ddp_spawn / ddp_fork: a worker's NaN guard fired; nothing came back from the workers
                    if "FloatingPointError: " not in str(e):
                        raise
                    error = FloatingPointError(str(e).rsplit("FloatingPointError: ", 1)[1].strip())
            device = trainer.strategy.root_device
            best, gone = ckpt.best_model_path, False
            if not best and error is not None and _file_id(Path(dirpath) / "best.ckpt") not in (None, earlier_best):
                best = str(Path(dirpath) / "best.ckpt")  # written by rank 0 of the workers before the error
            if best and not Path(best).is_file():
                warnings.warn(
                    f"The best checkpoint {best!r} is gone (removed, or the run resumed into another folder); "
                    "keeping the weights of the last epoch.",
                    stacklevel=2,
                )
                best, gone = "", True
            if best:
                state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
                plan.load_state_dict(state)
                score = ckpt.best_model_score
                logg.info(
                    f"{type(self).__name__}: restored best weights"
                    + (f" ({monitor}={float(score):.4g})." if score is not None else ".")
                )
            if (
                error is None
                and trainer.world_size > 1
                and torch.distributed.is_available()
                and torch.distributed.is_initialized()
            ):
                # strategy="ddp": every rank reads rank 0's best.ckpt; rank 0 must not remove its folder before
                torch.distributed.barrier()
        steps = int(trainer.global_step)
        if error is None and not best and not gone:
            # max_steps / max_time / limit_train_batches (trainer_kwargs) ended training before any checkpoint
            name = type(self).__name__
            if steps == 0:
                state = "unchanged" if self._is_trained else "unchanged and the model is not trained"
                warnings.warn(
                    f"{name}: no training step ran (`max_steps`, `max_time` or `limit_train_batches` stopped it "
                    f"first); the weights are {state}.",
                    stacklevel=2,
                )
            else:
                warnings.warn(
                    f"{name}: training stopped after {steps} step(s) without a `{monitor}` to checkpoint on "
                    "(`max_steps`/`max_time` before the first epoch ended or validation ran, or "
                    "`check_val_every_n_epoch` above the epochs run); keeping the weights of the last step.",
                    stacklevel=2,
                )
        self.history = history.frame if history.rows else None
        self.module.eval()
        self.module.to(device)
        self._is_trained = bool(best) or (error is None and (steps > 0 or self._is_trained))
        if error is not None:
            if best:
                msg = "restored the best checkpoint"
            elif gone:
                msg = "the best checkpoint was gone, so the weights are those of the last finite step"
            else:
                msg = "no checkpoint was saved before it"
            raise FloatingPointError(f"{error} ({type(self).__name__}: {msg}.)") from error
        return self

    # ------------------------------------------------------------------ inference helper
    @torch.no_grad()
    def _inference(self, loader: Any, fn: Any, precision: str = "32") -> list[Any]:
        """Apply ``fn(module, batch)`` to every batch (moved to ``self.device``) in eval mode; list of outputs.

        Tensors in the outputs are moved to the CPU, so subclasses can ``torch.cat`` them. ``precision``:
        ``"32"`` (default), ``"bf16"`` or ``"16"`` autocast of ``fn`` (see :func:`scst._inference.inference_options`),
        whose floating outputs are returned as float32.
        """
        from .._inference import _to_float32, inference_options

        opts = inference_options(self.device, precision=precision)
        was_training = self.module.training
        self.module.eval()
        device, outs = self.device, []
        try:
            for batch in loader:
                with opts.autocast():
                    out = _move(fn(self.module, _move(batch, device)), torch.device("cpu"))
                if opts.dtype is not None:  # autocast outputs (bf16/fp16) back to float32
                    out = _to_float32(out)
                outs.append(out)
        finally:
            self.module.train(was_training)
        return outs

    # ------------------------------------------------------------------ save / load
    def save(self, dir_path: str | Path, overwrite: bool = False, save_data: bool = False) -> None:
        """Write ``model.safetensors`` (weights) and ``attr.json`` (everything else) to ``dir_path``.

        Parameters
        ----------
        dir_path
            Output directory, written atomically (temporary directory, then rename).
        overwrite
            Replace an existing ``dir_path``, if it is a saved model folder or empty (a folder of other files is
            never deleted: an error); otherwise an existing one is an error.
        save_data
            Also write the data: ``data.h5ad`` (AnnData), ``data.h5mu`` (MuData) or ``data.zarr`` (SpatialData).
            :meth:`load` reads it back when called without ``data``. A model loaded that way reads a SpatialData's
            images from that folder: replacing it with ``overwrite=True`` needs ``save_data=True`` (an error
            otherwise).
        """
        from safetensors.torch import save_model

        history = None
        if self.history is not None:
            history = [
                {k: _finite_or_none(v) for k, v in row.items()} for row in self.history.reset_index().to_dict("records")
            ]
        attrs = {
            "format": _FORMAT_VERSION,
            "model": type(self).__name__,
            "model_class": _qualified_name(type(self)),
            "scst_version": _scst_version(),
            "config": self.config,
            "registry": self.registry,
            "module_kwargs": self._module_kwargs_,
            "is_trained": self.is_trained,
            "history": history,
            "extra": _jsonable(self._extra_state(), f"{type(self).__name__}._extra_state()"),
        }
        if save_data and self.data is None:
            raise ValueError("`save_data=True` but the model has no data.")
        data_path = getattr(self.data, "path", None)  # a SpatialData read from disk reads its images lazily from there
        if overwrite and not save_data and data_path is not None and Path(dir_path).exists():
            dest, src = Path(dir_path).resolve(), Path(data_path).resolve()
            if src == dest or dest in src.parents:
                raise ValueError(
                    f"The model's data is read (lazily) from {str(data_path)!r}, inside `dir_path` "
                    f"{str(dir_path)!r}: `overwrite=True` would delete it and the data would read as zeros. Pass "
                    "`save_data=True` to write the data there again, or save to another folder."
                )

        def payload(tmp: Path) -> None:
            save_model(self.module, str(tmp / WEIGHTS_FILE))
            if save_data:
                if hasattr(self.data, "tables"):  # the caller's SpatialData keeps its own path
                    _write_zarr(self.data, tmp / "data.zarr", update_sdata_path=False)
                elif hasattr(self.data, "mod"):
                    self.data.write(tmp / "data.h5mu")
                else:
                    self.data.write_h5ad(tmp / "data.h5ad")

        _write_model_dir(dir_path, overwrite, attrs, payload)

    @classmethod
    def load(
        cls, dir_path: str | Path, data: Any = None, accelerator: str = "cpu", device: int | str = "auto"
    ) -> BaseModel:
        """Rebuild a model saved with :meth:`save`; the training data is not needed.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        data
            Optional AnnData/MuData/SpatialData to attach (checked with ``_validate_data``; the saved registry is
            written to it when it was not set up). Without it, data saved with ``save_data=True`` is read back.
        accelerator, device
            Where to put the weights (``"cpu"``, ``"gpu"``/``"cuda"``, ``"mps"`` or ``"auto"``; GPU index).

        Returns
        -------
        The model. ``BaseModel.load`` returns an instance of the saved class.
        """
        from safetensors.torch import load_model

        dir_path = Path(dir_path)
        attrs = _read_model_attrs(dir_path, WEIGHTS_FILE, required=("model", "registry", "config", "module_kwargs"))
        _check_weights_file(dir_path / WEIGHTS_FILE)
        name = attrs.get("model")
        if cls is BaseModel:
            cls = _saved_class(name, attrs.get("model_class"))
        elif name != cls.__name__:
            raise ValueError(f"{str(dir_path)!r} holds a {name!r} model, not {cls.__name__!r}; use {name}.load.")

        model = cls.__new__(cls)
        model.registry = attrs["registry"]
        model.config = attrs["config"]
        model._module_kwargs_ = attrs["module_kwargs"]
        with weights_overwritten():  # the saved weights replace any backbone weights: no download, no warning
            model.module = model._build_module(model._module_kwargs_, seed=None)
        try:
            load_model(model.module, str(dir_path / WEIGHTS_FILE), strict=True, device="cpu")
        except RuntimeError as e:  # missing/unexpected keys or other shapes
            raise ValueError(
                f"{WEIGHTS_FILE} of {str(dir_path)!r} does not fit the {name} built from its {ATTR_FILE} (another "
                f"gene panel or architecture, or files of two checkpoints mixed): {str(e).splitlines()[0][:300]}"
            ) from e
        model.module.eval()
        model._is_trained = bool(attrs.get("is_trained", False))
        model.history = None
        if attrs.get("history") is not None:
            model.history = pd.DataFrame.from_records(attrs["history"]).set_index("epoch").astype(float)
        model._set_extra_state(attrs.get("extra", {}))
        model.data = model.adata = None
        if data is None:
            data = cls._read_saved_data(dir_path)
        if data is not None:
            model._attach(data)
        model.to_device(_parse_device(accelerator, device))
        return model

    @staticmethod
    def _read_saved_data(dir_path: Path) -> Any:
        if (dir_path / "data.h5ad").exists():
            import anndata as ad

            return ad.read_h5ad(dir_path / "data.h5ad")
        if (dir_path / "data.h5mu").exists():
            import mudata as md

            return md.read_h5mu(dir_path / "data.h5mu")
        if (dir_path / "data.zarr").exists():
            import spatialdata as sd

            return sd.read_zarr(dir_path / "data.zarr")
        return None

    def _attach(self, data: Any) -> None:
        """Attach new data: find the table, validate it, and write the saved registry to it if not set up."""
        table = None
        if hasattr(data, "tables"):
            table = self.registry.get("table")
            if table is None and not any(self._read_registry(t) is not None for t in data.tables.values()):
                table = TABLE_KEY
        adata = self._find_adata(data, table=table)
        self._validate_data(adata)
        if self._read_registry(adata) is None:
            self._register(adata, self.registry)
        self.data, self.adata = data, adata
