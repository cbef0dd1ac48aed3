"""HGGEP network (Li et al., Briefings in Bioinformatics 2024) as a plain ``torch.nn.Module``.

Torch, torchvision and torch_geometric only; data loading and training live in
:class:`scst.models.HGGEP`. One forward pass takes the spots of one tissue section (the transformers
attend over all of them and the hypergraph links them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._backbones import build_backbone
from ._hypergraph import knn_hyperedges
from ._layers import CBAM, GEM, CoordEmbedding, SpotTransformer, zinb_nll

__all__ = ["HGGEP_BENCH", "HGGEPModule"]

#: Network sizes. ``"paper"``: the HGGEP paper/code sizes (GPU). ``"cpu_small"``: the reduced network
#: used for CPU tests and CPU benchmarks (2 shared cores). ``config`` holds ``HGGEPModule`` keyword
#: arguments; ``patch_px`` is the side of the square H&E patch cut around each spot.
HGGEP_BENCH: dict[str, dict[str, Any]] = {
    "paper": {
        "config": {
            "dim": 1024,
            "vit_depth": 4,
            "vit_heads": 8,
            "hg_hidden": 512,
            "k": 3,
            "lstm_layers": 4,
            "lstm_hidden": 1024,
            "dropout": 0.2,
        },
        "patch_px": 112,
    },
    "cpu_small": {
        "config": {
            "dim": 128,
            "vit_depth": 1,
            "vit_heads": 8,
            "hg_hidden": 64,
            "k": 3,
            "lstm_layers": 1,
            "lstm_hidden": 128,
            "dropout": 0.1,
        },
        "patch_px": 112,
    },
}

_BACKBONES = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0")
# Each stage map is average-pooled to GRID x GRID and reduced to dim / GRID**2 channels, so that the
# flattened map has ``dim`` entries (the authors' 1x1 conv to 64 channels of a 4x4 map = 1024).
_GRID = 4


class _ShuffleNetTrunk(nn.Module):
    """ShuffleNetV2 without its classifier; returns the maps of stage3, stage4 and conv5."""

    def __init__(self, name: str, weights: str | os.PathLike | None, keep_maxpool: bool):
        super().__init__()
        net = _load_shufflenet(name, weights)
        # The authors' code drops the stem max-pool because GEM already halves the patch; without GEM
        # the max-pool is kept so that every stage map has the same size as with GEM.
        self.stem = nn.Sequential(net.conv1, net.maxpool) if keep_maxpool else net.conv1
        self.stage2, self.stage3, self.stage4, self.conv5 = net.stage2, net.stage3, net.stage4, net.conv5
        self.channels: tuple[int, int, int] = tuple(net._stage_out_channels[2:5])  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s3 = self.stage3(self.stage2(self.stem(x)))
        s4 = self.stage4(s3)
        return s3, s4, self.conv5(s4)


def _load_shufflenet(name: str, weights: str | os.PathLike | None) -> nn.Module:
    if name not in _BACKBONES:
        raise ValueError(f"backbone must be one of {_BACKBONES}, got {name!r}.")
    # One resolver for every backbone (scst.nn.build_backbone): None warns, torchvision names download into
    # $TORCH_HOME with torchvision's hash check, local files load with weights_only=True (the fc entries may be absent).
    return build_backbone(name, weights, where="backbone_weights")[0]


class _StageProjection(nn.Module):
    """CBAM, BatchNorm, 1×1 conv to ``dim / 16`` channels, 4×4 average pool, flatten → ``(n, dim)``.

    For the stage4 and conv5 maps (4×4 for a 112-px patch) this is the authors' ``down4``/``down5``;
    the pool only matters for stage3 (7×7) or other patch sizes.
    """

    def __init__(self, in_channels: int, dim: int, use_cbam: bool):
        super().__init__()
        self.cbam = CBAM(in_channels) if use_cbam else None
        self.norm = nn.BatchNorm2d(in_channels)
        self.reduce = nn.Conv2d(in_channels, dim // _GRID**2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cbam is not None:
            x = self.cbam(x)
        x = self.reduce(self.norm(x))
        return F.adaptive_avg_pool2d(x, _GRID).flatten(1)


class _HypergraphAssociation(nn.Module):
    """HAM (eqs. 14–18): two ``HypergraphConv`` layers, ReLU, LayerNorm, dropout, residual."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        try:
            from torch_geometric.nn import HypergraphConv
        except ImportError as e:  # scst.nn must import without PyG; only HAM needs it
            raise ImportError("use_ham=True needs torch_geometric (pip install torch-geometric).") from e
        self.conv1 = HypergraphConv(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = HypergraphConv(hidden, dim)

    def forward(self, x: torch.Tensor, hyperedge_index: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = self.dropout(self.norm(torch.relu(self.conv1(x, hyperedge_index, num_edges=n))))
        return self.conv2(h, hyperedge_index, num_edges=n) + x


class HGGEPModule(nn.Module):
    r"""HGGEP: gene expression from H&E spot patches with GEM, ShuffleNetV2, CBAM, ViT, hypergraph and LSTM.

    Pipeline for the ``n`` spots of one section:

    1. :class:`~scst.nn.GEM` on each patch (``3 × 112 × 112`` → ``3 × 56 × 56``).
    2. torchvision ShuffleNetV2 (``backbone``) without its stem max-pool: stage maps
       :math:`S_3` = ``stage3`` (96 ch, 7×7), :math:`S_4` = ``stage4`` (192 ch, 4×4),
       :math:`S_5` = ``conv5`` (1024 ch, 4×4) for x0.5 and 112-px patches.
    3. Per stage: :class:`~scst.nn.CBAM` (reduction 16, 7×7), BatchNorm, 1×1 conv to ``dim / 16``
       channels, 4×4 average pool, flatten → one ``dim``-vector per spot.
    4. Per stage: a :class:`~scst.nn.SpotTransformer` (``vit_depth`` pre-norm blocks, ``vit_heads``
       heads) over the section's spot tokens plus one learned row/column embedding of the integer
       array ``coords`` shared by the three stages.
    5. HAM on :math:`z_3 + z_4 + z_5`: hyperedges of ``k`` spots (centre included) minimising
       ``Norm(feature distance) + Norm(position distance)``, rebuilt every pass by
       :func:`scst.nn.knn_hyperedges` from the detached features and ``positions``; two
       ``HypergraphConv`` layers (``dim → hg_hidden → dim``) with ReLU, LayerNorm and dropout between
       them and a residual connection.
    6. LSTM (``lstm_layers``, ``lstm_hidden``) over the step sequence
       :math:`[z_3, z_4, z_5, H_{out}]`, each step layer-normalised first (``step_norm``, see below),
       mean over the steps → shared representation ``h``.
    7. ``LayerNorm + Linear`` → ``pred`` (log1p-normalised expression); ZINB heads on ``h``:
       mean ``exp(·)`` clamped to ``[1e-5, 1e6]`` (scaled by the size factors in the loss), dispersion
       ``softplus(·)`` clamped to ``[1e-4, 1e4]``, dropout probability ``sigmoid(·)``.

    Loss: ``MSE(pred, target) + zinb_weight * ZINB-NLL(counts | mean * size_factors, disp, pi)``.

    Ablations remove the part entirely: ``use_gem=False`` feeds the patch straight to the backbone
    (keeping its max-pool, so stage sizes are unchanged); ``use_cbam=False`` drops the three CBAMs;
    ``use_ham=False`` drops HAM and the LSTM sees the 3 ViT outputs; ``use_zinb=False`` drops the
    ZINB heads and the loss is the MSE.

    Where the authors' code (github.com/QSong-github/HGGEP) and the paper differ:

    * stages: the code applies CBAM + ViT to ``stage4``, ``conv5`` and the global max-pool of ``conv5``
      (``stage3`` is computed but unused); the paper (and this class) use ``stage3``, ``stage4``,
      ``conv5``.
    * GEM: see :class:`~scst.nn.GEM` (code: cross-shaped CDC kernel and a padded 1×1 conv giving
      58-px maps; here the paper's full 3×3 kernel and 56-px maps).
    * ViT: the code uses 16 heads of 64 dims and GELU; here ``vit_heads`` (paper: 8) heads of
      ``dim / vit_heads`` dims and GELU.
    * HAM: the code ranks ``k + 1`` spots by the *largest* sum of row-sum-normalised adjacency and
      feature distance, passes per-pair weights as hyperedge weights, and applies dropout 0.5 also at
      inference; here the paper's eq. 16 (smallest combined distance, ``k`` spots incl. the centre, see
      :func:`scst.nn.knn_hyperedges`), unit hyperedge weights, ``dropout`` only in training. The
      residual connection is from the code (the paper's eq. 18 has none).
    * ``step_norm`` (default True, not in the paper or the code): a LayerNorm on each LSTM input step. The
      ViT/HAM residual stream is not normalised and its scale grew to ~10 when training from random
      weights; the norm keeps the LSTM inputs at unit scale. It did not by itself stop the collapse of
      ``h`` to one vector for all spots seen at lr 1e-3 (that took a lower lr and zero-initialised output
      weights, see ``scst.models.HGGEP.bench_config``); its effect is measured in the benchmark's ablation.
      ``step_norm=False`` gives the paper's network.
    * The code also trains with Hist2ST's self-distillation over 5 augmented copies (``bake``), which
      the paper does not describe; it is not part of this module.

    Parameters
    ----------
    n_genes
        Number of predicted genes.
    dim
        Token size of the three stages, the ViTs and HAM; a multiple of 16 and of ``vit_heads``.
    vit_depth
        Transformer blocks per stage.
    vit_heads
        Attention heads.
    hg_hidden
        Hidden size between the two ``HypergraphConv`` layers (paper: ``dim / 2``).
    k
        Hyperedge size including the centre spot.
    lstm_layers
        LSTM layers.
    lstm_hidden
        LSTM hidden size (size of the shared representation).
    dropout
        Dropout in the transformer blocks and in HAM.
    zinb_weight
        Weight of the ZINB term in :meth:`loss`.
    use_gem, use_cbam, use_ham, use_zinb
        Ablation switches.
    step_norm
        LayerNorm on each LSTM input step (see above).
    backbone
        torchvision ShuffleNetV2 builder name.
    backbone_weights
        ``None`` (random init, with a warning), a path to a local ``state_dict`` file of that torchvision model
        (loaded with ``weights_only=True``; the ``fc`` entries may be absent), or a torchvision weights
        name such as ``"IMAGENET1K_V1"`` (the paper's ImageNet weights; downloaded into ``$TORCH_HOME`` unless
        cached there); see :func:`scst.nn.build_backbone`.
    max_coord
        Array coordinates must lie in ``[0, max_coord)``.
    theta
        GEM central-difference weight.

    Examples
    --------
    >>> m = HGGEPModule(50, **HGGEP_BENCH["cpu_small"]["config"])
    >>> out = m(torch.randn(20, 3, 112, 112), torch.randint(0, 30, (20, 2)), torch.rand(20, 2) * 100)
    >>> out["pred"].shape
    torch.Size([20, 50])
    """

    def __init__(
        self,
        n_genes: int,
        dim: int = 1024,
        vit_depth: int = 4,
        vit_heads: int = 8,
        hg_hidden: int = 512,
        k: int = 3,
        lstm_layers: int = 4,
        lstm_hidden: int = 1024,
        dropout: float = 0.2,
        zinb_weight: float = 0.25,
        use_gem: bool = True,
        use_cbam: bool = True,
        use_ham: bool = True,
        use_zinb: bool = True,
        step_norm: bool = True,
        backbone: str = "shufflenet_v2_x0_5",
        backbone_weights: str | os.PathLike | None = None,
        max_coord: int = 128,
        theta: float = 0.7,
    ):
        super().__init__()
        for name, value in [
            ("n_genes", n_genes),
            ("dim", dim),
            ("vit_depth", vit_depth),
            ("vit_heads", vit_heads),
            ("hg_hidden", hg_hidden),
            ("k", k),
            ("lstm_layers", lstm_layers),
            ("lstm_hidden", lstm_hidden),
            ("max_coord", max_coord),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if dim % _GRID**2 != 0:
            raise ValueError(f"dim must be a multiple of {_GRID**2}, got {dim}.")
        if dim % vit_heads != 0:
            raise ValueError(f"vit_heads ({vit_heads}) must divide dim ({dim}).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        if zinb_weight < 0:
            raise ValueError(f"zinb_weight must be non-negative, got {zinb_weight}.")
        self.n_genes, self.dim, self.k = n_genes, dim, k
        self.zinb_weight = float(zinb_weight)
        self.use_gem, self.use_cbam, self.use_ham, self.use_zinb = use_gem, use_cbam, use_ham, use_zinb

        self.gem = GEM(3, 3, 3, theta=theta) if use_gem else None
        self.backbone = _ShuffleNetTrunk(backbone, backbone_weights, keep_maxpool=not use_gem)
        self.stage_proj = nn.ModuleList(_StageProjection(c, dim, use_cbam) for c in self.backbone.channels)
        self.coord_embed = CoordEmbedding(max_coord, dim)
        self.vits = nn.ModuleList(
            SpotTransformer(dim, vit_depth, vit_heads, mlp_dim=dim, dropout=dropout, max_coord=None) for _ in range(3)
        )
        self.ham = _HypergraphAssociation(dim, hg_hidden, dropout) if use_ham else None
        n_steps = 4 if use_ham else 3
        self.step_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_steps)) if step_norm else None
        self.lstm = nn.LSTM(dim, lstm_hidden, lstm_layers)
        self.gene_head = nn.Sequential(nn.LayerNorm(lstm_hidden), nn.Linear(lstm_hidden, n_genes))
        if use_zinb:
            self.zinb_mean = nn.Linear(lstm_hidden, n_genes)
            self.zinb_disp = nn.Linear(lstm_hidden, n_genes)
            self.zinb_pi = nn.Linear(lstm_hidden, n_genes)
        else:
            self.zinb_mean = self.zinb_disp = self.zinb_pi = None

    def forward(
        self, patches: torch.Tensor, coords: torch.Tensor, positions: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Predict expression for the spots of one section.

        Parameters
        ----------
        patches
            ``(n, 3, H, W)`` float patches (HGGEP: 112 px), normalised as the backbone expects
            (ImageNet mean/std for ImageNet weights).
        coords
            ``(n, 2)`` integer array coordinates (row, col) in ``[0, max_coord)``.
        positions
            ``(n, 2)`` float spot positions for the hypergraph's position distance (e.g. pixels);
            required when ``use_ham``.

        Returns
        -------
        ``pred`` ``(n, n_genes)``, ``hidden`` ``(n, lstm_hidden)`` (shared representation) and, with
        ``use_zinb``, ``zinb_mean``, ``zinb_disp``, ``zinb_pi`` (each ``(n, n_genes)``).
        """
        self._check_inputs(patches, coords, positions)
        return self.forward_tokens(self.encode_patches(patches), coords, positions)

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """The per-spot part of :meth:`forward`: GEM, backbone and stage projections of each patch.

        In eval mode a spot's tokens depend on its own patch only (BatchNorm uses its running statistics), so
        prediction encodes each spot once even where overlapping windows share it.

        Parameters
        ----------
        patches
            ``(n, 3, H, W)`` float patches, as for :meth:`forward`.

        Returns
        -------
        ``(3, n, dim)``: the tokens of stage3, stage4 and conv5.
        """
        x = self.gem(patches) if self.gem is not None else patches
        return torch.stack([proj(s) for proj, s in zip(self.stage_proj, self.backbone(x))])

    def forward_tokens(
        self, tokens: torch.Tensor, coords: torch.Tensor, positions: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The spatial part of :meth:`forward` (ViTs, hypergraph, LSTM, heads) on :meth:`encode_patches` tokens.

        Parameters
        ----------
        tokens
            ``(3, n, dim)`` from :meth:`encode_patches`, for the spots of one window (or section).
        coords, positions
            As for :meth:`forward`, one row per spot.

        Returns
        -------
        As :meth:`forward`.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tuple(tokens.shape[::2]) != (3, self.dim):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a (3, n, {self.dim}) tensor from encode_patches, got {shape}.")
        self._check_spots(tokens.shape[1], coords, positions)
        out = self._spatial(tokens[:, None], coords[None], None if positions is None else positions[None])
        return {key: value[0] for key, value in out.items()}

    def forward_windows(
        self, tokens: torch.Tensor, coords: torch.Tensor, positions: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward_tokens` on ``b`` windows of ``n`` spots at once (one call, the same per-window results).

        Each window is its own set of spots: attention, the hypergraph (built per window) and its convolution never
        cross windows. One batched call replaces ``b`` small ones (prediction over a whole slide runs thousands of
        windows).

        Parameters
        ----------
        tokens
            ``(3, b, n, dim)``: :meth:`encode_patches` tokens of each window's spots.
        coords, positions
            ``(b, n, 2)``, as for :meth:`forward` per window.

        Returns
        -------
        As :meth:`forward`, each output with leading dimensions ``(b, n)``.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 4 or tuple(tokens.shape[::3]) != (3, self.dim):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a (3, b, n, {self.dim}) tensor of encode_patches tokens, got {shape}.")
        b, n = tokens.shape[1:3]
        for name, value in (("coords", coords), ("positions", positions)):
            if value is None and name == "positions" and not self.use_ham:
                continue
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (b, n, 2):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{name} must be a ({b}, {n}, 2) tensor (one row per spot of each window), got {shape}."
                )
        return self._spatial(tokens, coords, positions)

    def _spatial(self, tokens: torch.Tensor, coords: torch.Tensor, positions: torch.Tensor | None) -> dict:
        """ViTs, hypergraph, LSTM and heads on tokens ``(3, b, n, dim)`` of ``b`` windows; outputs ``(b, n, …)``."""
        b, n = tokens.shape[1:3]
        pos_embed = self.coord_embed(coords)
        steps = [vit(t + pos_embed) for vit, t in zip(self.vits, tokens.unbind(0))]  # each (b, n, dim)
        steps = [step.reshape(b * n, -1) for step in steps]  # the spots of all windows; each window's rows together
        if self.ham is not None:
            fused = steps[0] + steps[1] + steps[2]
            # A section always has more than k spots; tiny inference batches use every spot. Hyperedges are built
            # per window and numbered within the union of the windows (hyperedge e is centred on spot e).
            index = [
                knn_hyperedges(fused[i * n : (i + 1) * n].detach(), positions[i], k=min(self.k, n)) for i in range(b)
            ]
            hyperedge_index = index[0] if b == 1 else torch.cat([e + i * n for i, e in enumerate(index)], dim=1)
            steps.append(self.ham(fused, hyperedge_index))
        if self.step_norms is not None:
            steps = [norm(step) for norm, step in zip(self.step_norms, steps)]
        # The LSTM runs in its weights' dtype (float32) under autocast: oneDNN has no bf16 LSTM, and the recurrence
        # loses precision. Not a fixed .float(): that broke a float64 module (model.double()).
        with torch.autocast(tokens.device.type, enabled=False):
            lstm_in = torch.stack(steps, dim=0).to(self.lstm.weight_ih_l0.dtype)
            seq, _ = self.lstm(lstm_in)  # (steps, b * n, lstm_hidden): spots are the batch
        h = seq.mean(dim=0)
        out = {"pred": self.gene_head(h), "hidden": h}
        if self.use_zinb:
            # exp of a clamped logit = the authors' clamp(exp(.), 1e-5, 1e6) without overflow to inf.
            out["zinb_mean"] = torch.exp(self.zinb_mean(h).clamp(-11.5129, 13.8155))
            out["zinb_disp"] = F.softplus(self.zinb_disp(h)).clamp(1e-4, 1e4)
            out["zinb_pi"] = torch.sigmoid(self.zinb_pi(h))
        return {key: value.reshape(b, n, *value.shape[1:]) for key, value in out.items()}

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward pass and HGGEP loss on one section.

        Parameters
        ----------
        batch
            ``patches`` ``(n, 3, H, W)``, ``coords`` ``(n, 2)`` int, ``positions`` ``(n, 2)`` float
            (needed with ``use_ham``), ``target`` ``(n, n_genes)`` log1p(normalize_total) expression,
            and with ``use_zinb`` ``counts`` ``(n, n_genes)`` raw counts and ``size_factors`` ``(n,)``
            (total counts / median total counts).

        Returns
        -------
        ``loss`` = ``mse + zinb_weight * zinb``, ``mse``, ``zinb`` (0 without ``use_zinb``) and
        ``pred`` (the predictions, for metrics).
        """
        required = ["patches", "coords", "target"]
        if self.use_ham:
            required.append("positions")
        if self.use_zinb:
            required += ["counts", "size_factors"]
        missing = [key for key in required if key not in batch]
        if missing:
            raise KeyError(f"batch is missing keys {missing}; it needs {required}.")
        out = self(batch["patches"], batch["coords"], batch.get("positions"))
        target = batch["target"]
        if target.shape != out["pred"].shape:
            raise ValueError(f"batch['target'] must have shape {tuple(out['pred'].shape)}, got {tuple(target.shape)}.")
        # Losses in float32 even under autocast: lgamma and log1p lose too much in half precision.
        mse = F.mse_loss(out["pred"].float(), target.float())
        if self.use_zinb:
            counts = batch["counts"]
            if counts.shape != target.shape:
                raise ValueError(f"batch['counts'] must have shape {tuple(target.shape)}, got {tuple(counts.shape)}.")
            zinb = zinb_nll(
                counts.float(),
                out["zinb_mean"].float(),
                out["zinb_disp"].float(),
                out["zinb_pi"].float(),
                size_factors=batch["size_factors"].float(),
            )
        else:
            zinb = mse.new_zeros(())
        return {"loss": mse + self.zinb_weight * zinb, "mse": mse, "zinb": zinb, "pred": out["pred"]}

    def _check_inputs(self, patches: Any, coords: Any, positions: Any) -> None:
        if not isinstance(patches, torch.Tensor) or patches.ndim != 4 or patches.shape[1] != 3:
            shape = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
            raise ValueError(f"patches must be a (n, 3, H, W) tensor, got {shape}.")
        if not patches.is_floating_point():
            raise ValueError(f"patches must be floating point (normalised images), got {patches.dtype}.")
        n = patches.shape[0]
        if n == 0:
            raise ValueError("patches is empty; pass at least one spot.")
        self._check_spots(n, coords, positions)

    def _check_spots(self, n: int, coords: Any, positions: Any) -> None:
        if not isinstance(coords, torch.Tensor) or tuple(coords.shape) != (n, 2):
            shape = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
            raise ValueError(f"coords must be a ({n}, 2) integer tensor (one row per patch), got {shape}.")
        if self.use_ham:
            if positions is None:
                raise ValueError("positions (n, 2) is required when use_ham=True.")
            if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (n, 2):
                shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
                raise ValueError(f"positions must be a ({n}, 2) tensor (one row per patch), got {shape}.")
