"""HGGEP (Li et al. 2024): gene expression of ST spots from H&E patches, one tissue section per step."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..nn._hggep import HGGEP_BENCH, HGGEPModule
from ..nn._train_step import patches_to_input
from ._base import _refuse_dataloader_kwargs
from ._image import _ImageModel, _input_on, _tiling_windows, _WindowDataset

__all__ = ["HGGEP"]


# --------------------------------------------------------------------------------------------------------------
# HGGEP
# --------------------------------------------------------------------------------------------------------------
def _coords_for(sec: Any, idx: np.ndarray, max_coord: int) -> torch.Tensor:
    # Sections are not registered to each other: array coordinates are re-based to the window's corner.
    c = sec.coords[idx]
    c = c - c.min(0, keepdims=True)
    if c.size and c.max() >= max_coord:
        warnings.warn(
            f"Section {sec.name!r}: a window spans {int(c.max()) + 1} grid steps > max_coord ({max_coord}); the "
            "coordinate embedding of its farthest spots is clipped (raise max_coord).",
            UserWarning,
            stacklevel=2,
        )
        c = np.minimum(c, max_coord - 1)
    return torch.from_numpy(c)


class _SectionWindows(_WindowDataset):
    """HGGEP batches: the patches, window-relative grid coordinates and targets of one window's spots."""

    def __init__(self, sections: list, max_spots: int, max_coord: int, augment: bool, train: bool):
        self.max_coord, self.augment = max_coord, augment
        super().__init__(sections, max_spots, train)

    def _usable(self, sec: Any) -> np.ndarray:
        return sec.keep  # spots with counts

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sec, idx = self._window(i)
        return {
            "patches": patches_to_input(sec.patches.get(idx), self.augment and self.train),
            "coords": _coords_for(sec, idx, self.max_coord),
            "positions": torch.from_numpy(sec.positions[idx].astype(np.float32)),
            "target": torch.from_numpy(sec.target[idx]),
            "counts": torch.from_numpy(sec.counts[idx]),
            "size_factors": torch.from_numpy(sec.size_factors[idx]),
        }


class _HGGEPNet(HGGEPModule):
    """:class:`scst.nn.HGGEPModule` whose loss turns non-finite features into a NaN loss.

    Diverging training makes the features NaN before the loss: the hypergraph routine then raises a ValueError
    deep inside the forward pass; as a NaN loss, the training guard stops with its message and restores the
    last good checkpoint.
    """

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:  # noqa: D102
        try:
            return super().loss(batch)
        except ValueError as e:
            if "NaN or infinite" not in str(e):
                raise
            nan = torch.full((), float("nan"), requires_grad=True)
            return {"loss": nan, "mse": nan.detach(), "zinb": nan.detach()}


_PAPER = HGGEP_BENCH["paper"]["config"]
_SMALL = HGGEP_BENCH["cpu_small"]["config"]


def _token_lifetimes(
    windows: list[tuple[np.ndarray, np.ndarray]], order: list[int], n_spots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the prediction windows in ``order`` and, per spot, of the first and last window holding it.

    A spot's tokens are made at window rank ``first`` and kept until ``last``.
    """
    rank = np.empty(len(windows), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(windows))
    spots = np.concatenate([window for window, _ in windows])
    ranks = np.repeat(rank, [len(window) for window, _ in windows])
    first = np.full(n_spots, len(windows), dtype=np.int64)
    last = np.full(n_spots, -1, dtype=np.int64)
    np.minimum.at(first, spots, ranks)
    np.maximum.at(last, spots, ranks)
    return rank, first, last


#: Most windows read, encoded and run through the spatial part together (bounds the memory of one group).
_MAX_GROUP_WINDOWS = 8


def _window_groups(
    windows: list[tuple[np.ndarray, np.ndarray]], n_spots: int, max_new: int, max_windows: int = _MAX_GROUP_WINDOWS
) -> list[np.ndarray]:
    """Consecutive windows grouped so that each group first needs at most ``max_new`` spots (at least one window).

    A spot is new in the first window (in list order) that holds it; a group collects windows while the count of
    their new spots stays within ``max_new`` and it has fewer than ``max_windows`` windows (windows that bring few
    new spots would otherwise pile up in one group, and the spatial part runs a group's windows in one call).
    """
    seen = np.zeros(n_spots, dtype=bool)
    groups: list[list[int]] = []
    count = 0
    for w, (window, _) in enumerate(windows):
        fresh = int((~seen[window]).sum())
        seen[window] = True
        if groups and count + fresh <= max_new and len(groups[-1]) < max_windows:
            groups[-1].append(w)
            count += fresh
        else:
            groups.append([w])
            count = fresh
    return [np.asarray(g, dtype=np.int64) for g in groups]


class _PredictionPlan:
    """Order of HGGEP's prediction windows, the spots each group of windows encodes, and the tokens' lifetimes.

    ``groups``: consecutive windows read and encoded together (:func:`_window_groups`), loader items in the order
    of ``opts.item_order``; windows run in that order, group by group. ``rank``, ``first``, ``last``: as
    :func:`_token_lifetimes` for that window order. ``new[g]``: the spots group ``g`` encodes (those whose first
    window is one of its windows), in the order of its windows.
    """

    def __init__(self, windows: list[tuple[np.ndarray, np.ndarray]], n_spots: int, batch_size: int, opts: Any):
        self.windows = windows
        self.groups = _window_groups(windows, n_spots, batch_size)
        order = [int(w) for g in opts.item_order(len(self.groups)) for w in self.groups[g]]
        self.rank, self.first, self.last = _token_lifetimes(windows, order, n_spots)
        self.new = [
            np.concatenate([windows[w][0][self.first[windows[w][0]] == self.rank[w]] for w in group])
            for group in self.groups
        ]


class _SpotTokens:
    """Tokens of the spots between the first and the last prediction window that needs them, in a pool of slots.

    Slots of released spots are reused; the pool doubles when full, so its size follows the most spots held at
    once, not the section's.
    """

    def __init__(self, n_spots: int):
        self.slot = np.full(n_spots, -1, dtype=np.int64)
        self.pool: torch.Tensor | None = None
        self.free = np.empty(0, dtype=np.int64)

    def put(self, spots: np.ndarray, tokens: torch.Tensor) -> None:
        """Keep ``tokens`` ``(3, len(spots), dim)`` of ``spots``."""
        if self.pool is None or len(self.free) < len(spots):
            size = 0 if self.pool is None else self.pool.shape[1]
            grow = max(size, 2 * len(spots))
            pool = tokens.new_empty((tokens.shape[0], size + grow, tokens.shape[2]))
            if self.pool is not None:
                pool[:, :size] = self.pool
            self.pool, self.free = pool, np.concatenate([self.free, np.arange(size, size + grow)])
        slots, self.free = self.free[: len(spots)], self.free[len(spots) :]
        self.pool[:, torch.from_numpy(slots).to(self.pool.device)] = tokens.to(self.pool.dtype)
        self.slot[spots] = slots

    def get(self, spots: np.ndarray) -> torch.Tensor:
        """Tokens ``(3, len(spots), dim)`` of ``spots`` (each put and not yet released)."""
        slots = self.slot[spots]
        if (slots < 0).any():
            raise RuntimeError(f"_SpotTokens: {int((slots < 0).sum())} spots were not encoded (or already released).")
        return self.pool[:, torch.from_numpy(slots).to(self.pool.device)]

    def release(self, spots: np.ndarray) -> None:
        """Free the slots of ``spots`` (no window after this one needs them)."""
        self.free = np.concatenate([self.free, self.slot[spots]])
        self.slot[spots] = -1


class HGGEP(_ImageModel):
    """HGGEP: spot expression from H&E through GEM, ShuffleNetV2, CBAM, spot ViTs, a hypergraph and an LSTM.

    The network is :class:`scst.nn.HGGEPModule` (see its docstring for the architecture and where the authors'
    code and the paper differ). One training step sees one whole tissue section (all its spots attend to each
    other and form the hypergraph); sections with more than ``batch_size`` spots are split into spatial windows
    (the ``batch_size`` spots nearest to a random spot during training; at prediction, k-d cells of at most
    ``batch_size / 2`` spots, each predicted inside the ``batch_size`` spots around it).

    Parameters
    ----------
    data
        SpatialData set up with :meth:`setup_sdata`.
    **config
        Overrides of the paper defaults: ``dim`` (1024), ``vit_depth`` (4), ``vit_heads`` (8), ``hg_hidden`` (512),
        ``k`` (3), ``lstm_layers`` (4), ``lstm_hidden`` (1024), ``dropout`` (0.2), ``zinb_weight`` (0.25),
        ``use_gem``/``use_cbam``/``use_ham``/``use_zinb`` (ablations), ``step_norm`` (LayerNorm on the LSTM inputs,
        True; False is the paper's network, see :class:`scst.nn.HGGEPModule`), ``zero_head`` (start the output
        layers at zero weights and the gene means, False), ``backbone`` (``"shufflenet_v2_x0_5"``),
        ``backbone_weights`` (``"IMAGENET1K_V1"``, the paper's ImageNet weights; None: random init, with a warning;
        a local state_dict path or another torchvision weights name, see :func:`scst.nn.build_backbone`),
        ``theta`` (0.7), ``augment`` (random flips/90° rotations of training patches), ``patch_cache_mb``
        (budget of the in-memory uint8 patch cache, default 2048; sections that do not fit are read from the image
        at every step) and the training keys ``max_epochs`` (400), ``lr`` (1e-5), ``batch_size`` (maximum spots
        per step, 1024), ``patience``, ``weight_decay``, ``optimizer``, ``lr_scheduler``, ``seed``.

    Notes
    -----
    Targets: ``log1p(normalize_total(counts, 1e4))`` of the panel genes (library size over all genes of the
    table) for the MSE; raw panel counts with size factors (library size / training median) for the ZINB term.
    Patches: ``size_um`` (80 µm) squares cut at each section's own µm/px and resized to ``patch_px`` (112), so a
    slide scanned at another resolution gets the same field of view (a warning is given beyond 5 % difference).
    By default the backbone starts from torchvision's ImageNet ShuffleNetV2 x0.5 weights, as in the paper (downloaded
    once into ``$TORCH_HOME``). ``bench_config`` is the small CPU network of ``scst.nn.HGGEP_BENCH["cpu_small"]``
    with ``backbone_weights=None``: random initialisation, as no weights can be downloaded on the benchmark machines.

    Examples
    --------
    >>> scst.pp.select_genes(sdata.tables["table"], sections=["C2", "C3", "C4", "C5"])  # the panel without C6
    >>> HGGEP.setup_sdata(sdata, sections=["C2", "C3", "C4", "C5"])
    >>> model = HGGEP(sdata, **HGGEP.bench_config).train()
    >>> pred = model.predict(sdata, sections="C6")
    """

    _module_cls = _HGGEPNet
    _default_patch_px = 112
    #: Checkpoints and early stopping follow the validation MSE (the expression objective), not the total loss,
    #: whose decrease was mostly the ZINB dispersions fitting while the validation MSE stayed flat.
    _monitor: ClassVar[str] = "val_mse"
    _default_config: ClassVar[dict[str, Any]] = {
        **_PAPER,
        "zinb_weight": 0.25,
        "use_gem": True,
        "use_cbam": True,
        "use_ham": True,
        "use_zinb": True,
        "step_norm": True,
        "standardize_targets": True,
        "zero_head": False,
        "backbone": "shufflenet_v2_x0_5",
        "backbone_weights": "IMAGENET1K_V1",
        "theta": 0.7,
        "augment": True,
        "patch_cache_mb": 2048.0,
        "max_epochs": 400,
        "lr": 1e-5,
        "batch_size": 1024,
        "patience": 50,
    }
    #: Small CPU setting: the ``cpu_small`` network; windows of at most 96 spots (about two per her2st section)
    #: give several optimiser steps per epoch (whole sections give one step per section). lr 1e-4 and zero_head:
    #: at lr 1e-3 with random output weights the spot representation collapsed on the training sections (chosen
    #: on the training sections of one fold, see docs/benchmarks/expression.md).
    bench_config: ClassVar[dict[str, Any]] = {
        **_SMALL,
        "backbone_weights": None,  # random init: no downloads on the benchmark machines
        "zero_head": True,
        "batch_size": 96,
        "max_epochs": 30,
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "patience": 8,
    }

    def _module_kwargs(self) -> dict[str, Any]:
        keys = (
            "dim", "vit_depth", "vit_heads", "hg_hidden", "k", "lstm_layers", "lstm_hidden", "dropout", "zinb_weight",
            "use_gem", "use_cbam", "use_ham", "use_zinb", "step_norm", "backbone", "backbone_weights", "theta",
        )  # fmt: skip
        return {"n_genes": len(self.registry["var_names"]), "max_coord": int(self.registry["max_coord"]),
                **{k: self.config[k] for k in keys}}  # fmt: skip

    def _dataloaders(self, batch_size: int, validation: Any, seed: int, **kwargs: Any):
        _refuse_dataloader_kwargs(self, kwargs)
        if batch_size <= self.module.k:
            raise ValueError(f"batch_size (spots per step) must exceed k = {self.module.k}, got {batch_size}.")
        train, val = self._training_sections(validation, seed)
        mc, aug = int(self.registry["max_coord"]), bool(self.config["augment"])
        train_dl = DataLoader(_SectionWindows(train, batch_size, mc, aug, True), batch_size=None, shuffle=True)
        val_dl = DataLoader(_SectionWindows(val, batch_size, mc, False, False), batch_size=None) if val else None
        return train_dl, val_dl

    def _output_layer(self) -> torch.nn.Linear:
        return self.module.gene_head[-1]

    def _init_output_bias(self, sections: list) -> None:
        """With ``zero_head``, also zero the output weights: training starts at the gene means, without noise."""
        super()._init_output_bias(sections)
        if not self.config["zero_head"]:
            return
        heads = [self.module.gene_head[-1], self.module.zinb_mean, self.module.zinb_disp, self.module.zinb_pi]
        with torch.no_grad():
            for head in heads:
                if head is not None:
                    head.weight.zero_()

    def _predict_section(self, sec: Any, batch_size: int, bar: Any, opts: Any) -> np.ndarray:
        # Windows of at most batch_size spots (k-d cells + their surroundings): the network, its ViT and
        # hypergraph only ever see one window (a call runs at most _MAX_GROUP_WINDOWS of them side by side), so
        # memory depends on batch_size, not on the section's size.
        # A spot lies in ~3 windows (its core's and neighbouring cores' surroundings), but its tokens depend on
        # its own patch only (encode_patches): each patch is read and encoded once, when the group of windows that
        # first needs it is read, and its tokens are kept until the last window that needs them (windows come in
        # k-d order, so few are kept). Groups of neighbouring windows are read and encoded together, in batches of
        # up to batch_size patches (a window alone holds ~27 new spots of 96 on a large section: small batches).
        out = np.zeros((len(sec.rows), len(self.var_names)), dtype=np.float32)
        mc = int(self.registry["max_coord"])
        plan = _PredictionPlan(_tiling_windows(sec.positions, batch_size), len(sec.rows), batch_size, opts)
        tokens = _SpotTokens(len(sec.rows))
        for g, patches in sec.patches.loader(plan.new, opts):
            for j in range(0, len(plan.new[g]), batch_size):
                x = _input_on(patches[j : j + batch_size], opts)
                tokens.put(plan.new[g][j : j + batch_size], self.module.encode_patches(x))
            # The group's windows through the spatial part in one call (windows of one size: all but a section's
            # only window hold batch_size spots); each window stays its own set of spots inside the call.
            group = plan.groups[g]
            sizes = [len(plan.windows[w][0]) for w in group]
            for run in np.split(group, np.flatnonzero(np.diff(sizes)) + 1):
                wins = [plan.windows[w][0] for w in run]
                coords = torch.stack([_coords_for(sec, window, mc) for window in wins])
                positions = torch.from_numpy(np.stack([sec.positions[window] for window in wins]).astype(np.float32))
                pred = self.module.forward_windows(
                    torch.stack([tokens.get(window) for window in wins], dim=1),
                    opts.to_device(coords),
                    opts.to_device(positions),
                )["pred"]
                for w, window, p in zip(run, wins, pred):
                    core = plan.windows[w][1]
                    tokens.release(window[plan.last[window] == plan.rank[w]])
                    out[core] = p[torch.from_numpy(np.searchsorted(window, core)).to(p.device)].float().cpu().numpy()
                    bar.update(len(core))
        return out
